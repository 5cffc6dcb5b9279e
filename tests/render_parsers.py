"""Read rendered files back the way their programs do: nginx's tokenizer, supervisord's parser, Python's."""

from __future__ import annotations

import ast
import inspect
import shlex
import sys
from typing import Any

from supervisor.datatypes import dict_of_key_value_pairs
from supervisor.options import UnhosedConfigParser

_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


def nginx_directives(text: str) -> list[tuple[str, list[str]]]:
    """Every directive as (name, args), blocks flattened, following ngx_conf_read_token's rules.

    A block opening is recorded as ('name', args + ['{']) and its end as ('}', []).
    """
    out: list[tuple[str, list[str]]] = []
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch in ";{}":
            if ch == "}":
                assert not words, f"'}}' after {words}"
                out.append(("}", []))
            else:
                assert words, f"{ch!r} without a directive at {i}"
                out.append((words[0], words[1:] + (["{"] if ch == "{" else [])))
            words = []
            i += 1
        elif ch in "\"'":
            quote, i, word = ch, i + 1, []
            while text[i] != quote:
                if text[i] == "\\" and text[i + 1] in _ESCAPES:
                    word.append(_ESCAPES[text[i + 1]])
                    i += 2
                else:
                    word.append(text[i])
                    i += 1
            i += 1
            assert i >= n or text[i] in " \t\r\n;{", f"nginx wants a blank, ';' or '{{' after a quoted string at {i}"
            words.append("".join(word))
        else:
            word = []
            while i < n and text[i] not in " \t\r\n;{}\"'":
                if text[i] == "\\" and i + 1 < n:
                    word.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
                    i += 2
                else:
                    word.append(text[i])
                    i += 1
            words.append("".join(word))
    assert not words, f"unterminated directive {words}"
    return out


def nginx_args(text: str, name: str) -> list[list[str]]:
    return [args for d, args in nginx_directives(text) if d == name]


def supervisord_parser(text: str) -> UnhosedConfigParser:
    parser = UnhosedConfigParser()
    parser.read_string(text)
    return parser


def supervisord_value(parser: UnhosedConfigParser, section: str, key: str) -> str:
    """A value as supervisord uses it: `%(here)s` and `%(ENV_X)s` expanded, `%%` read as `%`."""
    parser.expansions = {"ENV_HOME": "/expanded-home"}
    return parser.saneget(section, key, expansions={"here": "/expanded-here"})


def supervisord_command(parser: UnhosedConfigParser, section: str) -> list[str]:
    return shlex.split(supervisord_value(parser, section, "command"))


def supervisord_environment(parser: UnhosedConfigParser, section: str) -> dict[str, str]:
    return dict_of_key_value_pairs(supervisord_value(parser, section, "environment"))


class _Recorder:
    def __init__(self) -> None:
        self.__dict__["values"] = {}

    def __getattr__(self, name: str) -> Any:
        return self.values.setdefault(name, _Recorder())

    def __setattr__(self, name: str, value: Any) -> None:
        self.values[name] = value

    def update(self, other: dict[str, Any]) -> None:
        """`c.ServerApp.jpserver_extensions.update({...})`: traitlets merges it into the dict."""
        self.values.update(other)


def jupyter_settings(text: str) -> dict[str, Any]:
    """Run a rendered jupyter_server_config.py as Jupyter would; {'ServerApp.port': 8889, ...}."""
    ast.parse(text)
    c = _Recorder()
    path = list(sys.path)  # the config puts Jupyter's own dir first on it, as Jupyter would have it
    try:
        exec(compile(text, "jupyter_server_config.py", "exec"), {"get_config": lambda: c})  # noqa: S102
    finally:
        sys.path[:] = path
    return {f"{cls}.{key}": _comparable(value.values if isinstance(value, _Recorder) else value)
            for cls, rec in c.values.items() for key, value in rec.values.items()}


class ConfigFunction:
    """A function the config file defines (a hook Jupyter calls): called as itself, and equal to
    another when both do the same (same code, constants and defaults), as two renders' are."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def _what(self) -> tuple[Any, ...]:
        code = self.fn.__code__
        return code.co_code, code.co_consts, code.co_names, self.fn.__defaults__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigFunction) and self._what() == other._what()

    def __repr__(self) -> str:
        return f"ConfigFunction({self.fn.__name__}, defaults={self.fn.__defaults__!r})"


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _comparable(v) for key, v in value.items()}
    return ConfigFunction(value) if inspect.isfunction(value) else value

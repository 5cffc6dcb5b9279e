"""Property-based tests of the config loader: any TOML document, and any value for any key, gives either a
valid Config (which then renders into files that parse back) or one ConfigError that names the key.

`make test` runs the fast profile (deterministic, a few hundred cases); HYPOTHESIS_PROFILE=thorough runs
at least 10,000 cases per property, with fresh random data each run.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jrd.config import Config, load_config, parse_config, split_host_port
from jrd.errors import ConfigError
from jrd.layout import Layout
from jrd.render import Account, RenderInputs, render_all

from render_parsers import jupyter_settings, nginx_directives, supervisord_command, supervisord_parser

settings.register_profile("fast", max_examples=150, derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=10_000, derandomize=False, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "source"}
KEYS = {name: [f.name for f in dataclasses.fields(getattr(Config(), name))] for name in SECTIONS}

# Values that are valid for some key, to mutate into near misses.
SEEDS = ["lab", "server", "/var/lib/jrd", "/srv/my notebooks", "jupyter.example.com", "203.0.113.7", "::1",
         "0.0.0.0", "[::]", "*", "127.0.0.1:9839", "[::1]:9839", "1g", "512m", "/", "/jupyter/", "root", "nginx",
         "ecdsa-p256", "idle", "immediate", "debug", "--ServerApp.terminals_enabled=False", ""]
HOSTILE_BITS = [" ", '"', "'", ";", " ;", "{", "}", "\n", "\r", "$", "#", " #", "%", "%(here)s", "\\", "\x00", "\t",
                "\u2028", "\x85", "~", "~nosuchuser", ":", "[", "]", "%eth0", "/", ".", "٣", "²", "*"]

hostile_text = st.lists(st.sampled_from(HOSTILE_BITS + SEEDS), max_size=5).map("".join)
mutated_seed = st.builds(
    lambda seed, bit, at: seed[:at % (len(seed) + 1)] + bit + seed[at % (len(seed) + 1):],
    st.sampled_from(SEEDS), st.sampled_from(HOSTILE_BITS), st.integers(0, 40),
)
strings = st.one_of(st.text(max_size=30), hostile_text, mutated_seed, st.sampled_from(SEEDS))
scalars = st.one_of(
    strings, st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 80, 8888, 8889, 9839, 65535, 65536]),
    st.floats(allow_nan=True, allow_infinity=True), st.dates(), st.datetimes(), st.times(),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


def toml_str(text: str) -> str:
    """A TOML basic string (json.dumps would write surrogate pairs, which TOML refuses)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


toml_key = toml_str


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def document(sections: dict[str, dict[str, object]]) -> str:
    return "".join(f"[{toml_key(name)}]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in body.items())
                   for name, body in sections.items())


def check(text: str, section: str | None = None, key: str | None = None) -> Config | None:
    """The property itself: a Config that renders, or a one-line ConfigError naming what is wrong."""
    try:
        cfg = parse_config(text, source=Path("/etc/jrd/jrd.toml"))
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("/etc/jrd/jrd.toml: "), msg
        if section is not None:
            assert f"[{section}]" in msg and key in msg, f"[{section}] {key} not named in: {msg}"
        return None
    assert_renders(cfg)
    return cfg


def assert_renders(cfg: Config) -> None:
    layout = Layout.of(cfg)
    inp = RenderInputs(
        config=cfg, layout=layout, jupyter_executable=Path("/v/bin/jupyter"), nginx_executable=Path("/usr/sbin/nginx"),
        python_executable=Path("/v/bin/python"), jupyter_account=Account("alice", 1000, 1000, Path("/home/alice")),
        hashed_password="argon2:HASH", internal_token="T" * 64, cert_file=cfg.tls.cert_file or layout.leaf_cert,
        key_file=cfg.tls.key_file or layout.leaf_key, running_as_root=True, ca_pem=b"PEM",
    )
    files = render_all(inp)
    nginx_directives(files["nginx.conf"].content.decode())
    sv = supervisord_parser(files["supervisord.conf"].content.decode())
    assert supervisord_command(sv, "program:jupyter")[3:] == list(cfg.jupyter.extra_args)
    assert jupyter_settings(files["jupyter_server_config.py"].content.decode())["ServerApp.ip"] == "127.0.0.1"


@given(st.sampled_from([(s, k) for s, keys in KEYS.items() for k in keys]), values)
def test_any_value_for_any_key_is_valid_or_named_in_one_error(where: tuple[str, str], value: object) -> None:
    section, key = where
    check(document({section: {key: value}}), section, key)


@given(st.sampled_from([(s, k) for s, keys in KEYS.items() for k in keys]), st.lists(strings, max_size=3))
def test_any_list_of_strings_for_any_key_is_valid_or_named_in_one_error(where: tuple[str, str], items) -> None:
    section, key = where
    check(document({section: {key: items}}), section, key)


section_names = st.one_of(st.sampled_from(list(SECTIONS)), st.text(max_size=10))


@st.composite
def documents(draw: st.DrawFn) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name in draw(st.lists(section_names, max_size=4, unique=True)):
        keys = KEYS.get(name, [])
        key_names = st.one_of(st.sampled_from(keys), st.text(max_size=8)) if keys else st.text(max_size=8)
        out[name] = draw(st.dictionaries(key_names, values, max_size=4))
    return out


@given(documents())
def test_any_document_of_sections_and_keys_is_valid_or_one_error(doc: dict[str, dict[str, object]]) -> None:
    check(document(doc))


broken_documents = st.builds(lambda d, bit, at: d[:at] + bit + d[at:], documents().map(document),
                             st.sampled_from(HOSTILE_BITS + ["[", "=", '"', "\n["]), st.integers(0, 200))


@given(st.one_of(st.text(max_size=200), broken_documents))
def test_any_text_is_valid_or_one_error(text: str) -> None:
    check(text)


@given(st.binary(max_size=200))
def test_any_bytes_on_disk_are_valid_or_one_error(tmp_path_factory_data: bytes) -> None:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"jrd-fuzz-{os.getpid()}.toml"
    path.write_bytes(tmp_path_factory_data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))
    finally:
        path.unlink()


@given(strings)
def test_split_host_port_gives_a_bindable_pair_or_a_value_error(text: str) -> None:
    try:
        host, port = split_host_port(text)
    except ValueError as exc:
        assert "HOST:PORT" in str(exc)
        return
    assert 1 <= port <= 65535 and "[" not in host
    import ipaddress

    assert ipaddress.ip_address(host)

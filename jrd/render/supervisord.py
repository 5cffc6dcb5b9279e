"""supervisord.conf: an ini file that supervisord reads with `%(name)s` expansion.

supervisord's parser (configparser) ends a value at a `;` or `#` that follows
a blank, strips blanks around it, has no escape for either, and expands `%`:
`sv_value` doubles each `%` and refuses what cannot be written; commands are
quoted for `shlex.split`, with `;` and `#` escaped outside the quotes.
"""

from __future__ import annotations

import re

from jrd.errors import JrdError
from jrd.render.base import RenderInputs, comment_text, fill, source_name, template
from jrd.render.jupyter import jupyter_command, jupyter_environment, jupyter_root_dir
from jrd.render.nginx import nginx_command

_PLAIN_ARG = re.compile(r"^[A-Za-z0-9_./:=+@,%-]+\Z")
_COMMENT_START = re.compile(r"\s[;#]")


def prestart(inp: RenderInputs, command: list[str]) -> list[str]:
    """`command` run through jrd.prestart: what a killed nginx left behind is cleared before each start."""
    layout = inp.layout
    return [str(inp.python_executable), "-m", "jrd.prestart", "--group-of", str(layout.nginx_pid_file),
            "--comm", "nginx", "--socket", str(layout.nginx_status_socket), "--", *command]


def sv_value(value: object) -> str:
    """`value` as a supervisord.conf value that reads back, after expansion, as exactly `value`."""
    text = str(value)
    if comment_text(text) != text or text != text.strip() or _COMMENT_START.search(text):
        raise JrdError(
            f"{text!r} cannot be written into supervisord.conf: it holds a control character, a ';' or '#' "
            "after a blank, or starts or ends with a blank"
        )
    return text.replace("%", "%%")


def _arg(arg: str) -> str:
    if _PLAIN_ARG.match(arg):
        return arg
    if comment_text(arg) != arg:
        raise JrdError(f"{arg!r} cannot be written into supervisord.conf: it holds a control character")
    quoted = arg.replace("'", "'\"'\"'").replace(";", "'\\;'").replace("#", "'\\#'")
    return f"'{quoted}'"


def supervisor_command(argv: list[str]) -> str:
    """`argv` as a supervisord `command =` value: `shlex.split` of its expansion gives `argv` back."""
    return " ".join(_arg(a) for a in argv).replace("%", "%%")


def supervisor_environment(env: dict[str, str]) -> str:
    """supervisord's KEY="value",... syntax (read with a non-POSIX shlex: no escapes, quotes stripped)."""
    items = []
    for key, value in env.items():
        if '"' in value or value[:1] == "'" or value[-1:] == "'":
            raise JrdError(f"{key}={value!r} cannot be written into supervisord.conf's environment (a quote)")
        items.append(f'{key}="{value}"')
    return sv_value(",".join(items))


def render_supervisord_conf(inp: RenderInputs) -> str:
    cfg, layout = inp.config, inp.layout
    acct = inp.jupyter_account
    return fill(
        template("supervisord.conf.tmpl"),
        source=source_name(inp),
        socket=sv_value(layout.supervisor_socket),
        log_dir=sv_value(layout.log_dir),
        log_max_bytes=cfg.log.max_bytes,
        log_backups=cfg.log.backups,
        pid_file=sv_value(layout.supervisor_dir / "supervisord.pid"),
        supervisord_user="user = root" if inp.running_as_root else "",
        jupyter_command=supervisor_command(jupyter_command(inp)),
        jupyter_root_dir=sv_value(jupyter_root_dir(inp)),
        jupyter_user=f"user = {sv_value(acct.name)}" if inp.running_as_root else "",
        jupyter_environment=supervisor_environment(jupyter_environment(inp)),
        nginx_command=supervisor_command(prestart(inp, nginx_command(inp))),
        event_listener=inp.event_listener_command is not None and inp.event_listener_command != "",
        event_listener_command=inp.event_listener_command or "",
    )

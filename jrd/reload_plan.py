"""What a reload must do, decided as a pure function of the old and new state.

The daemon loads, renders and tests a new config; this module then says
which of the least disruptive actions that config needs: a supervisord
update, a graceful nginx reload, a Jupyter restart (now or when no kernel
is busy), a new log level, and which changes only a restart of jrd can
apply.  Nothing here touches a file or a process.
"""

from __future__ import annotations

import configparser
import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from jrd.config import Config
from jrd.render import RenderedFile

# Files whose change nginx picks up on a graceful reload (HUP).
NGINX_FILES = frozenset({"nginx.conf", "ca.pem", "ca.mobileconfig", "restarting.html", "restarting.json", "heal.js"})
JUPYTER_CONF = "jupyter_server_config.py"
# The gateway's token, which Jupyter reads at its start: a new one needs a Jupyter restart.
GATEWAY_TOKEN = "gateway-token"
SUPERVISORD_CONF = "supervisord.conf"
JUPYTER_PROGRAM = "program:jupyter"


@dataclass(frozen=True)
class JupyterBaseline:
    """What the running Jupyter was started with: the files it read at its start and its supervisord program section."""

    conf: bytes
    program: tuple[tuple[str, str], ...]
    gateway_token: bytes = field(default=b"", repr=False)

    def reads_differ(self, other: "JupyterBaseline") -> bool:
        """Whether a Jupyter started on `other` would read different files at its start."""
        return (self.conf, self.gateway_token) != (other.conf, other.gateway_token)


@dataclass
class ReloadPlan:
    config: Config
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log_level: str | None = None
    supervisord_update: bool = False
    reload_nginx: bool = False
    restart_jupyter: bool = False
    # The jupyter program itself changed in supervisord.conf: only a supervisord
    # update (which restarts it) applies that, so it waits for the restart policy.
    jupyter_needs_update: bool = False
    cancel_jupyter_restart: bool = False


def effective_config(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The config a running jrd can switch to, and what must wait for a restart of jrd.

    [paths] decide where every file and socket lives, and [metrics] is a
    listener bound at start; both keep their running values until jrd restarts.
    """
    notes = []
    where = new.source or "the config"
    keep: dict[str, object] = {}
    if new.paths != old.paths:
        keep["paths"] = old.paths
        notes.append(f"{where}: [paths] changed; it takes effect when jrd restarts (`systemctl restart jrd`), "
                     "until then the old paths stay in use")
    if new.metrics != old.metrics:
        keep["metrics"] = old.metrics
        notes.append(f"{where}: [metrics] changed; it takes effect when jrd restarts (`systemctl restart jrd`)")
    if new.control != old.control:
        keep["control"] = old.control
        notes.append(f"{where}: [control] changed; the control socket's group changes when jrd restarts")
    return (dataclasses.replace(new, **keep) if keep else new), notes


def changed_files(old: Mapping[str, RenderedFile], new: Mapping[str, RenderedFile]) -> list[str]:
    """Names of the rendered files whose content, place, mode or owner differ."""
    out = []
    for name, f in new.items():
        o = old.get(name)
        if o is None or (o.content, o.path, o.mode, o.owner) != (f.content, f.path, f.mode, f.owner):
            out.append(name)
    out.extend(n for n in old if n not in new)
    return out


def supervisord_section(text: bytes, section: str) -> tuple[tuple[str, str], ...]:
    """One section of a supervisord.conf as sorted (key, value) pairs; empty if absent."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=False)
    parser.read_string(text.decode())
    if not parser.has_section(section):
        return ()
    return tuple(sorted(parser.items(section)))


def jupyter_baseline(files: Mapping[str, RenderedFile]) -> JupyterBaseline:
    conf = files[JUPYTER_CONF].content if JUPYTER_CONF in files else b""
    program = supervisord_section(files[SUPERVISORD_CONF].content, JUPYTER_PROGRAM) if SUPERVISORD_CONF in files else ()
    token = files[GATEWAY_TOKEN].content if GATEWAY_TOKEN in files else b""
    return JupyterBaseline(conf, program, token)


def plan_reload(
    old_config: Config,
    new_config: Config,
    old_files: Mapping[str, RenderedFile],
    new_files: Mapping[str, RenderedFile],
    *,
    tls_changed: bool = False,
    pending: JupyterBaseline | None = None,
) -> ReloadPlan:
    """Decide the least disruptive actions that move the running stack to `new_config`.

    `pending` is what the running Jupyter was started with when a restart of it
    is already pending; a reload that returns to it cancels that restart.
    """
    config, notes = effective_config(old_config, new_config)
    plan = ReloadPlan(config, changed_files(old_files, new_files), notes)
    changed = set(plan.changed)
    if config.log.level != old_config.log.level:
        plan.log_level = config.log.level
    plan.reload_nginx = tls_changed or bool(NGINX_FILES & changed)
    running = pending or jupyter_baseline(old_files)
    wanted = jupyter_baseline(new_files)
    # A restart is pending and the config went back to what Jupyter runs: no restart.
    plan.cancel_jupyter_restart = pending is not None and wanted == pending
    if SUPERVISORD_CONF in changed:
        # supervisord applies the whole file at once, and restarts every program
        # whose section changed; so a change to Jupyter's own section waits for
        # the Jupyter restart (and its policy), the rest is applied now.
        if wanted.program != running.program:
            plan.jupyter_needs_update = True
        else:
            plan.supervisord_update = True
    elif pending is not None and wanted.program != running.program:
        plan.jupyter_needs_update = True
    plan.restart_jupyter = wanted.reads_differ(running) or plan.jupyter_needs_update
    return plan

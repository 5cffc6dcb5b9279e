"""Assemble a daemon from its parts: the core loop plus its extensions.

An extension is an object with `start(daemon)` and `stop(daemon)`, and
optionally `adjust_inputs(daemon, inputs)`, `on_timer(daemon, name)` and
`config_changed(daemon, old, new)` (called after a reload applied a new config).
Control socket, metrics and file watching each plug in here.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable

from jrd.config import Config
from jrd import states
from jrd.control.commands import handlers
from jrd.control.server import ControlServer
from jrd.daemon import Command, Daemon
from jrd.events import ProgramEvents
from jrd.health import HealthMonitor
from jrd.metrics import MetricsServer
from jrd.watch import ConfigWatcher


def build_daemon(config: Config, loader: Callable[[], Config], interactive: bool) -> Daemon:
    announce = print_flush if interactive else None
    daemon = Daemon(config, config_loader=loader, announce=announce, show_password=interactive)
    daemon.extensions.append(_ControlOnOldDaemon(ControlServer(daemon.layout.control_socket, config.control.group)))
    health = HealthMonitor()
    daemon.extensions += [ProgramEvents(), health, MetricsServer(health)]
    # Saved edits to the config, the password file or an external certificate reload by themselves.
    daemon.extensions.append(ConfigWatcher())
    return daemon


def print_flush(message: str) -> None:
    print(message, flush=True)


# --- BRANCH-ONLY WIRING (control branch): lets the integration tests run before the daemon rewrite ---
# It adapts today's Daemon to jrd.control's interface (handlers(target), ControlServer.start(ctx)).
# The daemon rewrite replaces all of it; discard it in the merge.


class _ControlOnOldDaemon:
    def __init__(self, server: ControlServer):
        self.server = server

    def start(self, daemon: Daemon) -> None:
        from jrd.extension import Context

        for name, handler in handlers(_OldDaemonTarget(daemon)).items():
            daemon._handlers[name] = handler
        unused: Any = None

        def wait_serving(deadline: float) -> dict[str, Any]:
            procs = daemon.supervisor.processes()
            down = [n for n in states.PROGRAMS if n in procs and procs[n].state in states.STOPPED_STATES]
            if down:
                return {"serving": False, "note": f"not waiting for Jupyter through nginx: {', '.join(down)} is stopped"}
            daemon.wait_serving(deadline)
            return {"serving": True}

        self.server.start(Context(
            layout=daemon.layout, supervisor=daemon.supervisor, ledger=unused, jupyter=unused, submit=daemon.submit,
            add_handler=daemon.add_handler, schedule=unused, cancel=unused, current_config=lambda: daemon.config,
            wait_serving=wait_serving, certificate_status=daemon.certificate_status))

    def stop(self, daemon: Daemon) -> None:
        self.server.stop()


class _OldDaemonTarget:
    def __init__(self, daemon: Daemon):
        self.d = daemon

    def _call(self, handler: Callable[[Command], Any], name: str, source: str = "control", **args: Any) -> Any:
        return handler(Command(name, args, source, Future()))

    def _act(self, handler: Callable[[Command], Any], name: str, program: str, **args: Any) -> dict[str, Any]:
        before = self.d.status()["programs"]
        result = self._call(handler, name, program=program, **args)
        after = self.d.status()["programs"]
        result["programs"] = {n: {"pid_before": before.get(n, {}).get("pid"), "pid": after.get(n, {}).get("pid"),
                                  "state": after.get(n, {}).get("state"), "restarts": after.get(n, {}).get("restarts")}
                              for n in (states.PROGRAMS if program == "all" else (program,))}
        return result

    def status(self) -> dict[str, Any]:
        return self.d.status()

    def restart(self, program: str, reason: str) -> dict[str, Any]:
        return self._act(self.d._do_restart, "restart", program, reason=reason)

    def start(self, program: str) -> dict[str, Any]:
        return self._act(self.d._do_start, "start", program)

    def stop(self, program: str) -> dict[str, Any]:
        return self._act(self.d._do_stop, "stop", program)

    def reload(self, source: str) -> dict[str, Any]:
        return self._call(self.d._do_reload, "reload", source)

    def renew_cert(self, force: bool) -> dict[str, Any]:
        return self._call(self.d._do_renew_cert, "renew_cert", force=force)

    def passwd(self, hashed: str, source: str) -> dict[str, Any]:
        return self._call(self.d._do_passwd, "passwd", source, hashed=hashed)

    def kernels(self) -> dict[str, Any]:
        return self._call(self.d._do_kernels, "kernels")

    def logs(self, program: str, offset: int | None, lines: int) -> dict[str, Any]:
        return self._call(self.d._do_logs, "logs", program=program, offset=offset, lines=lines)

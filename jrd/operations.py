"""What `jrdctl` can ask a running jrd to do, carried out on the main loop.

Each public method is one command of `jrd.control.commands` (`ControlTarget`;
status is assembled by the daemon and passed in).  Programs are named by the
time they get here: the control socket checked them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Callable

from jrd import logs, passwords, states
from jrd.config import Config
from jrd.errors import JrdError, SupervisorError
from jrd.extension import Extension
from jrd.idle import IdleGuard
from jrd.jupyter import JupyterClient
from jrd.layout import Layout
from jrd.ledger import Ledger
from jrd.programs import Nginx, Program
from jrd.reload import Reloader
from jrd.tls.renewal import CertManager

log = logging.getLogger("jrd")


class Operations:
    def __init__(self, *, programs: dict[str, Program], ledger: Ledger, reloader: Reloader,
                 certificates: CertManager, layout: Layout, jupyter_api: JupyterClient,
                 config: Callable[[], Config], status: Callable[[], dict[str, Any]],
                 reload_later: Callable[[str], None], after_cert_check: Callable[[], None],
                 idle: IdleGuard | None = None, extensions: Sequence[Extension] = ()):
        self._programs = programs
        self._ledger = ledger
        self._reloader = reloader
        self._certificates = certificates
        self._layout = layout
        self._jupyter_api = jupyter_api
        self._config = config
        self._reload_later = reload_later
        self._status = status
        self._after_cert_check = after_cert_check
        self._idle = idle
        self._extensions = extensions

    def status(self) -> dict[str, Any]:
        return self._status()

    def _nginx(self) -> Nginx:
        nginx = self._programs["nginx"]
        assert isinstance(nginx, Nginx)
        return nginx

    def _names(self, program: str) -> list[str]:
        return list(states.PROGRAMS) if program == "all" else [program]

    def _pids(self, names: list[str], before: dict[str, int | None] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        restarts = self._ledger.snapshot()
        for name in names:
            try:
                info = self._programs[name].info()
                pid, state = info.pid or None, info.state
            except SupervisorError:
                pid, state = None, states.UNKNOWN
            out[name] = {"pid": pid, "state": state, "restarts": restarts.restarts_of(name)}
            if before is not None:
                out[name]["pid_before"] = before.get(name)
        return out

    def _act(self, verb: str, program: str, act: Callable[[Program], None]) -> dict[str, Any]:
        names = self._names(program)
        before = {n: p["pid"] for n, p in self._pids(names).items()}
        for name in names:
            act(self._programs[name])
        return {verb: names, "programs": self._pids(names, before)}

    def restart(self, program: str, reason: str = states.REASON_REQUESTED) -> dict[str, Any]:
        if reason not in states.RESTART_REASONS:
            raise JrdError(f"unknown restart reason {reason!r}; valid reasons are: {', '.join(states.RESTART_REASONS)}")
        return self._act("restarted", program, lambda p: p.restart(reason))

    def start(self, program: str) -> dict[str, Any]:
        return self._act("started", program, Program.start)

    def stop(self, program: str) -> dict[str, Any]:
        return self._act("stopped", program, Program.stop)

    def reload(self, source: str, reply_expected: bool = True) -> dict[str, Any]:
        return self._reloader.run(source, reply_expected)

    def renew_cert(self, force: bool, reply_expected: bool = True) -> dict[str, Any]:
        """Renew the leaf if due (or forced), and what extensions hold (ACME); only nginx reloads, never Jupyter.

        Also what the daemon runs at once after a clock jump (a wake from a suspend or a long stop).
        """
        extra: dict[str, Any] = {}
        for ext in self._extensions:
            try:
                extra.update(ext.check_certificates(force) or {})
            except Exception:
                log.exception("%s could not check its certificates", type(ext).__name__)
        try:
            if self._config().external_tls:
                state = self._certificates.check_external(self._config())
                if state.get("changed"):
                    # The file watcher normally reloads on a change; this catches a missed event.
                    self._reload_later("certificate check")
                return {"renewed": False, "reason": "certificates are external; their owner renews them", **state,
                        **extra}
            return {**self._certificates.renew(self._config(), self._layout, force=force,
                                               reload_nginx=self._nginx().reload), **extra}
        except JrdError:
            if reply_expected:
                raise
            # The manager has counted and logged the failure once; a timer has no one to tell.
            return {"renewed": False, "error": self._certificates.record.last_error, **extra}
        finally:
            self._after_cert_check()

    def passwd(self, hashed: str, source: str) -> dict[str, Any]:
        """Store a new login password hash (made by the client), then apply it through the reload path."""
        if not hashed.startswith("argon2:") or len(hashed) > 1024 or not hashed.isprintable():
            raise JrdError("passwd needs an argon2 hash from jupyter_server.auth.passwd; nothing was changed")
        passwords.write_password_hash(self._layout.password_file, hashed)
        self._layout.initial_password_file.unlink(missing_ok=True)
        log.info("login password changed (%s)", source)
        try:
            return self.reload(source)
        except JrdError as exc:
            raise JrdError(
                f"the new password is saved in {self._layout.password_file} but not applied yet: {exc}") from None

    def kernels(self) -> dict[str, int]:
        """How many kernels Jupyter has, and how many are executing."""
        try:
            return self._jupyter_api.kernel_counts()
        except JrdError as exc:
            log.debug("could not list kernels (%s)", exc)
            raise JrdError("Jupyter did not list its kernels; see `jrdctl logs jupyter`") from None

    def logs(self, program: str, offset: int | None, lines: int) -> dict[str, Any]:
        return logs.read_log(self._layout.log_file(program), offset, lines)

    def _idle_guard(self) -> IdleGuard:
        if self._idle is None:
            raise JrdError("this jrd has no idle stop")
        return self._idle

    def idle(self) -> dict[str, Any]:
        """Each activity signal and its last value, the idle time, the stop time, holds and stops."""
        return self._idle_guard().status()

    def idle_summary(self) -> dict[str, Any] | None:
        """The idle stop's part of `jrdctl status`: None when it is off."""
        if self._idle is None or not self._config().idle.enabled:
            return None
        full = self._idle.status()
        return {k: full[k] for k in ("idle_seconds", "stop_at", "stop_in_seconds", "warned", "stopping", "hold")
                if k in full}

    def hold(self, seconds: float | None, reason: str, release: bool) -> dict[str, Any]:
        """Keep the machine up for `seconds` whatever the signals say, or end the hold (`release`)."""
        guard = self._idle_guard()
        if release:
            return guard.release()
        if not seconds:
            raise JrdError("hold needs a duration such as 3h, or --release")
        return guard.hold(seconds, reason)

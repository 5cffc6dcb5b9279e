"""The programs jrd supervises, each owning how it is started, stopped, restarted and reloaded.

* `Nginx.restart` is a graceful reload (`nginx -t`, then HUP: new workers
  take new connections, old ones finish theirs, open websockets live on),
  except when nginx failed its health probes or is not running: a hung
  master would not act on the HUP, so it is stopped and started.
* `Jupyter.restart` stops and starts Jupyter, which ends its kernels; so a
  restart that a config change asks for waits, under `[jupyter]
  restart_policy`, until no kernel is busy (`PendingRestart`), at most
  `restart_max_wait_seconds`.  A later edit that returns Jupyter's config to
  what it runs cancels the pending restart.

Every restart is counted in the ledger, by reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from jrd import states
from jrd.config import JupyterConfig
from jrd.errors import JrdError
from jrd.jupyter import JupyterClient
from jrd.ledger import Ledger
from jrd.reload_plan import JupyterBaseline
from jrd.supervisor import ProcessInfo, Supervisor

log = logging.getLogger("jrd")

# How often a pending Jupyter restart asks whether a kernel is still busy.
IDLE_POLL = 1.0
RESTART_TIMER = "jupyter-restart"


class Program:
    """One program under supervisord: stop and start through its XML-RPC API."""

    name = ""

    def __init__(self, supervisor: Supervisor, ledger: Ledger):
        self.supervisor = supervisor
        self.ledger = ledger

    def info(self) -> ProcessInfo:
        return self.supervisor.process(self.name)

    def start(self) -> None:
        if not self.info().running:
            self.supervisor.start(self.name)

    def stop(self) -> None:
        if self.info().state in states.STOPPABLE_STATES:
            self.supervisor.stop(self.name)

    def restart(self, reason: str) -> None:
        self.stop_and_start(reason)

    def stop_and_start(self, reason: str) -> None:
        """A hard restart: the process is replaced."""
        self.stop()
        self.supervisor.start(self.name)
        self.ledger.count_restart(self.name, reason)
        log.info("restarted %s (%s)", self.name, reason)


class Nginx(Program):
    name = "nginx"

    def __init__(self, supervisor: Supervisor, ledger: Ledger, test_config: Callable[[], None]):
        super().__init__(supervisor, ledger)
        self._test_config = test_config  # `nginx -t` on the installed config

    def reload(self, tested: bool = False) -> None:
        """A graceful reload; `tested` when `nginx -t` has just passed on these very bytes."""
        if not tested:
            self._test_config()
        self.supervisor.signal(self.name, "HUP")

    def restart(self, reason: str) -> None:
        if reason == states.REASON_UNHEALTHY or not self.info().running:
            self.stop_and_start(reason)
            return
        self.reload()
        self.ledger.count_restart(self.name, reason)
        log.info("reloaded nginx gracefully (restart asked: %s)", reason)


@dataclass
class PendingRestart:
    """A Jupyter restart that a reload asked for and the restart policy is holding back."""

    reason: str
    since: float  # monotonic time of the first change that asked for it
    # Jupyter's supervisord program changed: only a supervisord update applies that.
    update: bool
    # What the running Jupyter was started with: an edit back to it cancels the restart.
    baseline: JupyterBaseline
    busy_logged: bool = False


class Jupyter(Program):
    name = "jupyter"

    def __init__(self, supervisor: Supervisor, ledger: Ledger, client: JupyterClient,
                 policy: Callable[[], JupyterConfig], schedule: Callable[[str, float, Callable[[], None]], None],
                 cancel: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        super().__init__(supervisor, ledger)
        self.client = client
        self._policy = policy
        self._schedule = schedule
        self._cancel = cancel
        self._clock = clock
        self.pending: PendingRestart | None = None

    def restart(self, reason: str) -> None:
        if self.pending:
            # The restart a reload was waiting for: it applies what that reload deferred.
            self._restart_pending(reason, asked=True)
        else:
            self.stop_and_start(reason)

    def schedule_restart(self, reason: str, *, update: bool, baseline: JupyterBaseline) -> None:
        """Restart now, or when no kernel is busy, as `[jupyter] restart_policy` says.

        A restart already pending keeps its start time (and baseline), so the
        bound on waiting counts from the first change.
        """
        if self.pending:
            self.pending.reason, self.pending.update = reason, update
        else:
            self.pending = PendingRestart(reason, self._clock(), update, baseline)
        if self._policy().restart_policy == "immediate":
            self._restart_pending(states.REASON_RELOAD)
        else:
            self._schedule(RESTART_TIMER, 0.0, self._on_timer)

    def cancel_pending(self) -> bool:
        """Forget the pending restart; whether there was one."""
        had = self.pending is not None
        self.pending = None
        self._cancel(RESTART_TIMER)
        return had

    def busy_kernels(self) -> int:
        """How many kernels are executing now (0 if Jupyter cannot say: then nothing waits)."""
        try:
            return self.client.kernel_counts()["busy"]
        except JrdError as exc:
            log.debug("could not list kernels (%s)", exc)
            return 0

    def _on_timer(self) -> None:
        pending, policy = self.pending, self._policy()
        if pending is None:
            return
        waited = self._clock() - pending.since
        if policy.restart_policy == "idle" and waited < policy.restart_max_wait_seconds:
            busy = self.busy_kernels()
            if busy:
                if not pending.busy_logged:
                    log.info("jupyter restart (%s) waits until no kernel is busy (%d busy now, at most %.0f s)",
                             pending.reason, busy, policy.restart_max_wait_seconds)
                    pending.busy_logged = True
                self._schedule(RESTART_TIMER, IDLE_POLL, self._on_timer)
                return
        self._restart_pending(states.REASON_RELOAD)

    def _restart_pending(self, reason: str, asked: bool = False) -> None:
        """Carry out the pending restart; raises only when someone `asked` and waits for it."""
        pending = self.pending
        if pending is None:
            return
        self.cancel_pending()
        waited = self._clock() - pending.since
        why = pending.reason + (f", after waiting {waited:.0f} s" if waited >= 1 else "")
        try:
            if pending.update:
                _, changed, _ = self.supervisor.update()
                for name in changed:
                    self.ledger.count_restart(name, reason)
                if self.name in changed:
                    log.info("restarted jupyter with its new program definition (%s)", why)
                    return
            self.stop_and_start(reason)
        except JrdError as exc:
            log.error("restarting jupyter (%s) failed: %s", why, exc)
            if asked:
                raise
        except Exception:
            log.exception("restarting jupyter (%s) failed unexpectedly", why)

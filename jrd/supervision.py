"""Keeping the stack up: what jrd does on its own when a program is down for good.

supervisord restarts a program that dies, but gives up after `startretries`
quick failures (FATAL) and never tries again by itself.  Every few seconds
jrd looks: a FATAL program is started again with exponential backoff
(`FatalRetry`), which resets once the program runs; kernels orphaned by a
dead Jupyter are ended (`processes.StrayReaper`); and if supervisord itself
is gone, jrd exits non-zero so that systemd restarts the whole stack clean.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from jrd import logs, processes, states
from jrd.backoff import backoff_delay
from jrd.errors import SupervisorError
from jrd.layout import Layout
from jrd.supervisor import ProcessInfo, Supervisor

log = logging.getLogger("jrd")

SUPERVISE_INTERVAL = 5.0
# Backoff for programs that supervisord gave up on (FATAL): 30 s, doubling, at most 10 min.
FATAL_RETRY_FIRST = 30.0
FATAL_RETRY_MAX = 600.0


@dataclass
class FatalRetry:
    """When to start a FATAL program again: at once, then after 30 s, 60 s, ... at most `cap`."""

    first: float = FATAL_RETRY_FIRST
    cap: float = FATAL_RETRY_MAX
    _tries: dict[str, int] = field(default_factory=dict)
    _next: dict[str, float] = field(default_factory=dict)

    def due(self, name: str, state: str, now: float) -> float | None:
        """The wait until the try after this one, when a try is due now; None otherwise."""
        if state == states.RUNNING:
            self.reset(name)
            return None
        if state != states.FATAL or now < self._next.get(name, now):
            return None
        tries = self._tries.get(name, 0) + 1
        self._tries[name] = tries
        wait = backoff_delay(tries, self.first, self.cap)
        self._next[name] = now + wait
        return wait

    def reset(self, name: str) -> None:
        self._tries.pop(name, None)
        self._next.pop(name, None)


class SupervisordGone(SystemExit):
    """supervisord exited under jrd; jrd exits non-zero so that its own supervisor starts it clean."""


@dataclass
class Supervision:
    supervisor: Supervisor
    layout: Layout
    clock: Callable[[], float] = time.monotonic
    retry: FatalRetry = field(default_factory=FatalRetry)
    strays: processes.StrayReaper = field(default_factory=processes.StrayReaper)
    supervisord: subprocess.Popen[bytes] | None = None

    def tick(self) -> None:
        """One look at the stack; raises SupervisordGone if supervisord died."""
        proc = self.supervisord
        if proc is not None and proc.poll() is not None:
            raise SupervisordGone(
                f"jrd: supervisord exited unexpectedly (status {proc.returncode}); "
                f"see {self.layout.log_dir}/supervisord.log"
            )
        try:
            procs = self.supervisor.processes()
        except SupervisorError as exc:
            log.warning("%s", exc)
            return
        self._retry_fatal(procs)
        exclude = {proc.pid} if proc is not None else set()
        for pid in self.strays.sweep(exclude):
            log.info("ended orphaned process %d (a kernel whose Jupyter is gone)", pid)

    def _retry_fatal(self, procs: dict[str, ProcessInfo]) -> None:
        now = self.clock()
        for name in states.PROGRAMS:
            info = procs.get(name)
            if info is None:
                continue
            wait = self.retry.due(name, info.state, now)
            if wait is None:
                continue
            log.error("%s gave up starting (FATAL): %s; trying again now, then in %.0f s",
                      name, logs.tail(self.layout.log_file(name)), wait)
            try:
                self.supervisor.start(name, wait=False)
            except SupervisorError as exc:
                log.error("%s", exc)

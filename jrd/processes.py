"""Processes that end up as jrd's children without jrd starting them.

jrd is a child subreaper (`jrd.supervisor.become_subreaper`), so a kernel
whose Jupyter died is reparented to jrd instead of to init.  Such a kernel
is useless (the next Jupyter does not know it) and must not hold memory
forever, nor stay a zombie: `StrayReaper` ends and reaps those while jrd
runs, and `reap_all` ends whatever is left when jrd stops.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from jrd import leftovers


@dataclass(frozen=True)
class Child:
    pid: int
    pgid: int
    state: str


def children(ppid: int) -> list[Child]:
    """The processes whose parent is `ppid`, from /proc."""
    out = []
    for pid in leftovers.pids():
        fields = leftovers.stat_fields(pid)
        if fields is not None and int(fields[1]) == ppid:
            out.append(Child(pid, int(fields[2]), fields[0]))
    return out


@dataclass
class StrayReaper:
    """Ends and reaps children that jrd did not start, a little at a time.

    jrd's own short-lived subprocesses (`nginx -t`) share its process group and
    are waited for by whoever started them; supervisord is excluded by PID.  A
    reparented kernel has a process group of its own (jupyter_client gives each
    kernel one), which is how strays are told apart.  A stray gets SIGTERM, and
    SIGKILL once it has ignored that for `grace` seconds.
    """

    grace: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _first_seen: dict[int, float] = field(default_factory=dict)

    def sweep(self, exclude: set[int]) -> list[int]:
        """One pass; returns the PIDs it met for the first time (signalled or reaped)."""
        mine, now, new = os.getpgrp(), self.clock(), []
        alive = set()
        for child in children(os.getpid()):
            if child.pid in exclude or child.pgid == mine:
                continue
            if child.pid not in self._first_seen:
                new.append(child.pid)
            if child.state == "Z":
                _wait(child.pid)
                continue
            alive.add(child.pid)
            first = self._first_seen.setdefault(child.pid, now)
            _signal(child.pid, signal.SIGKILL if now - first >= self.grace else signal.SIGTERM)
        self._first_seen = {pid: t for pid, t in self._first_seen.items() if pid in alive}
        return new


def reap_all(grace: float = 5.0) -> None:
    """At shutdown: terminate, then kill, every child still left, and reap them."""
    deadline = time.monotonic() + grace
    while True:
        _reap_any()
        left = [c.pid for c in children(os.getpid()) if c.state != "Z"]
        if not left:
            _reap_any()
            return
        sig = signal.SIGKILL if time.monotonic() > deadline else signal.SIGTERM
        for pid in left:
            _signal(pid, sig)
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _reap_any() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

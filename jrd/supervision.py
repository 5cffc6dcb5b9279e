"""Keeping the stack up, whatever kills a part of it.

supervisord restarts a program that dies, but a program that dies again and
again spins (a stale socket, a port someone else took), and after
`startretries` quick failures supervisord gives up (FATAL) for good.  So
jrd watches from above, every few seconds and at once after each crash
event:

* `CrashLoop` (pure): a program that crashed `crash_loop_restarts` times
  within the window without passing a health probe in between (a program
  that served and was then killed is no loop: supervisord's immediate
  restart is right for it), or that supervisord calls FATAL, is held stopped and
  started again after 1 s, 2 s, 4 s, ... at most `[health]
  backoff_max_seconds`, for ever; once it has run for a minute its backoff
  starts over.
* supervisord itself dead: jrd ends what it left (its programs, now
  reparented to jrd as subreaper) and starts it again, under the same backoff.
* kernels orphaned by a dead Jupyter are ended (`processes.StrayReaper`).
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from jrd import logs, processes, states
from jrd.backoff import backoff_delay
from jrd.config import HealthConfig
from jrd.errors import SupervisorError
from jrd.layout import Layout
from jrd.ledger import Ledger
from jrd.supervisor import ProcessInfo, Supervisor

log = logging.getLogger("jrd")

SUPERVISE_INTERVAL = 5.0
BACKOFF_FIRST = 1.0
# A program that has run this long is well again: its backoff starts over.
STABLE_SECONDS = 60.0
SUPERVISORD = "supervisord"

HOLD = "hold"
START = "start"


@dataclass
class _Loop:
    crashes: list[float] = field(default_factory=list)  # times of recent crashes
    loops: int = 0  # holds since the program last ran stably
    held_until: float | None = None
    held_after: int = 0  # crashes that led to the current hold


@dataclass
class CrashLoop:
    """When a crashing program is held back, and when it is tried again; pure, clock passed in."""

    restarts: int = 3
    window: float = 60.0
    cap: float = 300.0
    first: float = BACKOFF_FIRST
    stable: float = STABLE_SECONDS
    _state: dict[str, _Loop] = field(default_factory=dict)

    @classmethod
    def from_config(cls, health: HealthConfig) -> "CrashLoop":
        return cls(health.crash_loop_restarts, health.crash_loop_window_seconds, health.backoff_max_seconds)

    def follow(self, health: HealthConfig) -> None:
        self.restarts, self.window, self.cap = (
            health.crash_loop_restarts, health.crash_loop_window_seconds, health.backoff_max_seconds)

    def note_crashes(self, name: str, count: int, now: float) -> None:
        self._state.setdefault(name, _Loop()).crashes.extend([now] * count)

    def step(self, name: str, state: str, uptime: float, now: float) -> str | None:
        """HOLD (stop it and wait), START (the wait is over), or None."""
        s = self._state.setdefault(name, _Loop())
        if s.held_until is not None:
            if now < s.held_until:
                return None
            s.held_until = None
            return START
        s.crashes = [t for t in s.crashes if now - t < self.window]
        if state == states.FATAL or len(s.crashes) >= self.restarts:
            s.loops += 1
            s.held_after, s.crashes = len(s.crashes), []
            s.held_until = now + backoff_delay(s.loops, self.first, self.cap)
            return HOLD
        if state == states.RUNNING and uptime >= self.stable and s.loops:
            s.loops = 0
        return None

    def names(self) -> list[str]:
        return list(self._state)

    def held(self, name: str, now: float) -> dict[str, Any] | None:
        """The hold in force for `name`: crashes that caused it and the wait left; None when not held."""
        s = self._state.get(name)
        if s is None or s.held_until is None:
            return None
        return {"restarts": s.held_after, "window_seconds": self.window,
                "next_try_in": round(max(0.0, s.held_until - now), 1)}


@dataclass
class Supervision:
    supervisor: Supervisor
    layout: Layout
    ledger: Ledger
    relaunch: Callable[[], subprocess.Popen[bytes]]
    clock: Callable[[], float] = time.monotonic
    policy: CrashLoop = field(default_factory=CrashLoop)
    strays: processes.StrayReaper = field(default_factory=processes.StrayReaper)
    supervisord: subprocess.Popen[bytes] | None = None
    _crashes_seen: dict[str, int] = field(default_factory=dict)
    deathwatch: "DeathWatch | None" = None
    _death_noted: bool = False
    _instance_start: dict[str, float] = field(default_factory=dict)
    _served: dict[str, bool] = field(default_factory=dict)

    def tick(self) -> None:
        """One look at the stack: supervisord, crash loops, orphaned kernels."""
        now = self.clock()
        if not self._supervisord_alive(now):
            return
        try:
            procs = self.supervisor.processes()
        except SupervisorError as exc:
            log.warning("%s", exc)
            return
        snap = self.ledger.snapshot()
        # The event listener too: supervisord gives up on it like on any program.
        for name, info in procs.items():
            if info.state in states.STOPPABLE_STATES and info.start != self._instance_start.get(name):
                # A new instance: did the one before it pass a probe while it ran?
                before = self._instance_start.get(name)
                self._served[name] = before is not None and snap.last_ok.get(name, 0.0) >= before
                self._instance_start[name] = info.start
            crashes = snap.restarts.get((name, states.REASON_CRASH), 0)
            if not self._served.get(name, False):
                self.policy.note_crashes(name, crashes - self._crashes_seen.get(name, 0), now)
            self._crashes_seen[name] = crashes
            self._act(name, info, self.policy.step(name, info.state, info.uptime, now))
        if self.deathwatch is not None:
            pids = {i.pid for i in procs.values() if i.pid and i.state in states.STOPPABLE_STATES}
            self.deathwatch.follow(pids | ({self.supervisord.pid} if self.supervisord is not None else set()))
        exclude = {self.supervisord.pid} if self.supervisord is not None else set()
        for pid in self.strays.sweep(exclude):
            log.info("ended orphaned process %d (its program is gone: a kernel, or an nginx worker)", pid)

    def _act(self, name: str, info: ProcessInfo, action: str | None) -> None:
        try:
            if action == HOLD:
                hold = self.policy.held(name, self.clock()) or {}
                why = "supervisord gave up on it (FATAL)" if info.state == states.FATAL else \
                    f"{hold.get('restarts')} crashes in {hold.get('window_seconds', 0):.0f} s"
                log.error("%s: crash loop, %s; holding it stopped, next try in %.0f s; last error: %s",
                          name, why, hold.get("next_try_in", 0), logs.last_error(self.layout.log_file(name)))
                if info.state in states.STOPPABLE_STATES:
                    self.supervisor.stop(name)
            elif action == START:
                log.info("%s: trying again after its crash loop", name)
                self.supervisor.start(name, wait=False)
        except SupervisorError as exc:
            log.error("%s", exc)

    def _supervisord_alive(self, now: float) -> bool:
        """True if supervisord runs; if it died, start it again (under the backoff) and return False."""
        proc = self.supervisord
        if proc is None or proc.poll() is None:
            return True
        if not self._death_noted:
            log.error("supervisord exited unexpectedly (status %s); ending what it left and starting it again "
                      "(see %s/supervisord.log)", proc.returncode, self.layout.log_dir)
            self.policy.note_crashes(SUPERVISORD, 1, now)
            self._death_noted = True
        if self.policy.step(SUPERVISORD, states.EXITED, 0.0, now) == HOLD:
            hold = self.policy.held(SUPERVISORD, now) or {}
            log.error("supervisord: crash loop; next try in %.0f s", hold.get("next_try_in", 0))
        if self.policy.held(SUPERVISORD, now) is not None:
            return False
        # Its programs were reparented to jrd (a subreaper): end them, so that none holds a port.
        processes.reap_all(grace=5.0)
        self._death_noted = False
        self.supervisord = self.relaunch()
        return False

    def on_death(self, pid: int) -> bool:
        """From the death watch's thread: True if supervisord itself died (jrd must look), else poke it."""
        if self.supervisord is not None and pid == self.supervisord.pid:
            return True
        try:
            # supervisord polls once a second; poke it so that the respawn is not delayed.
            self.supervisor.state()
        except SupervisorError as exc:
            log.debug("could not poke supervisord: %s", exc)
        return False

    def next_due(self, now: float) -> float | None:
        """Seconds until a hold ends, if one does; the daemon looks again then, not at its next tick."""
        waits = [h["next_try_in"] for n in self.policy.names() if (h := self.policy.held(n, now))]
        return min(waits) if waits else None

    def crash_loops(self) -> dict[str, dict[str, Any]]:
        """Every program held back now, for status and systemd's STATUS= line."""
        now = self.clock()
        loops = {name: self.status(name, now) for name in states.PROGRAMS}
        return {name: loop for name, loop in loops.items() if loop}

    def status(self, name: str, now: float) -> dict[str, Any] | None:
        """The crash loop of `name` for `jrdctl status`, or None."""
        held = self.policy.held(name, now)
        if held is None:
            return None
        return {**held, "last_error": logs.last_error(self.layout.log_file(name))}


class DeathWatch:
    """Notices at once that a watched process died, and calls `on_death(pid)` from its own thread.

    supervisord polls once a second and only then reaps a dead child, so a
    program killed outright would wait up to a second for its restart; and
    jrd itself would notice a dead supervisord only at its next tick.  This
    thread holds a pidfd for each process and calls back the moment one
    becomes readable (the process is gone).
    """

    def __init__(self, on_death: Callable[[int], None]):
        self._on_death = on_death
        self._wanted: set[int] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="jrd-deathwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def follow(self, pids: set[int]) -> None:
        """Watch exactly these PIDs from now on (called from the main loop)."""
        with self._lock:
            if pids == self._wanted:
                return
            self._wanted = set(pids)
        os.write(self._wake_w, b"x")

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(2)

    def _run(self) -> None:
        fds: dict[int, int] = {}  # pid -> pidfd
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            with self._lock:
                wanted = set(self._wanted)
            for pid in set(fds) - wanted:
                poller.unregister(fds[pid])
                os.close(fds.pop(pid))
            for pid in wanted - set(fds):
                try:
                    fds[pid] = os.pidfd_open(pid)
                except OSError:
                    continue  # gone already: the next tick sees it
                poller.register(fds[pid], select.POLLIN)
            ready = poller.poll()
            dead = [pid for pid, fd in fds.items() if any(r == fd for r, _ in ready)]
            if any(r == self._wake_r for r, _ in ready):
                os.read(self._wake_r, 4096)
            for pid in dead:
                poller.unregister(fds[pid])
                os.close(fds.pop(pid))
                with self._lock:
                    self._wanted.discard(pid)
            for pid in dead:
                try:
                    self._on_death(pid)
                except Exception:  # never let the watcher die
                    log.exception("reacting to the death of %d failed", pid)
        for fd in fds.values():
            os.close(fd)

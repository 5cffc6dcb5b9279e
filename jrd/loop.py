"""The one command path: a queue of commands carried out by the main loop, and its timers.

Everything that asks jrd to act (a signal, a file event, a `jrdctl`
request, a probe result, a timer) becomes a `Command` on one queue, and
only the main loop carries commands out, one at a time.  Other threads
`submit` and wait on the returned Future; signal handlers only `post`.
"""

from __future__ import annotations

import logging
import queue
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from jrd.errors import JrdError

log = logging.getLogger("jrd")

# The loop wakes at least this often even with no timer due.
MAX_IDLE_WAIT = 60.0


@dataclass
class Command:
    """One request to the main loop; `reply` receives the result or the error."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    source: str = "internal"
    reply: Future[Any] | None = None


Handler = Callable[[Command], Any]


class Timers:
    """Named one-shot timers whose callbacks run on the main loop.

    Scheduling a name again moves it; a callback that wants to run again
    schedules itself.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._due: dict[str, tuple[float, Callable[[], None]]] = {}

    def schedule(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        self._due[name] = (self._clock() + max(0.0, delay), fn)

    def cancel(self, name: str) -> None:
        self._due.pop(name, None)

    def pending(self, name: str) -> bool:
        return name in self._due

    def next_wait(self) -> float:
        """Seconds until the earliest timer is due (at most MAX_IDLE_WAIT)."""
        now = self._clock()
        earliest = min((due for due, _ in self._due.values()), default=now + MAX_IDLE_WAIT)
        return max(0.0, min(earliest - now, MAX_IDLE_WAIT))

    def run_due(self) -> None:
        """Run every callback that is due; one that raises is logged and does not stop the others."""
        now = self._clock()
        for name, (due, fn) in list(self._due.items()):
            if due > now or self._due.get(name, (None,))[0] != due:
                continue
            del self._due[name]
            try:
                fn()
            except Exception:  # a bug in one timer must not stop the loop
                log.exception("timer %s failed unexpectedly", name)


class CommandBus:
    """Handlers by command name, and the queue that feeds them to the main loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._handlers: dict[str, Handler] = {}

    def add_handler(self, name: str, handler: Handler) -> None:
        if name in self._handlers:
            raise ValueError(f"a handler for {name!r} exists already")
        self._handlers[name] = handler

    def submit(self, name: str, source: str, **args: Any) -> Future[Any]:
        """Queue a command from any thread; the Future resolves when it is done."""
        fut: Future[Any] = Future()
        self._queue.put(Command(name, args, source, fut))
        return fut

    def post(self, name: str, source: str, **args: Any) -> None:
        """Queue a command nobody waits for; safe in a signal handler."""
        self._queue.put(Command(name, args, source))

    def next(self, timeout: float) -> Command | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def execute(self, cmd: Command) -> None:
        """Carry out one command on the main loop; its reply gets the result or the error."""
        handler = self._handlers.get(cmd.name)
        try:
            if handler is None:
                raise JrdError(f"unknown command {cmd.name!r}")
            result = handler(cmd)
        except JrdError as exc:
            if cmd.reply:
                cmd.reply.set_exception(exc)
            else:
                log.error("%s (%s) failed: %s", cmd.name, cmd.source, exc)
            return
        except Exception as exc:  # a bug: keep serving, but say so with the traceback
            log.exception("%s (%s) failed unexpectedly", cmd.name, cmd.source)
            if cmd.reply:
                cmd.reply.set_exception(JrdError(f"internal error: {exc}"))
            return
        if cmd.reply:
            cmd.reply.set_result(result)


class ClockJump:
    """Notices the wall clock moving apart from the monotonic one: a suspend, a stopped VM, a clock step.

    Timers run on the monotonic clock, which does not count a suspend; what
    depends on the date (a certificate's expiry) must be looked at again then.
    """

    def __init__(self, threshold: float = 60.0):
        self.threshold = threshold
        self._last: tuple[float, float] | None = None

    def jumped(self, wall: float, mono: float) -> float:
        """Seconds the wall clock moved beyond the monotonic one since the last look (0 below the threshold)."""
        last, self._last = self._last, (wall, mono)
        if last is None:
            return 0.0
        drift = (wall - last[0]) - (mono - last[1])
        return drift if abs(drift) >= self.threshold else 0.0

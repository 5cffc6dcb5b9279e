"""supervisord's PROCESS_STATE events, received from the listener to count restarts exactly.

Two halves meet at a private unix datagram socket in the runtime dir:

* `jrd.event_listener` is the program that supervisord runs as
  `[eventlistener:jrd-events]`; it forwards each event as one datagram of
  supervisord's own `key:value` tokens.
* `ProgramEvents` is the daemon's extension: it binds the socket before
  supervisord starts, turns each datagram into a `program_event` command on
  the daemon's queue, and counts restarts in the ledger on the main loop.

Counting from events, not from sampling, is what makes three `kill -9` in a
row show as exactly three restarts.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from jrd import event_listener, logs, states
from jrd.extension import Context, Extension
from jrd.fsutil import ensure_dir
from jrd.render import RenderInputs
from jrd.render.supervisord import supervisor_command

log = logging.getLogger("jrd")

# supervisord respawns a program by itself from these states: one that died
# while running (EXITED) or while starting (BACKOFF).  A start from STOPPED
# or FATAL is someone's request, and that someone counts it.
CRASH_FROM_STATES = ("EXITED", "BACKOFF")
MAX_DATAGRAM = 4096
_STOP = b"stop"
# Events after which jrd supervises at once rather than at its next tick.
SUPERVISE_NOW = ("PROCESS_STATE_STARTING", "PROCESS_STATE_FATAL", "PROCESS_STATE_EXITED")


# --- the pure part ----------------------------------------------------------------


def listener_argv(python: Path, socket_path: Path) -> list[str]:
    """How supervisord runs the listener: as a script, isolated, without site-packages (it needs none)."""
    return [str(python), "-I", "-S", event_listener.__file__, str(socket_path)]


def restart_reason(event: dict[str, str]) -> str | None:
    """The restart an event records ("crash"), or None if it records none."""
    if event.get("eventname") != "PROCESS_STATE_STARTING":
        return None
    if event.get("processname") not in states.PROGRAMS:
        return None
    return states.REASON_CRASH if event.get("from_state") in CRASH_FROM_STATES else None


# --- the daemon's side ----------------------------------------------------------------


class ProgramEvents(Extension):
    """Receive forwarded events and count restarts on the main loop."""

    def __init__(self, python: Path | None = None):
        self._python = python or Path(sys.executable)
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._thread: threading.Thread | None = None
        self._ctx: Context | None = None

    def prepare(self, ctx: Context) -> None:
        # Bind before supervisord starts, so that an early crash is not lost:
        # the kernel queues datagrams until the receiver thread reads them.
        path = ctx.layout.events_socket
        ensure_dir(path.parent, 0o700)
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        self._sock, self._path = sock, path

    def contribute(self, inputs: RenderInputs) -> RenderInputs:
        command = supervisor_command(listener_argv(self._python, inputs.layout.events_socket))
        return replace(inputs, event_listener_command=command)

    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        ctx.add_handler("program_event", lambda cmd: self.on_event(cmd.args))
        self._thread = threading.Thread(target=self._receive, args=(ctx.submit,), name="jrd-events", daemon=True)
        self._thread.start()

    def _receive(self, submit: Callable[..., Any]) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except OSError:
                return
            if data == _STOP:
                return
            event = event_listener.parse_tokens(data.decode(errors="replace"))
            if "eventname" not in event:
                log.warning("ignored a malformed event datagram (%d bytes)", len(data))
                continue
            submit("program_event", "supervisord", **event)

    def on_event(self, event: dict[str, str]) -> str | None:
        """On the main loop: count the restart an event records, and say so."""
        ctx = self._ctx
        assert ctx is not None
        program = event.get("processname", "")
        if event.get("eventname") == "PROCESS_STATE_EXITED" and program in states.PROGRAMS:
            log.warning("%s exited unexpectedly (from %s); supervisord restarts it: %s",
                        program, event.get("from_state"), logs.tail(ctx.layout.log_file(program)))
        reason = restart_reason(event)
        if reason:
            ctx.ledger.count_restart(program, reason)
            log.info("%s restarted by supervisord (%s)", program, reason)
        if event.get("eventname") in SUPERVISE_NOW and program in states.PROGRAMS:
            # Look at once: a crash loop is held back, orphaned kernels ended, without waiting for the timer.
            ctx.submit("supervise", "supervisord")
        return reason

    def stop(self) -> None:
        if self._sock is None:
            return
        if self._thread is not None and self._path is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as wake:
                try:
                    wake.sendto(_STOP, str(self._path))
                except OSError:
                    pass
            self._thread.join(2)
        self._sock.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self._sock = None

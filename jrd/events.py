"""supervisord's PROCESS_STATE events, forwarded to the daemon to count restarts exactly.

Two halves meet at a private unix datagram socket in the runtime dir:

* `main()` is the event listener program that supervisord runs as
  `[eventlistener:jrd-events]`.  It speaks supervisord's listener protocol
  (`READY`, a header line, a payload, `RESULT 2\\nOK`) on stdin/stdout and
  sends each PROCESS_STATE event on as one JSON datagram.  It imports only
  the standard library, so that it stays small.
* `ProgramEvents` is the daemon's extension: it binds the socket before
  supervisord starts, turns each datagram into a `program_event` command on
  the daemon's queue, and counts restarts on the main loop.

Counting from events, not from sampling, is what makes three `kill -9` in a
row show as exactly three restarts.
"""

from __future__ import annotations

import json
import logging
import shlex
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from jrd import states
from jrd.fsutil import ensure_dir

log = logging.getLogger("jrd")

PROGRAMS = states.PROGRAMS
# supervisord respawns a program by itself from these states: one that died
# while running (EXITED) or while starting (BACKOFF).  A start from STOPPED
# or FATAL is someone's request, and that someone counts it.
CRASH_FROM_STATES = ("EXITED", "BACKOFF")
MAX_DATAGRAM = 4096
_STOP = b"stop"


# --- the pure part ----------------------------------------------------------------


def parse_tokens(text: str) -> dict[str, str]:
    """supervisord's `key:value key:value` header format."""
    return dict(token.split(":", 1) for token in text.split() if ":" in token)


def restart_reason(event: dict[str, str]) -> str | None:
    """The restart an event records ("crash"), or None if it records none."""
    if event.get("eventname") != "PROCESS_STATE_STARTING":
        return None
    if event.get("processname") not in PROGRAMS:
        return None
    return states.REASON_CRASH if event.get("from_state") in CRASH_FROM_STATES else None


# --- the listener program (runs under supervisord) --------------------------------


def serve(stdin: BinaryIO, stdout: BinaryIO, forward: Any) -> None:
    """Answer supervisord's event protocol until stdin closes; `forward` each event."""
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return
        headers = parse_tokens(line.decode(errors="replace"))
        try:
            length = int(headers.get("len", "0"))
        except ValueError:
            sys.stderr.write(f"jrd-events: unreadable event header {line!r}; skipped\n")
            length = 0
        payload = stdin.read(length).decode(errors="replace")
        first, _, _data = payload.partition("\n")
        event = {"eventname": headers.get("eventname", ""), "serial": headers.get("serial", "")}
        event.update(parse_tokens(first))
        if event["eventname"].startswith("PROCESS_STATE"):
            forward(event)
        # Always acknowledge: a refused event would be sent again and again.
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


def _sender(path: str) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def forward(event: dict[str, str]) -> None:
        try:
            # Never block supervisord's listener on a daemon that does not read.
            sock.sendto(json.dumps(event).encode(), socket.MSG_DONTWAIT, path)
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # jrd is stopping (it removes the socket first); nothing is listening
        except OSError as exc:
            sys.stderr.write(f"jrd-events: could not forward {event.get('eventname')} of "
                             f"{event.get('processname')}: {exc}\n")
            sys.stderr.flush()

    return forward


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m jrd.events SOCKET\n")
        return 2
    serve(sys.stdin.buffer, sys.stdout.buffer, _sender(args[0]))
    return 0


# --- the daemon's side ----------------------------------------------------------------


class ProgramEvents:
    """Daemon extension: receive forwarded events and count restarts on the main loop."""

    def __init__(self, python: Path | None = None):
        self._python = python or Path(sys.executable)
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._thread: threading.Thread | None = None

    def adjust_inputs(self, daemon: Any, inputs: Any) -> Any:
        # Bind before supervisord starts, so that an early crash is not lost:
        # the kernel queues datagrams until the receiver thread reads them.
        self._bind(inputs.layout.events_socket)
        command = shlex.join([str(self._python), "-m", "jrd.events", str(self._path)])
        # supervisord expands %(name)s in commands: a literal % is written %%.
        return replace(inputs, event_listener_command=command.replace("%", "%%"))

    def _bind(self, path: Path) -> None:
        if self._sock is not None:
            return
        ensure_dir(path.parent, 0o700)
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        self._sock, self._path = sock, path

    def start(self, daemon: Any) -> None:
        daemon.add_handler("program_event", lambda cmd: self.on_event(daemon, cmd.args))
        if self._sock is None:
            self._bind(daemon.layout.events_socket)
        self._thread = threading.Thread(target=self._receive, args=(daemon,), name="jrd-events", daemon=True)
        self._thread.start()

    def _receive(self, daemon: Any) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except OSError:
                return
            if data == _STOP:
                return
            try:
                event = json.loads(data)
            except ValueError:
                log.warning("ignored a malformed event datagram (%d bytes)", len(data))
                continue
            if isinstance(event, dict):
                daemon.submit("program_event", "supervisord", **{str(k): str(v) for k, v in event.items()})

    def on_event(self, daemon: Any, event: dict[str, str]) -> str | None:
        """On the main loop: count the restart an event records, and say so."""
        program = event.get("processname", "")
        if event.get("eventname") == "PROCESS_STATE_EXITED" and program in PROGRAMS:
            log.warning("%s exited unexpectedly (from %s); supervisord restarts it: %s",
                        program, event.get("from_state"), daemon.log_tail(program))
        reason = restart_reason(event)
        if reason:
            daemon.count_restart(program, reason)
            log.info("%s restarted by supervisord (%s)", program, reason)
        return reason

    def stop(self, daemon: Any) -> None:
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


if __name__ == "__main__":
    sys.exit(main())

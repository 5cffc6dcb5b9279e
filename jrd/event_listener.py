"""The event listener program that supervisord runs as `[eventlistener:jrd-events]`.

It speaks supervisord's listener protocol (`READY`, a header line, a
payload, `RESULT 2\\nOK`) on stdin/stdout and forwards each PROCESS_STATE
event as one datagram to the daemon (`jrd.events`), in supervisord's own
`key:value key:value` format.  It runs for as long as jrd does, so it is
kept small: jrd starts it as a script with `python -I -S` (no site-packages,
no environment), and it imports only three built-in modules of the standard
library, nothing of jrd, not even `typing`, `json` or `socket` (each would
pull in `re` or `enum` and cost this process a fifth more memory).
"""

from __future__ import annotations

import _socket  # the C module under `socket`, whose enums and selectors this process does not need
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, Callable


def parse_tokens(text: str) -> dict[str, str]:
    """supervisord's `key:value key:value` header format."""
    return dict(token.split(":", 1) for token in text.split() if ":" in token)


def format_tokens(event: dict[str, str]) -> str:
    """The inverse of `parse_tokens` (supervisord's values hold no blanks)."""
    return " ".join(f"{key}:{value}" for key, value in event.items())


def serve(stdin: BinaryIO, stdout: BinaryIO, forward: Callable[[dict[str, str]], None]) -> None:
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


def _sender(path: str) -> Callable[[dict[str, str]], None]:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)

    def forward(event: dict[str, str]) -> None:
        try:
            # Never block supervisord's listener on a daemon that does not read.
            sock.sendto(format_tokens(event).encode(), _socket.MSG_DONTWAIT, path)
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
        sys.stderr.write("usage: python -I -S event_listener.py SOCKET\n")
        return 2
    serve(sys.stdin.buffer, sys.stdout.buffer, _sender(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The wire format of the control socket, and jrdctl's exit codes.

One request per connection, each way one JSON object on one line:

    request:  {"command": "restart", "args": {"program": "jupyter", "wait": true}}
    answer:   {"ok": true, "result": {...}}
          or  {"ok": false, "error": "one sentence", "exit_code": 1}
"""

from __future__ import annotations

import json
from typing import Any

from jrd.errors import UsageError

# A request larger than this is refused, not buffered.
MAX_REQUEST_BYTES = 64 * 1024

# jrdctl's exit codes, LSB-style where LSB gives them a meaning.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_ALL_RUNNING = 3  # LSB status: "program is not running"
EXIT_NO_PERMISSION = 4  # LSB: "user had insufficient privilege"
EXIT_DAEMON_DOWN = 7  # LSB: "program is not running", for actions other than status

# The one description of each exit code: jrdctl's --help and the README's table are made from it.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "done; for `status`: every program is running and Jupyter serves through nginx"),
    (EXIT_FAILED, "jrd refused or failed the request (the reason is printed, one line)"),
    (EXIT_USAGE, "wrong command line (unknown verb, program or option)"),
    (EXIT_NOT_ALL_RUNNING, "`status` only: a program is not running, supervisord does not answer, "
                           "or Jupyter does not serve through nginx"),
    (EXIT_NO_PERMISSION, "permission denied on the control socket (the message says who may use it)"),
    (EXIT_DAEMON_DOWN, "jrd itself is not running (no socket, or nothing answers on it)"),
)


def exit_codes_help() -> str:
    """The exit-code table as jrdctl's --help epilog shows it."""
    return "exit codes:\n" + "\n".join(f"  {code}  {text.replace('`', '')}" for code, text in EXIT_CODES)


def exit_codes_markdown() -> str:
    """The exit-code table as the README shows it (a unit test keeps the README equal to this)."""
    rows = [f"| {code} | {text} |" for code, text in EXIT_CODES]
    return "\n".join(["| code | meaning |", "| --- | --- |", *rows])


# --- framing -----------------------------------------------------------------------------------


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line."""
    return json.dumps(message, default=str).encode() + b"\n"


def encode_request(command: str, args: dict[str, Any]) -> bytes:
    return encode({"command": command, "args": args})


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(command, args) from one request line; ValueError if it is not JSON, UsageError if not a request."""
    request = json.loads(line)
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise UsageError('a request is a JSON object such as {"command": "status", "args": {}}')
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise UsageError("args must be a JSON object")
    return request["command"], args


def result_answer(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error_answer(message: str, exit_code: int = EXIT_FAILED) -> dict[str, Any]:
    """An answer that refuses: the client prints `message` and exits with `exit_code`."""
    return {"ok": False, "error": message, "exit_code": exit_code}

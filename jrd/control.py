"""The control socket: jrd's private request/response API, server and client.

The protocol is one JSON object per line on a unix socket in the runtime
dir, one request per connection:

    request:  {"command": "restart", "args": {"program": "jupyter", "wait": true}}
    answer:   {"ok": true, "result": {...}}
          or  {"ok": false, "error": "one sentence", "exit_code": 1}

The socket is mode 0600 (or 0660 for the [control] group) and never on
TCP.  Every request becomes `daemon.submit(name, "control", **args)`, the
same command path that signals and file events use.  Waiting for a
restarted program to serve again happens in the connection's thread, so the
main loop stays free for other commands meanwhile.

A connection that sends garbage, too much, or nothing at all gets an error
answer or a closed connection; it never takes the server down.
"""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from jrd import states
from jrd.errors import ControlError, ControlPermissionDenied, DaemonNotRunning, JrdError, UsageError

from jrd.extension import Context, Extension

log = logging.getLogger("jrd.control")

MAX_REQUEST_BYTES = 64 * 1024
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 16
PROGRAMS = states.PROGRAMS

# exit codes of jrdctl, documented in the README; LSB where LSB has a meaning
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_ALL_RUNNING = 3  # LSB status: "program is not running"
EXIT_NO_PERMISSION = 4  # LSB: "user had insufficient privilege"
EXIT_DAEMON_DOWN = 7  # LSB: "program is not running" for actions other than status


# --- what the socket accepts -------------------------------------------------------
# Each request names one of these; its args are checked here, at the edge, so
# that the daemon's handlers get only what they expect.  Timeouts bound how
# long a connection waits for the main loop to carry the command out.


def check_program(value: Any, allow_all: bool = True) -> str:
    """`value` if it names a program (or "all"), else a UsageError listing the valid names."""
    valid = PROGRAMS + (("all",) if allow_all else ())
    if value not in valid:
        raise UsageError(f"unknown program {value!r}; valid names are: {', '.join(valid)}")
    return value


def _check_args(command: str, args: dict[str, Any]) -> dict[str, Any]:
    """The checked arguments of a request, or UsageError naming the bad one."""
    allowed = {
        "status": set(),
        "reload": set(),
        "kernels": set(),
        "restart": {"program", "wait", "timeout"},
        "start": {"program", "wait", "timeout"},
        "stop": {"program"},
        "renew_cert": {"force"},
        "passwd": {"hashed"},
        "logs": {"program", "offset", "lines"},
    }
    if command not in allowed:
        raise UsageError(f"unknown request {command!r}; known requests are: {', '.join(sorted(allowed))}")
    unknown = set(args) - allowed[command]
    if unknown:
        raise UsageError(f"{command} takes no argument {sorted(unknown)[0]!r}")
    out = dict(args)
    if "program" in out:
        out["program"] = check_program(out["program"], allow_all=command != "logs")
    for key in ("wait", "force"):
        if key in out and not isinstance(out[key], bool):
            raise UsageError(f"{key} must be true or false")
    for key, lo, hi in (("timeout", 1, 3600), ("lines", 0, 100000), ("offset", 0, 2**62)):
        if key in out and out[key] is not None:
            if isinstance(out[key], bool) or not isinstance(out[key], (int, float)) or not lo <= out[key] <= hi:
                raise UsageError(f"{key} must be a number between {lo} and {hi}")
    if command == "passwd" and not isinstance(out.get("hashed"), str):
        raise UsageError("passwd needs a password hash")
    return out


def command_timeout(command: str, args: dict[str, Any]) -> float:
    """How long the server waits for the main loop to finish a command."""
    if command in ("restart", "start", "stop"):
        # supervisord's stopwaitsecs (20 s) plus a start, plus waiting to serve
        return 90.0 + float(args.get("timeout") or 120.0)
    if command in ("reload", "passwd", "renew_cert"):
        return 120.0
    return 30.0


# --- logs: read by the daemon on the client's behalf --------------------------------


# --- server --------------------------------------------------------------------------


class ControlServer(Extension):
    """A daemon extension: serve the control socket from a thread per connection."""

    def __init__(self, path: Path, group: str = "", *, read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        self.path = path
        self.group = group
        self.read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.ctx: Context | None = None

    # --- extension interface
    def start(self, ctx: Context) -> None:
        self.ctx = ctx
        self._sock = bind_private_socket(self.path, self.group)
        self._thread = threading.Thread(target=self._accept_loop, name="jrd-control", daemon=True)
        self._thread.start()
        log.info("control socket at %s", self.path)

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    # --- serving
    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # EMFILE and the like: do not spin
                continue
            if not self._slots.acquire(blocking=False):
                busy = {"ok": False, "error": "jrd is busy with other control requests; try again", "exit_code": 1}
                threading.Thread(target=_refuse, args=(conn, busy, 0.5), name="jrd-control-busy", daemon=True).start()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="jrd-control-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(self.read_timeout)
                uid = _peer_uid(conn)
                try:
                    line = _read_line(conn, MAX_REQUEST_BYTES)
                except _BadRequest as exc:
                    _refuse(conn, {"ok": False, "error": str(exc), "exit_code": EXIT_USAGE}, 1.0)
                    return
                except (OSError, socket.timeout):
                    return  # the client went away or never said anything
                _send(conn, self.answer(line, uid))
        except Exception:  # a bug: log it, keep serving the next connection
            log.exception("control connection failed unexpectedly")
        finally:
            self._slots.release()

    def answer(self, line: bytes, uid: int | None = None) -> dict[str, Any]:
        """The answer to one request line: a result or an error, never an exception."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise UsageError('a request is a JSON object such as {"command": "status", "args": {}}')
            args = request.get("args", {})
            if not isinstance(args, dict):
                raise UsageError("args must be a JSON object")
            command = request["command"]
            args = _check_args(command, args)
            if command not in ("status", "logs", "kernels"):
                log.info("control: %s %s (uid %s)", command, args.get("program", ""), "?" if uid is None else uid)
            return {"ok": True, "result": self.carry_out(command, args)}
        except (ValueError, RecursionError):
            return {"ok": False, "error": "the request is not valid JSON", "exit_code": EXIT_USAGE}
        except UsageError as exc:
            return {"ok": False, "error": str(exc), "exit_code": EXIT_USAGE}
        except JrdError as exc:  # refused or failed: jrdctl's code 1, whatever the error class
            return {"ok": False, "error": str(exc), "exit_code": EXIT_FAILED}
        except Exception as exc:
            log.exception("control request failed unexpectedly")
            return {"ok": False, "error": f"internal error: {exc}", "exit_code": EXIT_FAILED}

    def carry_out(self, command: str, args: dict[str, Any]) -> Any:
        """Submit the command to the main loop, wait for it, then wait for serving if asked."""
        ctx = self.ctx
        assert ctx is not None
        wait = args.pop("wait", False)
        wait_timeout = float(args.pop("timeout", None) or 120.0)
        limit = command_timeout(command, {"timeout": wait_timeout})
        started = time.monotonic()
        future = ctx.submit(command, "control", **args)
        try:
            result = future.result(timeout=limit)
        except FutureTimeout:
            raise JrdError(f"jrd did not finish {command} within {limit:.0f} s; it may still be in progress "
                           "(see `jrdctl status`)") from None
        if wait and command in ("restart", "start"):
            result = dict(result, **ctx.wait_serving(started + wait_timeout))
            result["seconds"] = round(time.monotonic() - started, 3)
        return result


def bind_private_socket(path: Path, group: str = "") -> socket.socket:
    """Listen on `path` with mode 0600 (0660 and chgrp'd with a group), never reachable with looser modes.

    The socket is bound in a private (0700) staging directory, given its
    mode and group there, and only then renamed into place.
    """
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise JrdError(f"[control] group = {group!r} is not a group on this machine; create it "
                           f"(`groupadd {group}`) or leave the key empty") from None
    staging = path.parent / ".control-staging"
    staging.mkdir(mode=0o700, exist_ok=True)
    os.chmod(staging, 0o700)
    tmp = staging / path.name
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, 0o660 if group else 0o600)
        if gid != -1:
            os.chown(tmp, -1, gid)
        sock.listen(64)
        os.replace(tmp, path)
    except OSError as exc:
        sock.close()
        raise JrdError(f"cannot create the control socket {path}: {exc.strerror}") from None
    finally:
        try:
            staging.rmdir()
        except OSError:
            pass
    return sock


class _BadRequest(Exception):
    pass


def _read_line(conn: socket.socket, limit: int) -> bytes:
    """One newline-terminated request (EOF also ends it), at most `limit` bytes."""
    buf = bytearray()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            if not buf:
                raise OSError(errno.ECONNRESET, "closed before a request")
            return bytes(buf)
        newline = chunk.find(b"\n")
        if newline >= 0:
            buf += chunk[:newline]
            if len(buf) > limit:
                raise _BadRequest(f"the request is larger than {limit} bytes")
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise _BadRequest(f"the request is larger than {limit} bytes")


def _send(conn: socket.socket, answer: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
    except OSError:
        pass  # the client is gone; nothing to tell it


def _refuse(conn: socket.socket, answer: dict[str, Any], drain_seconds: float) -> None:
    """Answer with an error, then read and drop what the client still sends, for a bounded time.

    Closing a unix socket with unread input resets the peer, which would
    lose the answer; a client that keeps sending past the bound gets the reset.
    """
    with conn:
        _send(conn, answer)
        deadline = time.monotonic() + drain_seconds
        dropped = 0
        try:
            while dropped < MAX_REQUEST_BYTES * 16 and (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                chunk = conn.recv(65536)
                if not chunk:
                    return
                dropped += len(chunk)
        except OSError:
            pass


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", creds)[1]


# --- client --------------------------------------------------------------------------


def request(path: Path, command: str, timeout: float | None = None, **args: Any) -> Any:
    """Send one request to the daemon and return its result, or raise a JrdError that says what to do."""
    timeout = timeout if timeout is not None else command_timeout(command, args) + 10
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise DaemonNotRunning(f"jrd is not running (no socket at {path}); start it with `systemctl start jrd`") from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(
                f"jrd is not running (nothing answers on {path}); start it with `systemctl start jrd`") from None
        except PermissionError:
            raise ControlPermissionDenied(permission_advice(path)) from None
        except OSError as exc:
            raise JrdError(f"cannot reach jrd at {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise JrdError(f"jrd did not answer {command} within {timeout:.0f} s; see `journalctl -u jrd`") from None
        except OSError as exc:
            raise JrdError(f"the connection to jrd broke during {command} ({exc.strerror or exc})") from None
    finally:
        sock.close()
    if not data:
        raise JrdError(f"jrd closed the connection without answering {command}; is it shutting down?")
    try:
        answer = json.loads(data)
    except ValueError:
        raise JrdError(f"jrd answered {command} with something that is not JSON: {bytes(data[:80])!r}") from None
    if not isinstance(answer, dict):
        raise JrdError(f"jrd answered {command} with {answer!r} instead of an object")
    if not answer.get("ok"):
        err = ControlError(answer.get("error") or "jrd refused the request")
        # jrdctl's own codes: the daemon's error classes would collide with them
        err.exit_code = EXIT_USAGE if answer.get("exit_code") == EXIT_USAGE else EXIT_FAILED
        raise err
    return answer.get("result")


def permission_advice(path: Path) -> str:
    """Who may use the control socket, in one sentence."""
    try:
        st = os.stat(path)
    except PermissionError:
        return (f"permission denied on {path}: its directory is not open to you; "
                "only root (or the account jrd runs as) may use jrdctl")
    owner = _user_name(st.st_uid)
    if st.st_mode & stat.S_IWGRP:
        group = _group_name(st.st_gid)
        return (f"permission denied on {path}: only {owner} and members of group {group!r} may use jrdctl "
                f"(an admin can add you with `usermod -aG {group} {_user_name(os.geteuid())}`)")
    return (f"permission denied on {path}: only {owner} may use jrdctl "
            "(to share it, set [control] group in the config and add users to that group)")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)

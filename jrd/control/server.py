"""The control socket's server: an extension that turns each request into a command on the main loop.

Each connection gets its own thread, so waiting for Jupyter to serve again
never holds up the main loop.  A connection that sends garbage, too much,
or nothing at all gets an error answer or a closed connection; it never
takes the server down.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import struct
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Mapping

from jrd.control import protocol
from jrd.control.commands import COMMANDS, DEFAULT_WAIT, CommandSpec
from jrd.control.protocol import EXIT_FAILED, EXIT_USAGE, MAX_REQUEST_BYTES, error_answer
from jrd.errors import JrdError, UsageError
from jrd.extension import Context, Extension

log = logging.getLogger("jrd.control")

READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 16


class ControlServer(Extension):
    """Serve the control socket from a thread per connection; every request goes through `ctx.submit`."""

    def __init__(self, path: Path, group: str = "", *, read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, commands: Mapping[str, CommandSpec] = COMMANDS):
        self.path = path
        self.group = group
        self.read_timeout = read_timeout
        self.commands = commands
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ctx: Context | None = None

    def start(self, ctx: Context) -> None:
        self._ctx = ctx
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
        self.path.unlink(missing_ok=True)

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
                busy = error_answer("jrd is busy with other control requests; try again")
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
                except _RequestTooLarge as exc:
                    _refuse(conn, error_answer(str(exc), EXIT_USAGE), 1.0)
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
            name, args = protocol.decode_request(line)
            spec = self.commands.get(name)
            if spec is None:
                raise UsageError(f"unknown request {name!r}; known requests are: {', '.join(sorted(self.commands))}")
            args = spec.check_args(args)
            if spec.logged:
                log.info("control: %s %s (uid %s)", name, args.get("program", ""), "?" if uid is None else uid)
            return protocol.result_answer(self.carry_out(spec, args))
        except (ValueError, RecursionError):
            return error_answer("the request is not valid JSON", EXIT_USAGE)
        except UsageError as exc:
            return error_answer(str(exc), EXIT_USAGE)
        except JrdError as exc:  # refused or failed: jrdctl's code 1, whatever the error class
            return error_answer(str(exc), EXIT_FAILED)
        except Exception as exc:
            log.exception("control request failed unexpectedly")
            return error_answer(f"internal error: {exc}", EXIT_FAILED)

    def carry_out(self, spec: CommandSpec, args: dict[str, Any]) -> Any:
        """Submit the command to the main loop and wait for it; then wait for serving if the client asked."""
        ctx = self._ctx
        assert ctx is not None, "ControlServer.start was not called"
        wait = args.pop("wait", False)
        wait_timeout = float(args.pop("timeout", None) or DEFAULT_WAIT)
        limit = spec.server_timeout({**args, "timeout": wait_timeout})
        started = time.monotonic()
        future = ctx.submit(spec.name, "control", **args)
        try:
            result = future.result(timeout=limit)
        except FutureTimeout:
            raise JrdError(f"jrd did not finish {spec.name} within {limit:.0f} s; it may still be in progress "
                           "(see `jrdctl status`)") from None
        if wait and spec.waits_serving:
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


class _RequestTooLarge(Exception):
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
                raise _RequestTooLarge(f"the request is larger than {limit} bytes")
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise _RequestTooLarge(f"the request is larger than {limit} bytes")


def _send(conn: socket.socket, answer: dict[str, Any]) -> None:
    try:
        conn.sendall(protocol.encode(answer))
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

"""The only module that speaks to supervisord: launching it and XML-RPC.

Every call goes over supervisord's private unix socket with a timeout, so
that a hung supervisord can delay jrd by a bounded amount and never forever.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jrd import states
from jrd.errors import Interrupted, SupervisorError
from jrd.unixhttp import UnixHTTPConnection

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when the parent dies, even by SIGKILL."""
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def become_subreaper() -> None:
    """Orphaned descendants (a kernel whose Jupyter died) become our children."""
    _libc().prctl(PR_SET_CHILD_SUBREAPER, 1)


def launch_supervisord(conf: Path, python: Path | None = None) -> subprocess.Popen[bytes]:
    """Start supervisord in the foreground as our child, in its own session.

    Its own session keeps a terminal's Ctrl-C away from it: jrd decides how
    to shut down.  PDEATHSIG makes it shut down if jrd is killed outright.
    """
    python = python or Path(sys.executable)
    return subprocess.Popen(
        [str(python), "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float):
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self._path, self._timeout)


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str
    pid: int
    start: float
    now: float
    exitstatus: int
    spawnerr: str

    @property
    def running(self) -> bool:
        return self.state == states.RUNNING

    @property
    def uptime(self) -> float:
        return max(0.0, self.now - self.start) if self.running else 0.0

    @classmethod
    def from_rpc(cls, info: dict[str, Any]) -> "ProcessInfo":
        return cls(
            name=info["name"], state=info["statename"], pid=info["pid"], start=float(info["start"]),
            now=float(info["now"]), exitstatus=info["exitstatus"], spawnerr=info.get("spawnerr", ""),
        )


class Supervisor:
    """A client of one supervisord, over its unix socket, with bounded calls."""

    def __init__(self, socket_path: Path, timeout: float = 5.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def _rpc(self, timeout: float | None = None) -> Any:
        # A fresh proxy per call: ServerProxy is not safe to share between threads.
        transport = _UnixTransport(str(self.socket_path), timeout or self.timeout)
        return xmlrpc.client.ServerProxy("http://localhost", transport=transport, allow_none=True)

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        proxy = self._rpc(timeout)
        try:
            return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(f"supervisord refused {method}{args!r}: {exc.faultString}") from None
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorError(f"supervisord did not answer {method} ({exc.__class__.__name__}: {exc})") from None

    def state(self) -> str:
        return self._call("getState")["statename"]

    def processes(self) -> dict[str, ProcessInfo]:
        return {i["name"]: ProcessInfo.from_rpc(i) for i in self._call("getAllProcessInfo")}

    def process(self, name: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self._call("getProcessInfo", name))

    def start(self, name: str, wait: bool = True) -> None:
        self._call("startProcess", name, wait, timeout=self.timeout + 60)

    def stop(self, name: str, wait: bool = True) -> None:
        self.wake(name)
        self._call("stopProcess", name, wait, timeout=self.timeout + 60)

    def signal(self, name: str, sig: str) -> None:
        self._call("signalProcess", name, sig)

    # A SIGSTOPped program cannot act on the SIGTERM of a stop: supervisord would wait out its
    # stopwaitsecs and SIGKILL it (Jupyter's kernels with it).  SIGCONT first, harmless to a
    # running one, lets it shut down at once and gracefully.
    def wake(self, name: str) -> None:
        try:
            self._call("signalProcess", name, "CONT", timeout=5)
        except SupervisorError:
            pass  # not running, or supervisord does not answer: the stop that follows says so

    def wake_all(self) -> None:
        try:
            self._call("signalAllProcesses", "CONT", timeout=5)
        except SupervisorError:
            pass

    def update(self) -> tuple[list[str], list[str], list[str]]:
        """Apply a changed supervisord.conf as `supervisorctl update` does."""
        added, changed, removed = self._call("reloadConfig")[0]
        for name in removed:
            self._stop_group(name)
            self._call("removeProcessGroup", name)
        for name in changed:
            self._stop_group(name)
            self._call("removeProcessGroup", name)
            self._call("addProcessGroup", name, timeout=self.timeout + 60)
        for name in added:
            self._call("addProcessGroup", name, timeout=self.timeout + 60)
        return added, changed, removed

    def _stop_group(self, name: str) -> None:
        try:
            self._call("stopProcessGroup", name, True, timeout=self.timeout + 60)
        except SupervisorError:
            pass  # already stopped

    def wait_ready(self, deadline: float, alive: "subprocess.Popen[bytes] | None" = None,
                   cancelled: "threading.Event | None" = None) -> None:
        """Wait until supervisord answers RUNNING on its socket (or `cancelled` is set)."""
        last: Exception | None = None
        while time.monotonic() < deadline:
            if cancelled is not None and cancelled.is_set():
                raise Interrupted("stopped while waiting for supervisord to start")
            if alive is not None and alive.poll() is not None:
                raise SupervisorError(
                    f"supervisord exited with status {alive.returncode} while starting; see its log for why"
                )
            try:
                if self.state() == "RUNNING":
                    return
            except SupervisorError as exc:
                last = exc
            time.sleep(0.05)
        raise SupervisorError(f"supervisord did not come up on {self.socket_path}: {last}")


def stop_supervisord(proc: "subprocess.Popen[bytes]", timeout: float) -> int:
    """SIGTERM supervisord (it stops its programs gracefully), then SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it exited just now
        return proc.wait()

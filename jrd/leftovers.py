"""What a dead program leaves behind, found and cleared: processes, stale sockets and pid files.

A program killed outright (SIGKILL, the OOM killer) cannot clean up: nginx's
master leaves its workers holding the listening port and its unix sockets on
disk, and a jrd killed outright leaves supervisord, Jupyter and nginx
shutting down in the background.  Everything jrd starts names its runtime
dir on its command line (configs, sockets, Jupyter's runtime dir, kernels'
connection files), so "ours" is a /proc scan; nginx's workers, whose command
line is only "nginx: worker process", are found by their master's process
group.

Standard library only: `jrd.prestart` runs this before every nginx start.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [0] is the state, [1] the parent, [2] the process group."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def pids() -> list[int]:
    """Every process there is now."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def state(pid: int) -> str | None:
    """The process's state letter (R, S, D, T, Z, ...), None if it does not exist."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    """True for a process that exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def in_group(pgid: int, comm: str | None = None) -> list[int]:
    """Live processes of process group `pgid` (whose name is `comm`, if given)."""
    out = []
    for pid in pids():
        fields = stat_fields(pid)
        if fields is None or fields[0] == "Z" or int(fields[2]) != pgid:
            continue
        if comm is not None:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != comm:
                    continue
            except OSError:
                continue
        out.append(pid)
    return out


def mentioning(text: str, exclude: set[int] | None = None) -> list[int]:
    """Live processes without a terminal whose command line contains `text`.

    Without a terminal: what jrd starts never has one, and a person's `less`
    of a file in the runtime dir, which has, is never taken for a leftover.
    """
    needle, skip, out = text.encode(), (exclude or set()) | {os.getpid()}, []
    for pid in pids():
        fields = stat_fields(pid)
        if pid in skip or fields is None or fields[4] != "0":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline and alive(pid):
            out.append(pid)
    return out


def terminate(pids: list[int], grace: float, first: int = signal.SIGTERM) -> list[int]:
    """Signal `pids` with `first`, then SIGKILL what is left after `grace` seconds; those that needed SIGKILL."""
    for pid in pids:
        _kill(pid, first)
    deadline = time.monotonic() + grace
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    for pid in left:
        _kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while any(alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


def remove_stale_socket(path: Path) -> bool:
    """Remove a unix socket that nobody listens on; whether it was removed."""
    if not path.is_socket():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
            return False  # alive: someone listens
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def tcp_listener(port: int) -> tuple[int, str] | None:
    """(pid, name) of a process listening on TCP `port`, from /proc; None if none can be seen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid in pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid, Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
    return None

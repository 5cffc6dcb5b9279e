"""Is this machine ready to run jrd?  The lock, the ports, the accounts and the binaries.

Each check raises one `PreflightError` (or `ConfigError`) sentence that
says what is wrong and how to fix it; none of them changes anything but
the lock file.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pwd
import socket
import stat
import sys
from pathlib import Path

from jrd import leftovers
from jrd.config import Config, split_host_port
from jrd.errors import ConfigError, PreflightError
from jrd.layout import Layout
from jrd.render import Account

log = logging.getLogger("jrd")


class InstanceLock:
    """One jrd per runtime dir: an flock on a file that holds the owner's PID."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            other = os.read(fd, 32).decode().strip() or "?"
            os.close(fd)
            raise PreflightError(
                f"jrd is already running with runtime dir {self.path.parent} (pid {other}); "
                "stop it first (`systemctl stop jrd`) or give this one another [paths] runtime_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(path: Path) -> int | None:
        """The PID of the jrd that holds the lock at `path` (0 if unknown), None if none does; changes nothing."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file: no jrd has run on this runtime dir
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        finally:
            os.close(fd)
        return None


def clear_previous_run(layout: Layout, grace: float = 15.0) -> list[int]:
    """End what an earlier jrd on these directories left running, and its stale sockets; the PIDs ended.

    Call it holding the instance lock: then no live jrd owns these processes.
    A jrd killed outright leaves supervisord stopping its programs (it gets
    SIGTERM when jrd dies), or, if that was killed too, the programs themselves.
    """
    pids = leftovers.mentioning(str(layout.runtime_dir) + "/")
    master = leftovers.read_pid(layout.nginx_pid_file)
    if master is not None:
        pids += [p for p in leftovers.in_group(master, "nginx") if p not in pids]
    if pids:
        log.warning("ending %d process(es) left by an earlier jrd on %s: %s", len(pids), layout.runtime_dir,
                    " ".join(map(str, sorted(pids))))
        leftovers.terminate(pids, grace)
    for sock in (layout.supervisor_socket, layout.events_socket, layout.nginx_status_socket):
        leftovers.remove_stale_socket(sock)
    layout.nginx_pid_file.unlink(missing_ok=True)
    return pids


def busy_ports(config: Config) -> list[tuple[str, str]]:
    """Every port that jrd needs and cannot have now: (what is wrong, how to fix it)."""
    wanted = [(addr, config.nginx.port, "[nginx] port") for addr in config.nginx.listen]
    wanted.append(("127.0.0.1", config.jupyter.port, "[jupyter] port"))
    if config.acme_tls:
        wanted += [(addr, config.acme.http_port, "[acme] http_port") for addr in config.nginx.listen]
    if config.metrics.listen:
        host, port = split_host_port(config.metrics.listen)
        wanted.append((host, port, "[metrics] listen"))
    where = config.source or "the config"
    out = []
    for addr, port, key in wanted:
        host = {"*": "0.0.0.0"}.get(addr, addr).strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    holder = leftovers.tcp_listener(port)
                    who = f"pid {holder[0]} ({holder[1]})" if holder else "another program"
                    out.append((f"port {port} on {addr} is already in use by {who}",
                                f"stop that program (`ss -ltnp 'sport = :{port}'` shows it) "
                                f"or change {key} in {where}"))
                else:
                    out.append((f"cannot listen on {addr}:{port} ({exc.strerror})", f"check {key} in {where}"))
    return out


def check_ports(config: Config) -> None:
    """Fail with a clear sentence if a port that jrd needs is taken."""
    for what, fix in busy_ports(config)[:1]:
        raise PreflightError(f"{what}; {fix}")


def venv_bin() -> Path:
    """The bin dir of jrd's virtualenv, by its real path: the Jupyter account may not pass a link to it."""
    return Path(sys.executable).parent.resolve()


def python_executable() -> Path:
    """jrd's Python, named by the real path of its virtualenv (not resolved further: that would leave it)."""
    return venv_bin() / Path(sys.executable).name


def find_jupyter() -> Path:
    exe = venv_bin() / "jupyter"
    if not exe.exists():
        raise PreflightError(
            f"Jupyter is not installed beside jrd (no {exe}); install it with `pip install jupyterlab` "
            "in the same environment, or run `make install`"
        )
    return exe


def jupyter_account(config: Config) -> Account:
    """The account Jupyter runs as; root only by explicit opt-in."""
    where = config.source or "the built-in defaults"
    name = config.jupyter.user
    if name:
        pw = pwd.getpwnam(name)
    else:
        pw = pwd.getpwuid(os.geteuid())
    if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
        raise ConfigError(
            f"{where}: [jupyter] user = {name!r} needs jrd to run as root; run jrd as root or leave user empty"
        )
    if pw.pw_uid == 0 and not config.jupyter.allow_root:
        raise ConfigError(
            f"{where}: Jupyter would run as root; set [jupyter] user to a normal account "
            "(for example `useradd --create-home jupyter` and user = \"jupyter\"), "
            "or set [jupyter] allow_root = true if you really mean it"
        )
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def nginx_worker_user() -> str:
    for name in ("www-data", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return "nobody"


def closed_to(path: Path, account: Account) -> Path | None:
    """The first directory on the way to `path` that `account` may not enter, by owner, group and mode bits."""
    if account.uid == 0:
        return None
    groups = {account.gid, *os.getgrouplist(account.name, account.gid)}
    for d in (*reversed(path.parents), path):
        try:
            st = os.stat(d)
        except OSError:
            return None  # made later, by jrd, with a mode that lets the account in
        if not stat.S_ISDIR(st.st_mode):
            return None
        bit = 0o100 if st.st_uid == account.uid else 0o010 if st.st_gid in groups else 0o001
        if not st.st_mode & bit:
            return d
    return None


def check_jupyter_reach(root_dir: Path | None, jupyter_executable: Path, account: Account) -> None:
    """The Jupyter account can enter its notebook dir and read the virtualenv it runs from.

    Otherwise Jupyter dies at its start with EACCES (`couldn't chdir`); say
    which directory keeps it out instead.  jrd never opens one up itself.
    """
    for what, path, fix in (
        ("[jupyter] root_dir", root_dir,
         "choose a root_dir the account can reach (leave it unset for the account's home)"),
        ("jrd's virtualenv", jupyter_executable.parent.parent,
         "install jrd where other accounts can read it (scripts/install-system, or `make run`, which does by itself)"),
    ):
        closed = closed_to(path, account) if path is not None else None
        if closed is not None:
            mode = stat.S_IMODE(os.stat(closed).st_mode)
            raise PreflightError(
                f"the Jupyter account '{account.name}' cannot reach {what} {path}: it may not enter {closed} "
                f"(mode {mode:04o}, owner {pwd.getpwuid(os.stat(closed).st_uid).pw_name}); {fix}"
            )


def writable_by(path: Path, account: Account) -> bool:
    """Whether `account` may create files in the directory `path`, by its owner, group and mode bits."""
    try:
        return _allowed(os.stat(path), account, 0o3)
    except OSError:
        return False


def readable_dir_by(path: Path, account: Account) -> bool:
    """Whether `account` may reach the directory `path` and list and read what is in it."""
    try:
        parents = [os.stat(p) for p in reversed(path.parents)]
        own = os.stat(path)
    except OSError:
        return False
    return all(_allowed(st, account, 0o1) for st in parents) and _allowed(own, account, 0o5)


def _allowed(st: os.stat_result, account: Account, bits: int) -> bool:
    """Whether the mode bits `bits` (4 read, 2 write, 1 search) of a file are `account`'s, as the kernel decides."""
    if account.uid == 0:
        return True
    if st.st_uid == account.uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid in {account.gid, *os.getgrouplist(account.name, account.gid)}:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits

"""Shared fixtures: a real jrd (supervisord, nginx, Jupyter) in a temp dir on loopback ports."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
import websocket

REPO = Path(__file__).resolve().parent.parent
# The venv by its real path: `.venv` may be a link into /var/lib/jrd-dev (jrd/checkout.py),
# which other accounts can follow only from outside a 0700 checkout.
BIN = Path(sys.executable).parent.resolve()
PYTHON = str(BIN / Path(sys.executable).name)
JRD = str(BIN / "jrd")
JRDCTL = str(BIN / "jrdctl")
TEST_USER = "jrdtest"
PASSWORD = "correct horse battery staple"


# The longest test files, longest first (seconds on 2 cores, 2026-12): with `make test`'s two
# processes each taking a file at a time, starting with them keeps one process from being
# left with a long file at the end.  Every other file follows, in its usual order.
LONGEST_FILES = (
    "test_idle_integration.py",  # 181 s, mostly waiting out idle deadlines
    "test_faults.py",  # 143
    "test_systemd.py",  # 79
    "test_acme_integration.py",  # 70
    "test_browser_server_side_execution.py",  # 68
    "test_reload.py",  # 54
    "test_core_integration.py",  # 46
    "test_browser_idle.py",  # 42
    "test_metrics_integration.py",  # 38
    "test_ctl.py",  # 30
    "test_renewal_integration.py",  # 30
    "test_static_bundles.py",  # 24
    "test_browser_lab.py",  # 22
    "test_security.py",  # 19
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


@functools.cache
def shared_cache_dir() -> Path:
    """One [paths] cache_dir for the whole run, with JupyterLab's bundles compressed once.

    Every jrd would otherwise spend some 20 s of CPU on its own copy at its first start,
    and reload nginx when it is done, in the middle of the test.  tests/test_static_bundles.py
    starts from an empty cache_dir to see that happen.
    """
    from jrd.static_cache import build_copy, lab_static_dir

    # One per environment: a copy is kept only for the JupyterLab build it was made from.
    cache = Path(tempfile.gettempdir()) / f"jrd-test-cache-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:8]}"
    with machine_lock("cache"):
        cache.mkdir(mode=0o755, exist_ok=True)
        cache.chmod(0o755)
        build_copy(lab_static_dir(), cache / "lab-static")
    return cache


# Each pytest-xdist worker hands out loopback ports from its own range, below the kernel's
# ephemeral ports, so that two workers never pick the same one; in each range the next
# port is tried until one binds.
PORTS_PER_WORKER = 2500
_next_port: list[int] = []


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker[2:].isdigit() else 0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing listens on now, never handed out before in this run."""
    first = 20000 + _worker_index() * PORTS_PER_WORKER
    if not _next_port:
        _next_port.append(first + (os.getpid() % PORTS_PER_WORKER))
    for _ in range(PORTS_PER_WORKER):
        port = first + (_next_port[0] - first) % PORTS_PER_WORKER
        _next_port[0] = port + 1
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {first}-{first + PORTS_PER_WORKER - 1}")


def ctrl_c_stops_it() -> None:
    """Popen's preexec_fn for a child that a test stops with SIGINT, as Ctrl-C at a terminal would: SIGINT
    back to its default, even where the tests run with it ignored (a shell's `&` without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Held by one test process at a time (pytest-xdist runs several): for what the machine has one of."""
    with open(f"/tmp/jrd-tests-{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if it never succeeds
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def ensure_test_user() -> str:
    """A throwaway non-root account for Jupyter, as a real install would use."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    with machine_lock("accounts"):
        try:
            pwd.getpwnam(TEST_USER)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", TEST_USER], check=True)
    return TEST_USER


def venv_usable_by(user: str) -> bool:
    if os.geteuid() != 0 or user == "root":
        return True
    proc = subprocess.run(["runuser", "-u", user, "--", PYTHON, "-c", "import jupyter_server"],
                          capture_output=True)
    return proc.returncode == 0


@functools.cache
def python_as(user: str) -> tuple[str, ...]:
    """The command line by which root runs this venv's Python as `user`, with this checkout's jrd importable.

    The venv's jrd is this checkout (an editable install).  From a checkout that
    `user` cannot enter (root's 0700 home), `user` gets a copy of the package
    instead, in a directory it may read.
    """
    argv = ("runuser", "-u", user, "--")
    if subprocess.run([*argv, PYTHON, "-c", "import jrd.control.cli"], capture_output=True).returncode == 0:
        return (*argv, PYTHON)
    copy = Path(tempfile.mkdtemp(prefix="jrd-package-", dir="/tmp"))
    copy.chmod(0o755)
    shutil.copytree(REPO / "jrd", copy / "jrd", ignore=shutil.ignore_patterns("__pycache__"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    return (*argv, "env", f"PYTHONPATH={copy}", PYTHON)


def jrdctl_as(user: str) -> list[str]:
    """`jrdctl` run by `user` (see python_as)."""
    python = python_as(user)
    if python[-1] == PYTHON and "env" not in python:
        return [*python[:-1], JRDCTL]
    return [*python, "-c", "import sys; sys.argv[0] = 'jrdctl'; from jrd.control.cli import main; sys.exit(main())"]


class HandshakeLoad:
    """Threads that GET /api on a fresh connection each time (a new TLS handshake) until stopped: every
    failure is kept, and the serial of each certificate that answered a 200."""

    def __init__(self, address: str, port: int, cafile: Path, host: str | None = None, threads: int = 2):
        self.address, self.port, self.cafile, self.host = address, port, cafile, host
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.serials: set[int] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    @classmethod
    def to(cls, j: "Jrd", threads: int = 2) -> "HandshakeLoad":
        """Load on a jrd by loopback, trusting its CA."""
        return cls("127.0.0.1", j.port, j.ca, host=f"localhost:{j.port}", threads=threads)

    def __enter__(self) -> "HandshakeLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        from cryptography import x509

        ctx = ssl.create_default_context(cafile=str(self.cafile))
        headers = {"Connection": "close", **({"Host": self.host} if self.host else {})}
        while not self.stop_event.is_set():
            conn = http.client.HTTPSConnection(self.address, self.port, timeout=10, context=ctx)
            try:
                conn.connect()
                serial = x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True)).serial_number
                conn.request("GET", "/api", headers=headers)
                resp = conn.getresponse()
                resp.read()
                with self._lock:
                    if resp.status == 200:
                        self.ok += 1
                        self.serials.add(serial)
                    else:
                        self.failures.append(f"HTTP {resp.status}")
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kernel_pids(root: int) -> list[int]:
    """Kernel processes below `root`."""
    out = []
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"ipykernel" in f.read():
                    out.append(pid)
        except FileNotFoundError:
            pass
    return out


class Jrd:
    """One jrd under test: its dirs, config, process and HTTPS helpers."""

    def __init__(self, base: Path, extra_config: str = "", user: str | None = None):
        self.base = base
        self.port = free_port()
        self.jupyter_port = free_port()
        self.metrics_port = free_port()
        self.user = user or ensure_test_user()
        self.allow_root = self.user == "root"
        if not venv_usable_by(self.user):
            sys.stderr.write(
                f"\n*** WARNING: the venv at {BIN.parent} is not readable by {self.user!r}; "
                "Jupyter runs as root in these tests. Put the checkout under a world-readable "
                "directory to test the unprivileged account. ***\n"
            )
            self.user, self.allow_root = "root", True
        self.notebooks = base / "notebooks"
        self.config_path = base / "jrd.toml"
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.write_config(extra_config)

    def config_text(self, extra: str = "", **overrides: str) -> str:
        sections = {
            "jupyter": f'user = "{self.user}"\nallow_root = {str(self.allow_root).lower()}\n'
            f'port = {self.jupyter_port}\n'
            f'root_dir = "{self.notebooks}"\nrestart_policy = "immediate"\n',
            "nginx": f'listen = ["127.0.0.1"]\nport = {self.port}\n',
            "tls": 'names = ["jrd.test"]\nip_addresses = ["127.0.0.2"]\n',
            "metrics": f'listen = "127.0.0.1:{self.metrics_port}"\n',
            "paths": f'state_dir = "{self.base}/state"\nruntime_dir = "{self.base}/run"\nlog_dir = "{self.base}/log"\n',
        }
        for name, body in overrides.items():
            sections[name] = sections.get(name, "") + body
        if "cache_dir" not in sections["paths"] + extra:
            sections["paths"] += f'cache_dir = "{shared_cache_dir()}"\n'
        text = "".join(f"[{name}]\n{body}\n" for name, body in sections.items())
        return text + textwrap.dedent(extra)

    def write_config(self, extra: str = "", **overrides: str) -> None:
        self.config_path.write_text(self.config_text(extra, **overrides))

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def ca(self) -> Path:
        return self.state / "tls" / "ca.pem"

    def jrd(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([JRD, *args, "--config", str(self.config_path)], input=input,
                              capture_output=True, text=True, timeout=timeout)

    def jrdctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([JRDCTL, "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=timeout)

    def set_password(self, password: str = PASSWORD) -> None:
        res = self.jrd("passwd", "--stdin", input=password + "\n")
        assert res.returncode == 0, res.stderr

    def run_command(self) -> list[str]:
        return [JRD, "run", "--config", str(self.config_path)]

    def start(self, timeout: float = 120) -> "Jrd":
        if not (self.state / "password").exists():
            self.set_password()
        log = open(self.base / "jrd.out", "w")
        self.proc = subprocess.Popen(self.run_command(), stdout=log, stderr=subprocess.STDOUT, text=True)

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"jrd exited with {self.proc.returncode}:\n{self.read_output()}")
            return "is serving" in self.read_output()

        wait_for(serving, timeout, "jrd to report serving")
        return self

    def read_output(self) -> str:
        return (self.base / "jrd.out").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in descendants(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"jrd did not stop within {timeout} s")

    # --- HTTPS through nginx -------------------------------------------------
    def url(self, path: str = "/") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        s.verify = str(self.ca)
        # Connect to 127.0.0.1 but present a configured name, as a browser would.
        s.headers["Host"] = f"localhost:{self.port}"
        return s

    def login(self, password: str = PASSWORD) -> requests.Session:
        s = self.session()
        # The form on a connection of its own: a keep-alive connection that an nginx worker retiring
        # after a reload closes would fail the POST (a browser retries it; requests does not).
        s.get(self.url("/login"), headers={"Connection": "close"})
        xsrf = s.cookies.get("_xsrf")
        r = s.post(self.url("/login"), data={"password": password, "_xsrf": xsrf}, allow_redirects=False)
        assert r.status_code == 302, f"login failed: HTTP {r.status_code}"
        s.headers["X-XSRFToken"] = s.cookies.get("_xsrf")
        return s

    def supervisor_pid(self, program: str) -> int:
        out = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c",
             str(self.run_dir / "supervisor" / "supervisord.conf"),
             "pid", program], capture_output=True, text=True, timeout=30)
        return int(out.stdout.strip() or 0)

    def serving(self) -> bool:
        try:
            return self.session().get(self.url("/api"), timeout=5).status_code == 200
        except requests.RequestException:
            return False


def short_tmp() -> Path:
    # Unix socket paths must stay under 108 bytes, so keep the base short,
    # and world-traversable so that the Jupyter account can reach its files.
    base = Path(tempfile.mkdtemp(prefix="jrd-", dir="/tmp"))
    base.chmod(0o755)
    return base


@pytest.fixture
def tmp_base() -> Iterator[Path]:
    base = short_tmp()
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_jrd() -> Iterator[Callable[..., Jrd]]:
    made: list[Jrd] = []

    def make(extra_config: str = "", **kw: str) -> Jrd:
        j = Jrd(short_tmp(), extra_config, **kw)
        made.append(j)
        return j

    yield make
    for j in made:
        try:
            j.stop(signal.SIGTERM, timeout=60)
        finally:
            shutil.rmtree(j.base, ignore_errors=True)


@pytest.fixture(scope="module")
def running_jrd() -> Iterator[Jrd]:
    """One jrd shared by a test module (starting one takes a few seconds)."""
    j = Jrd(short_tmp())
    j.start()
    yield j
    j.stop(signal.SIGTERM, timeout=60)
    shutil.rmtree(j.base, ignore_errors=True)


def tls_peer_cert(host: str, port: int, ca: Path, server_name: str = "localhost") -> dict:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert()


def tls_peer_der(host: str, port: int, server_name: str = "localhost") -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True)


# --- kernels over websockets through nginx -------------------------------------------------


def execute(ws: websocket.WebSocket, code: str, timeout: float = 60) -> str:
    """Run `code` in the kernel behind `ws`; its execute_result as text."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(0.1, deadline - time.monotonic()))
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_result":
            return msg["content"]["data"]["text/plain"]
        if msg["msg_type"] == "error":
            raise AssertionError(f"kernel error: {msg['content']['ename']}")
    raise AssertionError("no execute_result before the deadline")


def open_kernel_ws(j: "Jrd", s: requests.Session, kernel_id: str) -> websocket.WebSocket:
    """A kernel's websocket through nginx, authenticated by the login session's cookies."""
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    return websocket.create_connection(
        f"wss://127.0.0.1:{j.port}/api/kernels/{kernel_id}/channels",
        sslopt={"ca_certs": str(j.ca)}, cookie=cookie, host=f"localhost:{j.port}",
        origin=f"https://localhost:{j.port}", header=[f"X-XSRFToken: {s.cookies.get('_xsrf')}"], timeout=60,
    )


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text exposition as {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out

"""jrd as a systemd service, with the unit checked offline and run under a REAL systemd.

The real systemd is booted as PID 1 of a new pid and mount namespace,
chrooted into a debootstrapped Debian root (cached between runs, with a
throwaway overlay on top for each run).  The checkout and its venv are bound
into that root read-only under /mnt, wherever they are on the host (root's
0700 home, /tmp), and scripts/install-system copies them into /opt/jrd as a
user's `install-system --venv` would.  The network namespace is the host's, so
nginx's loopback port answers the test directly.
"""

from __future__ import annotations

import ast
import base64
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
import websocket

from conftest import (BIN, PASSWORD, REPO, execute, free_port, open_kernel_ws, parse_exposition, pids_alive,
                      wait_for)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

UNIT = REPO / "systemd" / "jrd.service"
INSTALL = REPO / "scripts" / "install-system"
VENV = BIN.parent
INSTALLED_VENV = "/opt/jrd/venv"
# Where the booted root sees this checkout and its venv: the same for every host path.
CHECKOUT_IN_ROOT = "/mnt/jrd-checkout"
VENV_IN_ROOT = "/mnt/jrd-venv"
# The highest `systemd-analyze security` exposure the unit may have (9.6 is an
# unhardened root service; the README's hardening part explains the rest).
MAX_EXPOSURE = 4.5

# The Debian root that systemd boots, and how it is prepared.  Changing any
# of these makes a new cache entry.
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "nginx-light")
# Debian's nginx.service would start with the root; consoles and gettys have
# no terminal here; timers would run apt.  None of them belongs in the test.
DISABLE = ("nginx.service",)
MASK = ("getty.target", "console-getty.service", "timers.target", "systemd-logind.service")
CACHE = Path("/var/cache/jrd-test-root")
PR_SET_PDEATHSIG = 1

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# PID 1 of the namespace, chrooted into an overlay of the cached root.  /proc/sys
# and /sys are read-only and /dev is private (only the usual pseudo-devices),
# so that nothing systemd starts in there can touch the host's kernel settings
# or devices.  `container=` makes systemd skip what containers skip.
BOOT_SCRIPT = r"""
set -eu
lower=$1 work=$2; shift 2  # then pairs: a host path, where the root sees it
root=$work/root
mkdir -p "$work/upper" "$work/overlay-work" "$root"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/overlay-work" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount --bind /sys "$root/sys"
mount -o remount,bind,ro "$root/sys"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid dev "$root/dev"
# New device nodes, not bind mounts of the host's: systemd chowns and chmods
# /dev/console (and a bound node would be the host's own /dev/null).
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 666 "$root/dev/zero" c 1 5
mknod -m 666 "$root/dev/full" c 1 7
mknod -m 666 "$root/dev/random" c 1 8
mknod -m 666 "$root/dev/urandom" c 1 9
mknod -m 666 "$root/dev/tty" c 5 0
mknod -m 600 "$root/dev/console" c 1 3
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
mount -t tmpfs -o mode=755,nosuid,nodev run "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$root/tmp"
# install-system's copy of the venv (some 500 MB) in memory: quicker to write than the overlay on
# disk, and gone with the namespace instead of deleted file by file.
mkdir -p "$root/opt/jrd"
mount -t tmpfs -o mode=755,size=2g opt-jrd "$root/opt/jrd"
while [ $# -ge 2 ]; do
  mkdir -p "$root$2"
  mount --bind "$1" "$root$2"
  mount -o remount,bind,ro "$root$2"
  shift 2
done
exec env -i container=jrd-test PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/sbin/chroot "$root" /lib/systemd/systemd --system
"""


# --- offline checks of the unit -------------------------------------------------------


def unit_for_this_checkout(tmp_path: Path) -> Path:
    """The unit with /opt/jrd/venv pointing at this checkout's venv, so that its commands exist (quoted as
    systemd reads them: a checkout's path may have a blank in it)."""
    text = UNIT.read_text()
    assert INSTALLED_VENV in text
    copy = tmp_path / "jrd.service"
    venv = str(VENV).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    unit, commands = re.subn(rf"^(Exec\w+=){re.escape(INSTALLED_VENV)}/bin/(\S+)",
                             lambda m: f'{m[1]}"{venv}/bin/{m[2]}"', text, flags=re.M)
    assert commands == 2, unit  # ExecStart and ExecReload
    copy.write_text(unit)
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify", str(unit_for_this_checkout(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "jrd.service" not in res.stderr, res.stderr


def test_unit_hardening_is_kept(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                          str(unit_for_this_checkout(tmp_path))], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for jrd\.service: ([0-9.]+)", res.stdout + res.stderr)
    assert match, res.stdout + res.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, res.stdout
    # Every directive was understood (an unknown system call group is only a warning).
    res = subprocess.run(["systemd-analyze", "verify", str(unit_for_this_checkout(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert "ignoring" not in res.stderr, res.stderr


def test_install_script_documents_its_usage() -> None:
    res = subprocess.run(["sh", "-n", str(INSTALL)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0 and "--venv DIR" in res.stdout, res.stdout + res.stderr


# --- a real systemd ---------------------------------------------------------------------


def cached_debian_root() -> Path:
    """A debootstrapped Debian root prepared for booting, built once and kept in CACHE."""
    recipe = json.dumps([SUITE, MIRROR, INCLUDE, DISABLE, MASK])
    root = CACHE / f"{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it right now
        if root.is_dir():
            return root
        building = Path(tempfile.mkdtemp(prefix=f"{root.name}.building-", dir=CACHE))
        try:
            res = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(building), MIRROR],
                capture_output=True, text=True, timeout=900)
            if res.returncode != 0:
                log = building / "debootstrap" / "debootstrap.log"
                detail = log.read_text(errors="replace")[-3000:] if log.exists() else res.stderr[-3000:]
                raise AssertionError(f"debootstrap of {SUITE} failed ({res.returncode}):\n{detail}")
            for args in (("disable", *DISABLE), ("mask", *MASK)):
                subprocess.run(["systemctl", f"--root={building}", "--quiet", *args], check=True, timeout=60)
            building.rename(root)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return root


def namespace_pid(unshare_pid: int) -> int:
    """The PID (in our namespace) of the child that `unshare --fork` started: the booted systemd."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    return int(children[0]) if children else 0


@dataclass(frozen=True)
class Proc:
    pid: int  # as the host sees it
    ns_pid: int  # as systemd in the namespace sees it
    uid: int
    cmdline: str


@dataclass
class Booted:
    """A systemd booted in its own namespaces, and how to act inside them."""

    pid: int
    unshare: subprocess.Popen[bytes]
    work: Path

    @property
    def root(self) -> Path:
        """Its root file system, reachable from the host."""
        return Path(f"/proc/{self.pid}/root")

    def run(self, *argv: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-a", "-r", "-w", *argv], input=input,
                              capture_output=True, text=True, timeout=timeout, env=ENV)

    def systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", unit, f"--property={prop}", "--value").stdout.strip()

    def journal(self, unit: str = "jrd.service", lines: int = 60) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, "-n", str(lines)).stdout

    def processes(self) -> list[Proc]:
        """Every process in the namespace, systemd included."""
        ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                    continue
                status = Path(f"/proc/{entry}/status").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields["State"].split()[0] == "Z" or not cmdline:
                continue
            out.append(Proc(int(entry), int(fields["NSpid"].split()[-1]), int(fields["Uid"].split()[1]),
                            cmdline.strip()))
        return out

    def host_pid(self, ns_pid: int) -> int:
        """The PID by which the host knows the namespace's process `ns_pid`."""
        matches = [p.pid for p in self.processes() if p.ns_pid == ns_pid]
        assert matches, f"no process {ns_pid} in the namespace"
        return matches[0]

    def diagnostics(self) -> str:
        logs = "".join(f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}"
                       for p in sorted((self.root / "var/log/jrd").glob("*.log")))
        return f"\n--- journalctl -u jrd ---\n{self.journal()}{logs}"


def killed_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def boot(lower: Path, binds: list[tuple[str, str]]) -> Booted:
    work = Path(tempfile.mkdtemp(prefix="jrd-systemd-", dir="/var/tmp"))
    log = open(work / "boot.log", "wb")
    # If pytest dies, unshare is killed (it ignores SIGTERM), and --kill-child takes the namespace with it.
    unshare = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--propagation", "private",
         "sh", "-c", BOOT_SCRIPT, "boot", str(lower), str(work), *(p for pair in binds for p in pair)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=killed_with_parent)
    log.close()

    def systemd_pid() -> int:
        if unshare.poll() is not None:
            raise AssertionError(f"the namespace exited ({unshare.returncode}): {(work / 'boot.log').read_text()}")
        pid = namespace_pid(unshare.pid)
        return pid if pid and Path(f"/proc/{pid}/comm").read_text().strip() == "systemd" else 0

    booted = Booted(0, unshare, work)
    try:
        booted.pid = int(wait_for(systemd_pid, 30, "systemd to start in the namespace"))
        wait_for(lambda: booted.systemctl("is-system-running").stdout.strip() in ("running", "degraded"),
                 60, "the booted systemd to finish starting up", interval=0.2)
    except BaseException:
        shutdown(booted)
        raise
    return booted


def shutdown(booted: Booted) -> None:
    """Power the booted systemd off by its PID; kill it (and with it the namespace) if it lingers."""
    if booted.pid and booted.unshare.poll() is None:
        try:
            os.kill(booted.pid, signal.SIGRTMIN + 4)  # systemd's "poweroff"
        except ProcessLookupError:
            pass
    try:
        booted.unshare.wait(30)
    except subprocess.TimeoutExpired:
        if booted.pid:
            try:
                os.kill(booted.pid, signal.SIGKILL)  # PID 1 dying takes the whole namespace with it
            except ProcessLookupError:
                pass
        booted.unshare.kill()
        booted.unshare.wait(30)
    # The mounts lived in the namespace's private mount table and are gone with it.
    mounts = Path("/proc/self/mountinfo").read_text()
    if str(booted.work) not in mounts:
        shutil.rmtree(booted.work, ignore_errors=True)


def require_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("booting a systemd in a namespace needs root")
    missing = [tool for tool in ("debootstrap", "unshare", "nsenter") if shutil.which(tool) is None]
    assert not missing, f"missing {', '.join(missing)}: run `scripts/install-system-deps test`"


@dataclass
class Service:
    booted: Booted
    port: int
    jupyter_port: int
    metrics_port: int

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = str(self.ca)
        s.headers["Host"] = f"localhost:{self.port}"
        return s

    @property
    def ca(self) -> Path:
        return self.booted.root / "var/lib/jrd/tls/ca.pem"

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def serving(self) -> bool:
        try:
            return self.session().get(self.url("/api"), timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def login(self) -> requests.Session:
        s = self.session()
        s.get(self.url("/login"), headers={"Connection": "close"})
        r = s.post(self.url("/login"), data={"password": PASSWORD, "_xsrf": s.cookies.get("_xsrf")},
                   allow_redirects=False)
        assert r.status_code == 302, f"login failed: HTTP {r.status_code}"
        s.headers["X-XSRFToken"] = s.cookies.get("_xsrf")
        return s

    def main_pid(self) -> int:
        """jrd's PID as the host knows it."""
        return self.booted.host_pid(int(self.booted.show("jrd", "MainPID")))

    def programs(self) -> list[Proc]:
        """Every process in the namespace but the booted system's own: jrd and what it started."""
        system = ("/lib/systemd/", "/usr/lib/systemd/", "/usr/bin/dbus-daemon")
        return [p for p in self.booted.processes() if not p.cmdline.startswith(system)]


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    """jrd installed by scripts/install-system into a booted Debian, configured, not yet started."""
    require_host()
    host_devices = host_device_modes()
    booted = boot(cached_debian_root(), [(str(REPO), CHECKOUT_IN_ROOT), (str(VENV.resolve()), VENV_IN_ROOT)])
    try:
        res = booted.run(f"{CHECKOUT_IN_ROOT}/scripts/install-system", "--venv", VENV_IN_ROOT, timeout=180)
        assert res.returncode == 0, f"install-system failed:\n{res.stdout}\n{res.stderr}"
        installed = tomllib.loads((booted.root / "etc/jrd/jrd.toml").read_text())
        assert installed == {s: ({"user": "jupyter"} if s == "jupyter" else {}) for s in installed}, installed
        svc = Service(booted, free_port(), free_port(), free_port())
        # Loopback-only random ports: the network namespace is the host's.
        (booted.root / "etc/jrd/jrd.toml").write_text(
            f'[jupyter]\nuser = "jupyter"\nport = {svc.jupyter_port}\nrestart_policy = "immediate"\n'
            f'[nginx]\nlisten = ["127.0.0.1"]\nport = {svc.port}\n'
            f'[tls]\nnames = ["jrd.test"]\n'
            f'[metrics]\nlisten = "127.0.0.1:{svc.metrics_port}"\n')
        res = booted.run("jrd", "passwd", "--stdin", input=PASSWORD + "\n")
        assert res.returncode == 0, res.stderr
        yield svc
    finally:
        shutdown(booted)
        # The booted systemd must not have touched the host's devices (it chowns /dev/console).
        assert host_device_modes() == host_devices, "the booted systemd changed the host's /dev nodes"


def host_device_modes() -> dict[str, tuple[int, int, int]]:
    out = {}
    for name in ("null", "zero", "full", "random", "urandom", "tty", "console"):
        try:
            st = os.stat(f"/dev/{name}")
        except FileNotFoundError:
            continue
        out[name] = (st.st_mode, st.st_uid, st.st_gid)
    return out


def test_install_system_puts_everything_in_place(service: Service) -> None:
    root = service.booted.root
    assert (root / "etc/systemd/system/jrd.service").read_text() == UNIT.read_text()
    # A copy that stands alone: its own paths in its scripts, jrd's files in it, the user site visible.
    venv = root / "opt/jrd/venv"
    assert venv.is_dir() and not venv.is_symlink()
    assert (venv / "bin/jrd").read_text().startswith(f"#!{INSTALLED_VENV}/bin/python\n")
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    res = service.booted.run("runuser", "-u", "jupyter", "--", f"{INSTALLED_VENV}/bin/python", "-c",
                             "import jrd, jupyterlab; print(jrd.__file__)")
    assert res.stdout.startswith(f"{INSTALLED_VENV}/lib/"), res.stdout + res.stderr
    assert (root / "opt/jrd/README.md").exists()
    assert service.booted.show("jrd.service", "LoadState") == "loaded"
    assert service.booted.run("id", "-u", "jupyter").returncode == 0


def test_start_is_active_only_once_serving(service: Service) -> None:
    booted = service.booted
    res = booted.systemctl("start", "jrd", timeout=200)
    assert res.returncode == 0, res.stderr + booted.diagnostics()
    # Type=notify: `systemctl start` returned after READY=1, which jrd sends once serving.
    assert booted.systemctl("is-active", "jrd").stdout.strip() == "active"
    assert service.serving(), booted.diagnostics()
    assert booted.show("jrd", "StatusText") == f"serving https://jrd.test:{service.port}/lab"
    main = booted.host_pid(int(booted.show("jrd", "MainPID")))
    assert f"{INSTALLED_VENV}/bin/jrd run" in Path(f"/proc/{main}/cmdline").read_text().replace("\0", " ")
    # The main loop answers the watchdog.
    wait_for(lambda: booted.show("jrd", "WatchdogTimestampMonotonic") not in ("", "0"), 30, "a WATCHDOG=1 ping")


def test_https_login_through_nginx_from_the_host(service: Service) -> None:
    s = service.session()
    s.get(service.url("/login"))
    r = s.post(service.url("/login"), data={"password": PASSWORD, "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False)
    assert r.status_code == 302, f"login failed: HTTP {r.status_code}"
    assert "JupyterLab" in s.get(service.url("/lab")).text
    jupyter_uid = int(service.booted.run("id", "-u", "jupyter").stdout)
    labs = [p.uid for p in service.programs() if "jupyter-lab" in p.cmdline or "jupyter lab" in p.cmdline]
    assert labs and set(labs) == {jupyter_uid}, service.programs()


def tiny_wheel() -> tuple[str, bytes]:
    """A wheel of one pure-Python module, made here: no network, no build tools."""
    name = "jrd_tiny-1.0-py3-none-any.whl"
    files = {
        "jrd_tiny.py": b"ANSWER = 42\n",
        "jrd_tiny-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: jrd-tiny\nVersion: 1.0\n",
        "jrd_tiny-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: jrd-tests\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files["jrd_tiny-1.0.dist-info/RECORD"] = ("\n".join([*record, "jrd_tiny-1.0.dist-info/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)
    return name, buf.getvalue()


# Run in a notebook's kernel under the hardened unit; the last line is the cell's result.
KERNEL_CHECKS = r"""
import ctypes, os, subprocess, sys
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
pip = subprocess.run([sys.executable, "-m", "pip", "install", "--user", "--no-index", "--no-cache-dir",
                      "--disable-pip-version-check", WHEEL], capture_output=True, text=True)
imported = subprocess.run([sys.executable, "-c", "import jrd_tiny; print(jrd_tiny.ANSWER, jrd_tiny.__file__)"],
                          capture_output=True, text=True)
libc = ctypes.CDLL(None, use_errno=True)
def in_child(call):
    pid = os.fork()
    if pid == 0:
        os._exit(0 if call() >= 0 else ctypes.get_errno())
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
{
    "cwd": os.getcwd(), "user": os.getuid(),
    "seccomp": status["Seccomp"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    # ProtectProc=invisible: no other account's process in /proc
    "others": [p for p in os.listdir("/proc") if p.isdigit() and os.stat(f"/proc/{p}").st_uid != os.getuid()],
    "pip": (pip.returncode, pip.stdout[-500:] + pip.stderr[-1500:]),
    "imported": imported.stdout.strip() + imported.stderr[-500:],
    # @debug is allowed (py-spy, gdb, strace): PTRACE_TRACEME succeeds
    "ptrace": in_child(lambda: libc.ptrace(0, 0, None, None)),
    # RestrictNamespaces=: no user namespace (CLONE_NEWUSER), EPERM
    "userns": in_child(lambda: libc.unshare(0x10000000)),
    # ProtectClock=: even reading the clock's state with adjtimex (@clock), allowed to anyone otherwise
    "adjtimex": in_child(lambda: libc.adjtimex(ctypes.create_string_buffer(512))),
}
"""


def test_notebooks_terminals_and_pip_work_under_the_hardened_unit(service: Service) -> None:
    """A kernel runs cells, a terminal runs a shell command, `pip install --user` of a local wheel works."""
    booted = service.booted
    s = service.login()
    name, wheel = tiny_wheel()
    r = s.put(service.url(f"/api/contents/{name}"),
              json={"type": "file", "format": "base64", "content": base64.b64encode(wheel).decode()})
    assert r.status_code in (200, 201), r.text
    r = s.post(service.url("/api/kernels"), json={})
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    ws = open_kernel_ws(service, s, kernel)
    try:
        result = ast.literal_eval(execute(ws, f"WHEEL = {name!r}\n" + KERNEL_CHECKS, timeout=180))
        # jrd (group root) still sees the Jupyter account's processes: Jupyter and its kernel.
        metrics = parse_exposition(requests.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).text)
        assert metrics['jrd_program_processes{program="jupyter"}'] >= 2, metrics
    finally:
        ws.close()
        s.delete(service.url(f"/api/kernels/{kernel}"))
    jupyter = booted.run("getent", "passwd", "jupyter").stdout.split(":")
    assert result["user"] == int(jupyter[2]) and result["cwd"] == jupyter[5], result
    # The unit's filter and no-new-privileges reach the kernels.
    assert result["seccomp"] == "2" and result["no_new_privs"] == "1", result
    assert result["others"] == [], result
    assert result["pip"][0] == 0, result["pip"][1] + booted.diagnostics()
    assert result["imported"].startswith(f"42 {jupyter[5]}/.local/lib/python3"), result
    assert result["ptrace"] == 0, result
    assert result["userns"] == errno.EPERM and result["adjtimex"] == errno.EPERM, result

    term = s.post(service.url("/api/terminals"))
    assert term.status_code == 200, term.text
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    tws = websocket.create_connection(
        f"wss://127.0.0.1:{service.port}/terminals/websocket/{term.json()['name']}",
        sslopt={"ca_certs": str(service.ca)}, cookie=cookie, host=f"localhost:{service.port}",
        origin=f"https://localhost:{service.port}", timeout=60)
    try:
        tws.send(json.dumps(["stdin", 'echo "jrd-$((6*7))-$(id -un)"\r']))
        seen, deadline = "", time.monotonic() + 60
        while "jrd-42-jupyter" not in seen and time.monotonic() < deadline:
            msg = json.loads(tws.recv())
            if msg[0] == "stdout":
                seen += msg[1]
        assert "jrd-42-jupyter" in seen, seen
    finally:
        tws.close()
        s.delete(service.url(f"/api/terminals/{term.json()['name']}"))


def test_reload_applies_and_a_broken_config_is_refused(service: Service) -> None:
    booted = service.booted
    config = booted.root / "etc/jrd/jrd.toml"
    good = config.read_text()
    res = booted.systemctl("reload", "jrd")
    assert res.returncode == 0, res.stderr + booted.diagnostics()
    # ExecReload is `jrdctl reload`: synchronous, through the control socket.
    wait_for(lambda: "reload (control) applied" in booted.journal(), 30, "jrd to log the reload")

    config.write_text(good + "[nginx\n")
    try:
        res = booted.systemctl("reload", "jrd")
        assert res.returncode != 0
        assert "not valid TOML" in res.stdout + res.stderr + booted.journal()
        assert booted.systemctl("is-active", "jrd").stdout.strip() == "active"
        assert service.serving()
    finally:
        config.write_text(good)


def test_sigkill_of_jrd_restarts_it_without_leftovers(service: Service) -> None:
    booted = service.booted
    old_main = booted.host_pid(int(booted.show("jrd", "MainPID")))
    old = {p.pid for p in service.programs()}
    assert old_main in old
    os.kill(old_main, signal.SIGKILL)
    # Restart=on-failure after RestartSec; the new jrd must find the ports free.
    wait_for(lambda: booted.show("jrd", "NRestarts") == "1" and booted.show("jrd", "ActiveState") == "active",
             120, "systemd to restart jrd", interval=0.2)
    assert not pids_alive(sorted(old)), [p for p in service.programs() if p.pid in old]
    wait_for(service.serving, 30, "HTTPS to answer again")


def test_a_stopped_jrd_is_restarted_by_the_watchdog(service: Service) -> None:
    """SIGSTOP of jrd's main loop: no WATCHDOG=1 arrives, systemd aborts and restarts it, and it serves again."""
    booted = service.booted
    dropin = booted.root / "etc/systemd/system/jrd.service.d/test-watchdog.conf"
    dropin.parent.mkdir(exist_ok=True)
    # A short watchdog and restart delay keep the test short (the unit's are 5 minutes and 5 s);
    # no core file of the abort.
    dropin.write_text("[Service]\nWatchdogSec=8\nRestartSec=1\nLimitCORE=0\n")
    try:
        booted.systemctl("daemon-reload")
        res = booted.systemctl("restart", "jrd", timeout=200)
        assert res.returncode == 0, res.stderr + booted.diagnostics()
        assert booted.show("jrd", "WatchdogUSec") == "8s"
        restarts = int(booted.show("jrd", "NRestarts"))
        first_ping = booted.show("jrd", "WatchdogTimestampMonotonic")
        wait_for(lambda: booted.show("jrd", "WatchdogTimestampMonotonic") != first_ping, 15, "a WATCHDOG=1 ping")
        stopped = service.main_pid()
        os.kill(stopped, signal.SIGSTOP)
        wait_for(lambda: int(booted.show("jrd", "NRestarts")) == restarts + 1
                 and booted.show("jrd", "ActiveState") == "active", 90, "the watchdog to restart jrd", interval=0.2)
        assert "Watchdog timeout" in booted.run("journalctl", "--no-pager", "-u", "jrd", "-n", "200").stdout
        assert service.main_pid() != stopped and not pids_alive([stopped])
        wait_for(service.serving, 30, "HTTPS to answer again")
    finally:
        dropin.unlink()
        booted.systemctl("daemon-reload")


def test_stop_leaves_no_process_behind(service: Service) -> None:
    booted = service.booted
    s = service.session()
    s.get(service.url("/login"))
    s.post(service.url("/login"), data={"password": PASSWORD, "_xsrf": s.cookies.get("_xsrf")}, allow_redirects=False)
    r = s.post(service.url("/api/kernels"), headers={"X-XSRFToken": s.cookies.get("_xsrf")}, json={})
    assert r.status_code == 201, r.text
    wait_for(lambda: any("ipykernel" in p.cmdline for p in service.programs()), 30, "the kernel process")

    res = booted.systemctl("stop", "jrd", timeout=120)
    assert res.returncode == 0, res.stderr
    assert booted.systemctl("is-active", "jrd").stdout.strip() == "inactive"
    # jrd stopped everything itself and exited 0: nothing was left for systemd to kill.
    assert booted.show("jrd", "Result") == "success", booted.diagnostics()
    assert booted.show("jrd", "ExecMainStatus") == "0"
    assert service.programs() == []
    assert not (booted.root / "run/jrd").exists()
    assert not service.serving()


def test_idle_stop_powers_the_machine_off_after_stopping_jupyter(service: Service) -> None:
    """The default `systemctl poweroff` really powers the (booted) machine off, Jupyter stopped cleanly first.

    The last test of this module: it ends the booted systemd.
    """
    booted = service.booted
    conf = booted.root / "etc/jrd/jrd.toml"
    conf.write_text(conf.read_text() + "[idle]\nshutdown_after_minutes = 0.5\nwarn_minutes = 0.2\n")
    res = booted.systemctl("start", "jrd", timeout=180)
    assert res.returncode == 0, res.stderr + booted.diagnostics()
    wait_for(service.serving, 60, "jrd to serve")
    upper = booted.work / "upper"
    try:
        wait_for(lambda: booted.unshare.poll() is not None, 180, "the idle machine to power itself off",
                 interval=0.5)
    except AssertionError:
        raise AssertionError(f"still up: {booted.diagnostics()}") from None
    # The booted root's changes outlive it in the overlay's upper dir: jrd's programs' logs say what happened.
    supervisord_log = (upper / "var/log/jrd/supervisord.log").read_text(errors="replace")
    supervisord_log = supervisord_log[supervisord_log.rfind("supervisord started with pid"):]  # this run's
    jupyter_stopped = supervisord_log.find("stopped: jupyter (exit status 0)")
    assert jupyter_stopped >= 0, supervisord_log[-2000:]
    # Jupyter first, on its own: a plain shutdown of jrd stops nginx first (supervisord's reverse priority).
    assert jupyter_stopped < supervisord_log.find("stopped: nginx"), supervisord_log[-2000:]
    jupyter_log = (upper / "var/log/jrd/jupyter.log").read_text(errors="replace")
    assert "Shutting down" in jupyter_log, jupyter_log[-2000:]

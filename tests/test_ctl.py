"""jrdctl against a real running jrd (supervisord, nginx, JupyterLab)."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import ssl
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import JRDCTL, PASSWORD, Jrd, ctrl_c_stops_it, jrdctl_as, machine_lock, wait_for

pytestmark = pytest.mark.integration

OUTSIDER = "jrdctl-outsider"


def ctl_json(j: Jrd, *args: str) -> dict:
    res = j.jrdctl(*args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def program(j: Jrd, name: str) -> dict:
    return ctl_json(j, "status")["programs"][name]


# --- status, version ----------------------------------------------------------------------


def test_status_table_and_json(running_jrd: Jrd) -> None:
    res = running_jrd.jrdctl("status")
    assert res.returncode == 0, res.stderr
    assert "PROGRAM" in res.stdout and "RESTARTS" in res.stdout
    for line in ("jupyter", "nginx"):
        assert any(l.startswith(line) and "RUNNING" in l for l in res.stdout.splitlines()), res.stdout
    assert f"https://jrd.test:{running_jrd.port}/lab" in res.stdout
    assert "days left" in res.stdout and "last reload" in res.stdout and "pending" in res.stdout
    st = ctl_json(running_jrd, "status")
    assert st["programs"]["jupyter"]["state"] == "RUNNING" and st["programs"]["jupyter"]["pid"] > 0
    assert st["certificates"]["leaf"]["days_left"] > 80


def test_version_table_and_json(running_jrd: Jrd) -> None:
    res = running_jrd.jrdctl("version")
    assert res.returncode == 0 and res.stdout.startswith("jrdctl ") and "(pid " in res.stdout
    assert ctl_json(running_jrd, "version")["daemon"]["running"] is True


# --- restart --------------------------------------------------------------------------------


def test_restart_jupyter_returns_only_when_serving(running_jrd: Jrd) -> None:
    before = program(running_jrd, "jupyter")
    res = running_jrd.jrdctl("restart", "jupyter", "--yes")
    # The very next request through nginx must succeed: no retry, no wait.
    assert running_jrd.session().get(running_jrd.url("/api"), timeout=5).status_code == 200
    assert res.returncode == 0, res.stderr
    assert "Jupyter answers through nginx again" in res.stdout
    after = program(running_jrd, "jupyter")
    assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"] + 1
    assert f"pid {before['pid']} -> {after['pid']}" in res.stdout

    report = ctl_json(running_jrd, "restart", "jupyter", "--yes")
    assert running_jrd.serving()
    assert report["serving"] is True and report["seconds"] > 0
    p = report["programs"]["jupyter"]
    assert p["pid"] != p["pid_before"] and p["restarts"] == after["restarts"] + 1


def test_restart_nginx_drops_no_request_under_load(running_jrd: Jrd) -> None:
    ctx = ssl.create_default_context(cafile=str(running_jrd.ca))
    stop = threading.Event()
    results = {"ok": 0, "failed": []}

    def hammer() -> None:
        while not stop.is_set():
            try:  # a fresh TCP+TLS connection for every request
                with socket.create_connection(("127.0.0.1", running_jrd.port), timeout=10) as raw:
                    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(f"GET /api HTTP/1.1\r\nHost: localhost:{running_jrd.port}\r\n"
                                    "Connection: close\r\n\r\n".encode())
                        data = b""
                        while chunk := tls.recv(65536):
                            data += chunk
                if data.startswith(b"HTTP/1.1 200"):
                    results["ok"] += 1
                else:
                    results["failed"].append(data[:80])
            except OSError as exc:
                results["failed"].append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: results["ok"] > 20, 30, "load to be flowing")
        before = program(running_jrd, "nginx")
        for args in (("restart", "nginx"), ("restart", "nginx", "--json")):
            res = running_jrd.jrdctl(*args)
            assert res.returncode == 0, res.stderr
        mark = results["ok"]
        wait_for(lambda: results["ok"] > mark + 20, 30, "load to flow after the restarts")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert results["failed"] == [], results["failed"][:5]
    after = program(running_jrd, "nginx")
    assert after["restarts"] == before["restarts"] + 2
    assert after["pid"] == before["pid"]  # graceful: HUP to the same master


def test_restart_jupyter_on_a_terminal_warns_about_running_kernels(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    kernel = s.post(running_jrd.url("/api/kernels"), json={"name": "python3"}).json()
    try:
        before = program(running_jrd, "jupyter")["pid"]
        out = run_on_terminal([JRDCTL, "--config", str(running_jrd.config_path), "restart", "jupyter"], answer=b"n\n")
        assert "1 kernel(s) running" in out and "Nothing was restarted" in out, out
        assert program(running_jrd, "jupyter")["pid"] == before
    finally:
        s.delete(running_jrd.url(f"/api/kernels/{kernel['id']}"))


def run_on_terminal(argv: list[str], answer: bytes, timeout: float = 60) -> str:
    """Run `argv` with a pseudo-terminal as stdin/stdout/stderr; type `answer` at the prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    answered = False
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break  # the child closed the terminal
        if not chunk:
            break
        out += chunk
        if not answered and b"[y/N]" in out:
            os.write(master, answer)
            answered = True
    os.close(master)
    proc.wait(timeout)
    return out.decode(errors="replace")


# --- stop, start and exit codes ------------------------------------------------------------


def test_stopped_program_gives_exit_code_3_then_start_serves_again(running_jrd: Jrd) -> None:
    res = running_jrd.jrdctl("stop", "nginx")
    assert res.returncode == 0 and "nginx stopped" in res.stdout, res.stderr
    try:
        res = running_jrd.jrdctl("status")
        assert res.returncode == 3
        assert any(l.startswith("nginx") and "STOPPED" in l for l in res.stdout.splitlines())
        res = running_jrd.jrdctl("status", "--json")
        assert res.returncode == 3 and json.loads(res.stdout)["programs"]["nginx"]["state"] == "STOPPED"
        assert not running_jrd.serving()
    finally:
        res = running_jrd.jrdctl("start", "nginx", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["serving"] is True
    assert running_jrd.serving()
    assert running_jrd.jrdctl("status").returncode == 0


def test_stop_and_start_jupyter_table(running_jrd: Jrd) -> None:
    res = running_jrd.jrdctl("stop", "jupyter", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["programs"]["jupyter"]["state"] == "STOPPED"
    res = running_jrd.jrdctl("start", "jupyter")
    assert res.returncode == 0, res.stderr
    assert "jupyter started" in res.stdout and "answers through nginx again" in res.stdout
    assert running_jrd.serving()


def test_unknown_program_lists_the_valid_ones(running_jrd: Jrd) -> None:
    res = running_jrd.jrdctl("stop", "postgres")
    assert res.returncode == 2
    assert "valid names are: jupyter, nginx, all" in res.stderr and "Traceback" not in res.stderr


# --- reload, logs, passwd ----------------------------------------------------------------------


def test_reload_applied_and_refused(running_jrd: Jrd) -> None:
    res = running_jrd.jrdctl("reload")
    assert res.returncode == 0 and res.stdout.startswith("Reload applied"), res.stderr
    assert "actions" in ctl_json(running_jrd, "reload")
    good = running_jrd.config_path.read_text()
    running_jrd.config_path.write_text(good.replace(f"port = {running_jrd.port}\n", "port = 0\n"))
    try:
        res = running_jrd.jrdctl("reload")
        assert res.returncode == 1
        assert "[nginx] port = 0 is invalid" in res.stderr and "Traceback" not in res.stderr
        res = running_jrd.jrdctl("reload", "--json")
        assert res.returncode == 1 and json.loads(res.stdout)["ok"] is False
        st = running_jrd.jrdctl("status")
        assert "REFUSED" in st.stdout
    finally:
        running_jrd.config_path.write_text(good)
    assert running_jrd.jrdctl("reload").returncode == 0
    assert running_jrd.serving()


def test_logs_table_json_and_follow(running_jrd: Jrd) -> None:
    marker = f"/api/jrdctl-marker-{time.monotonic_ns()}"
    running_jrd.session().get(running_jrd.url(marker), timeout=10)
    res = running_jrd.jrdctl("logs", "nginx", "-n", "200")
    assert res.returncode == 0 and marker in res.stdout
    data = ctl_json(running_jrd, "logs", "jupyter", "-n", "5")
    assert data["program"] == "jupyter" and 0 < len(data["lines"]) <= 5

    follower = subprocess.Popen([JRDCTL, "--config", str(running_jrd.config_path), "logs", "nginx", "-f", "-n", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=ctrl_c_stops_it)
    seen: list[str] = []

    def read() -> None:
        for line in follower.stdout:
            seen.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        def follow_sees_marker() -> bool:
            running_jrd.session().get(running_jrd.url(marker + "-followed"), timeout=10)
            return any(marker + "-followed" in line for line in list(seen))

        wait_for(follow_sees_marker, 30, "logs -f to print a new nginx log line")
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    assert "Traceback" not in follower.stderr.read()


def test_passwd_changes_the_login_password(running_jrd: Jrd) -> None:
    new = "another long passphrase"
    res = subprocess.run([JRDCTL, "--config", str(running_jrd.config_path), "passwd", "--stdin"],
                         input=new + "\n", capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Password changed")
    try:
        wait_for(running_jrd.serving, 60, "Jupyter to serve after the password change")
        running_jrd.login(new)
        s = running_jrd.session()
        s.get(running_jrd.url("/login"))
        r = s.post(running_jrd.url("/login"), data={"password": PASSWORD, "_xsrf": s.cookies.get("_xsrf")},
                   allow_redirects=False)
        assert r.status_code != 302, "the old password still works"
    finally:
        res = subprocess.run([JRDCTL, "--config", str(running_jrd.config_path), "passwd", "--stdin", "--json"],
                             input=PASSWORD + "\n", capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "actions" in json.loads(res.stdout)
        wait_for(running_jrd.serving, 60, "Jupyter to serve after the password change")
    running_jrd.login(PASSWORD)


def test_passwd_too_short_is_refused_before_anything_changes(running_jrd: Jrd) -> None:
    res = subprocess.run([JRDCTL, "--config", str(running_jrd.config_path), "passwd", "--stdin"],
                         input="short\n", capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "too short" in res.stderr


# --- certificates ----------------------------------------------------------------------------


def test_cert_show_renew_and_ca(running_jrd: Jrd, tmp_path: Path) -> None:
    res = running_jrd.jrdctl("cert", "show")
    assert res.returncode == 0, res.stderr
    for word in ("subject", "SANs", "issuer", "not before", "not after", "days left", "SHA-256", "DNS:jrd.test"):
        assert word in res.stdout
    shown = ctl_json(running_jrd, "cert", "show")
    assert set(shown) == {"leaf", "ca"}
    for c in shown.values():
        assert {"subject", "sans", "issuer", "not_before", "not_after", "days_left", "sha256"} <= set(c)
    assert "IP:127.0.0.2" in shown["leaf"]["sans"]

    res = running_jrd.jrdctl("cert", "renew")
    assert res.returncode == 0 and res.stdout.startswith("Not renewed"), res.stdout + res.stderr
    renewed = ctl_json(running_jrd, "cert", "renew", "--force")
    assert renewed["renewed"] is True
    assert ctl_json(running_jrd, "cert", "show")["leaf"]["sha256"] != shown["leaf"]["sha256"]
    res = running_jrd.jrdctl("cert", "renew", "--force")
    assert res.returncode == 0 and res.stdout.startswith("Certificate renewed")

    res = running_jrd.jrdctl("cert", "ca", "-o", str(tmp_path / "a"))
    assert res.returncode == 0 and shown["ca"]["sha256"] in res.stdout
    assert (tmp_path / "a" / "jrd-ca.pem").read_bytes() == running_jrd.ca.read_bytes()
    files = ctl_json(running_jrd, "cert", "ca", "-o", str(tmp_path / "b"))
    assert Path(files["mobileconfig"]).read_bytes().startswith(b"<?xml")


# --- who may use it, and what it survives ------------------------------------------------------


@pytest.fixture(scope="module")
def outsider() -> Iterator[str]:
    """A throwaway account that does not own the daemon."""
    assert os.geteuid() == 0, "this test creates a user and needs root"
    with machine_lock("accounts"):
        subprocess.run(["userdel", OUTSIDER], capture_output=True)
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OUTSIDER], check=True)
    yield OUTSIDER
    with machine_lock("accounts"):
        subprocess.run(["userdel", OUTSIDER], check=True)


def test_non_owner_gets_a_clear_permission_denied(running_jrd: Jrd, outsider: str) -> None:
    sock = running_jrd.run_dir / "control.sock"
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    res = subprocess.run([*jrdctl_as(outsider), "--socket", str(sock), "status"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 4
    assert f"permission denied on {sock}: only root may use jrdctl" in res.stderr
    assert "[control] group" in res.stderr and "Traceback" not in res.stderr
    assert running_jrd.jrdctl("status").returncode == 0


def test_malformed_requests_leave_the_daemon_serving(running_jrd: Jrd) -> None:
    sock = str(running_jrd.run_dir / "control.sock")

    def send(payload: bytes, half_close: bool = True) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(sock)
            try:
                s.sendall(payload)
                if half_close:
                    s.shutdown(socket.SHUT_WR)
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
                return out
            except (BrokenPipeError, ConnectionResetError):
                return b""  # a closed connection is an acceptable answer

    for payload in (os.urandom(4096), b"\xff\xfe\x00\n", b"{" * 100000, b'{"command": "restart", "args": {"pro',
                    b'{"command": "shutdown"}\n', b'{"command": "status", "args": {"x": 1}}\n', b"x" * (8 << 20)):
        answer = send(payload)
        if answer:
            assert json.loads(answer)["ok"] is False
        assert running_jrd.jrdctl("status").returncode == 0
    # connect and go away without a byte; connect and say nothing while others are served
    socket.socket(socket.AF_UNIX).connect(sock)
    with socket.socket(socket.AF_UNIX) as idle:
        idle.connect(sock)
        assert running_jrd.jrdctl("status").returncode == 0
    assert running_jrd.proc is not None and running_jrd.proc.poll() is None
    assert running_jrd.serving()


def test_control_group_members_may_use_it_and_others_are_told_who_may(outsider: str) -> None:
    from concurrent.futures import Future

    from jrd.control.server import ControlServer
    from jrd.extension import Context

    def submit(name: str, source: str, **args: object) -> Future:
        fut: Future = Future()
        fut.set_result({"programs": {"jupyter": {"state": "RUNNING"}, "nginx": {"state": "RUNNING"}}})
        return fut

    unused: Any = None
    ctx = Context(layout=unused, supervisor=unused, ledger=unused, jupyter=unused, submit=submit, add_handler=unused,
                  schedule=unused, cancel=unused, current_config=unused, wait_serving=unused,
                  certificate_status=unused)

    group = "jrdctl-testers"
    with machine_lock("accounts"):
        subprocess.run(["groupdel", group], capture_output=True)
        subprocess.run(["groupadd", group], check=True)
    base = Path(tempfile.mkdtemp(prefix="jrdctl-", dir="/tmp"))
    base.chmod(0o755)
    server = ControlServer(base / "control.sock", group)
    server.start(ctx)
    try:
        argv = [*jrdctl_as(outsider), "--socket", str(server.path), "status", "--json"]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 4
        assert f"only root and members of group '{group}' may use jrdctl" in res.stderr
        assert f"usermod -aG {group} {outsider}" in res.stderr
        subprocess.run(["usermod", "-aG", group, outsider], check=True)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    finally:
        server.stop()
        with machine_lock("accounts"):
            subprocess.run(["gpasswd", "-d", outsider, group], capture_output=True)
            subprocess.run(["groupdel", group], check=True)
        shutil.rmtree(base, ignore_errors=True)

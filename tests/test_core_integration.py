"""The whole stack, really run: supervisord, nginx and JupyterLab over HTTPS."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (JRD, PASSWORD, Jrd, descendants, execute, kernel_pids, open_kernel_ws, pids_alive, tls_peer_cert,
                      wait_for)

pytestmark = pytest.mark.integration


def test_lab_served_over_https_with_expected_sans(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    r = s.get(running_jrd.url("/lab"))
    assert r.status_code == 200
    assert "JupyterLab" in r.text
    cert = tls_peer_cert("127.0.0.1", running_jrd.port, running_jrd.ca, server_name="jrd.test")
    sans = set(cert["subjectAltName"])
    assert {("DNS", "jrd.test"), ("DNS", "localhost"), ("IP Address", "127.0.0.1"), ("IP Address", "127.0.0.2")} <= sans


def test_tls_13_is_preferred_and_12_still_works(running_jrd: Jrd) -> None:
    for maximum, expected in ((ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
        ctx = ssl.create_default_context(cafile=str(running_jrd.ca))
        ctx.maximum_version = maximum
        with socket.create_connection(("127.0.0.1", running_jrd.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="jrd.test") as tls:
                assert tls.version() == expected


def test_password_login_and_wrong_password_refused(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    assert s.get(running_jrd.url("/api/status")).status_code == 200
    anon = running_jrd.session()
    assert anon.get(running_jrd.url("/api/status")).status_code == 403
    anon.get(running_jrd.url("/login"))
    r = anon.post(running_jrd.url("/login"), data={"password": "wrong password", "_xsrf": anon.cookies.get("_xsrf")},
                  allow_redirects=False)
    assert r.status_code != 302
    assert anon.get(running_jrd.url("/api/status")).status_code == 403


def test_unknown_host_is_refused_by_nginx(running_jrd: Jrd) -> None:
    s = running_jrd.session()
    r = s.get(running_jrd.url("/api"), headers={"Host": f"evil.example:{running_jrd.port}"})
    assert r.status_code == 421
    assert "not configured" in r.text


def test_cross_origin_api_request_is_blocked(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    ok = s.post(running_jrd.url("/api/contents"), json={"type": "notebook"},
                headers={"Origin": f"https://localhost:{running_jrd.port}"})
    assert ok.status_code == 201
    bad = s.post(running_jrd.url("/api/contents"), json={"type": "notebook"}, headers={"Origin": "https://evil.example"})
    assert bad.status_code in (403, 404)


def test_kernel_runs_code_over_websocket_through_nginx(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    kernel = s.post(running_jrd.url("/api/kernels"), json={"name": "python3"}).json()
    ws = open_kernel_ws(running_jrd, s, kernel["id"])
    try:
        assert execute(ws, "1+1") == "2"
    finally:
        ws.close()
        s.delete(running_jrd.url(f"/api/kernels/{kernel['id']}"))


def test_saving_a_notebook_larger_than_1mb_works(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    big = "x" * (3 * 1024 * 1024)
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": big}], "metadata": {}, "nbformat": 4,
          "nbformat_minor": 5}
    r = s.put(running_jrd.url("/api/contents/big.ipynb"), json={"type": "notebook", "content": nb})
    assert r.status_code in (200, 201), r.text[:200]
    back = s.get(running_jrd.url("/api/contents/big.ipynb")).json()
    assert back["content"]["cells"][0]["source"] == big


def test_static_bundles_are_gzipped(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    page = s.get(running_jrd.url("/lab")).text
    import re

    js = re.search(r'src="([^"]+\.js[^"]*)"', page)
    assert js, "no script in the lab page"
    r = s.get(running_jrd.url(js.group(1)), headers={"Accept-Encoding": "gzip"}, stream=True)
    assert r.headers.get("Content-Encoding") == "gzip"


def test_jupyter_runs_as_the_configured_user_on_loopback(running_jrd: Jrd) -> None:
    pid = running_jrd.supervisor_pid("jupyter")
    uid = os.stat(f"/proc/{pid}").st_uid
    import pwd

    assert pwd.getpwuid(uid).pw_name == running_jrd.user
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", running_jrd.jupyter_port), timeout=2).close()


def test_secret_files_are_private(running_jrd: Jrd) -> None:
    for path in ("password", "internal-token", "tls/server-key.pem", "tls/ca-key.pem"):
        mode = (running_jrd.state / path).stat().st_mode & 0o777
        assert mode == 0o600, f"{path} has mode {oct(mode)}"
    sock = running_jrd.run_dir / "supervisor" / "supervisor.sock"
    assert sock.stat().st_mode & 0o077 == 0
    assert (running_jrd.run_dir / "supervisor").stat().st_mode & 0o077 == 0
    assert PASSWORD not in running_jrd.read_output()
    token = (running_jrd.state / "internal-token").read_text().strip()
    logs = "".join(p.read_text(errors="replace") for p in (running_jrd.base / "log").glob("*.log"))
    assert token not in logs and token not in running_jrd.read_output()


def test_killed_jupyter_is_restarted_and_serves_again(running_jrd: Jrd) -> None:
    old = running_jrd.supervisor_pid("jupyter")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: running_jrd.supervisor_pid("jupyter") not in (0, old), 30, "a new Jupyter pid")
    wait_for(running_jrd.serving, 60, "Jupyter to serve through nginx again")
    assert running_jrd.login().get(running_jrd.url("/api/status")).status_code == 200


def test_sigterm_stops_everything_including_kernels(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j = make_jrd().start()
    s = j.login()
    s.post(j.url("/api/kernels"), json={"name": "python3"})
    wait_for(lambda: kernel_pids(j.proc.pid), 60, "a kernel process")
    procs = descendants(j.proc.pid)
    assert len(procs) >= 5  # supervisord, jupyter, nginx master and workers, the kernel
    assert j.stop(signal.SIGTERM) == 0
    assert pids_alive(procs) == []


def test_sigterm_with_supervisord_and_jupyter_frozen_stops_everything_at_once(make_jrd) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP of supervisord and of Jupyter, then `systemctl stop jrd`: both are woken and stop gracefully,
    instead of jrd waiting out its 45 s for supervisord and supervisord its 20 s stopwaitsecs for Jupyter."""
    j = make_jrd().start()
    s = j.login()
    s.post(j.url("/api/kernels"), json={"name": "python3"})
    wait_for(lambda: kernel_pids(j.proc.pid), 60, "a kernel process")
    procs = descendants(j.proc.pid)
    frozen = [j.supervisor_pid("jupyter")]
    conf = str(j.run_dir / "supervisor" / "supervisord.conf")
    frozen += [p for p in procs if conf in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert len(frozen) == 2, frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    start = time.monotonic()
    assert j.stop(signal.SIGTERM) == 0
    assert time.monotonic() - start < 15
    wait_for(lambda: pids_alive(procs) == [], 30, "everything jrd started to be gone")
    assert "SIGKILL" not in (j.base / "log" / "supervisord.log").read_text()


def test_sigkill_of_jrd_leaves_nothing_behind(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j = make_jrd().start()
    s = j.login()
    s.post(j.url("/api/kernels"), json={"name": "python3"})
    wait_for(lambda: kernel_pids(j.proc.pid), 60, "a kernel process")
    procs = descendants(j.proc.pid)
    j.proc.kill()
    j.proc.wait()
    wait_for(lambda: pids_alive(procs) == [], 30, f"processes {pids_alive(procs)} to exit after SIGKILL of jrd")


def test_second_instance_on_same_runtime_dir_is_refused(running_jrd: Jrd) -> None:
    res = subprocess.run([running_jrd.proc.args[0], "run", "--config", str(running_jrd.config_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "already running" in res.stderr
    assert "Traceback" not in res.stderr
    assert running_jrd.serving()


def test_busy_port_gives_a_clear_error(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j = make_jrd()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", j.port))
        busy.listen()
        res = j.jrd("run", timeout=60)
    assert res.returncode != 0
    assert f"port {j.port}" in res.stderr and "in use" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_nginx_binary_gives_a_clear_error(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j = make_jrd()
    j.write_config(nginx='binary = "/nonexistent/nginx"\n')
    j.set_password()
    res = j.jrd("run", timeout=60)
    assert res.returncode != 0
    assert "nginx is not installed" in res.stderr
    assert "Traceback" not in res.stderr


def test_sigterm_while_starting_stops_at_once(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j = make_jrd()
    j.set_password()
    log = open(j.base / "jrd.out", "w")
    j.proc = subprocess.Popen([JRD, "run", "--config", str(j.config_path)], stdout=log, stderr=subprocess.STDOUT)
    sup_conf = j.run_dir / "supervisor" / "supervisord.conf"
    # Freeze Jupyter before it answers, so that jrd is still waiting for it.
    pid = wait_for(lambda: sup_conf.exists() and j.supervisor_pid("jupyter"), 60, "Jupyter to be spawned")
    os.kill(pid, signal.SIGSTOP)
    try:
        procs = descendants(j.proc.pid)
        start = time.monotonic()
        j.proc.send_signal(signal.SIGTERM)
        assert j.proc.wait(60) == 0
        # Without the interruption jrd would wait out its 120 s startup deadline first, and without
        # waking the frozen Jupyter, supervisord its 20 s stopwaitsecs before a SIGKILL.
        assert time.monotonic() - start < 15
        assert "is serving" not in j.read_output()
        wait_for(lambda: pids_alive(procs) == [], 30, "everything jrd started to be gone")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def zombie_or_live_children(pid: int) -> list[str]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            if int(fields[1]) == pid:
                out.append(f"{entry}:{fields[0]}")
    return out


def test_kernels_orphaned_by_a_jupyter_crash_are_ended_and_reaped(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j = make_jrd().start()
    s = j.login()
    s.post(j.url("/api/kernels"), json={"name": "python3"})
    kernels = wait_for(lambda: kernel_pids(j.proc.pid), 60, "a kernel process")
    supervisord = wait_for(lambda: [p for p in zombie_or_live_children(j.proc.pid)], 10, "supervisord")
    os.kill(j.supervisor_pid("jupyter"), signal.SIGKILL)
    # The kernel is reparented to jrd (a child subreaper); jrd must end it and reap it.
    wait_for(lambda: pids_alive(kernels) == [] and len(zombie_or_live_children(j.proc.pid)) == len(supervisord), 40,
             "the orphaned kernel to be ended and reaped")
    wait_for(j.serving, 60, "Jupyter to serve again")

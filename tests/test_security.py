"""Security, checked against the real stack: private files and sockets, no secrets where they could leak,
Jupyter on loopback only, a TLS scanner's verdict, the login rate limit and the Origin checks."""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websocket

from conftest import JRDCTL, PASSWORD, Jrd, machine_lock, open_kernel_ws, wait_for

pytestmark = pytest.mark.integration

OTHER_USER = "jrdother"
SYSTEM_PYTHON = "/usr/bin/python3"
NEW_PASSWORD = "a new passphrase, changed in the security test"
WRONG_PASSWORD = "wrong guess for the security test"


def other_account() -> str:
    """A throwaway local account that has nothing to do with jrd."""
    with machine_lock("accounts"):
        try:
            pwd.getpwnam(OTHER_USER)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER], check=True)
    return OTHER_USER


def connect_as(user: str, path: Path, kind: int) -> str:
    """Try to connect to the Unix socket `path` as `user`; 'ok' or the errno name."""
    code = (
        "import errno, socket, sys\n"
        f"s = socket.socket(socket.AF_UNIX, {kind})\n"
        "try:\n    s.connect(sys.argv[1]); print('ok')\n"
        "except OSError as e:\n    print(errno.errorcode.get(e.errno, e.errno))\n"
    )
    res = subprocess.run(["runuser", "-u", user, "--", SYSTEM_PYTHON, "-c", code, str(path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def jrd_sockets(j: Jrd) -> dict[str, tuple[Path, int]]:
    run = j.run_dir
    return {
        "control": (run / "control.sock", socket.SOCK_STREAM),
        "supervisord": (run / "supervisor" / "supervisor.sock", socket.SOCK_STREAM),
        "events": (run / "supervisor" / "events.sock", socket.SOCK_DGRAM),
        "nginx status": (run / "supervisor" / "nginx-status.sock", socket.SOCK_STREAM),
    }


def test_secret_files_are_private(running_jrd: Jrd) -> None:
    files = [running_jrd.state / p for p in ("password", "internal-token", "tls/server-key.pem", "tls/ca-key.pem")]
    files += [running_jrd.run_dir / "jupyter" / "jupyter_server_config.py",
              running_jrd.run_dir / "jupyter" / "gateway-token",  # empty without [gateway], but always private
              running_jrd.run_dir / "supervisor" / "supervisord.conf"]
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path} has mode {oct(mode)}"
    assert stat.S_IMODE(running_jrd.state.stat().st_mode) & 0o077 == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="LOUD SKIP: needs root to try the sockets as other accounts")
def test_no_socket_is_reachable_by_another_local_account(running_jrd: Jrd) -> None:
    sockets = jrd_sockets(running_jrd)
    for name, (path, kind) in sockets.items():
        assert stat.S_ISSOCK(path.stat().st_mode), f"the {name} socket {path} is missing"
        # jrd's own account reaches each one, so a refusal below is about permissions, not a dead socket.
        with socket.socket(socket.AF_UNIX, kind) as s:
            s.connect(str(path))
    # Another account, and the Jupyter account (which runs every notebook's code).
    for user in (other_account(), running_jrd.user):
        if user == "root":
            continue
        for name, (path, kind) in sockets.items():
            assert connect_as(user, path, kind) == "EACCES", f"{user} can reach the {name} socket {path}"


def listening_addresses(port: int) -> list[str]:
    """Local addresses with a TCP socket listening on `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            hex_addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(hex_addr)
                # The kernel prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
                found.append(str(ipaddress.ip_address(raw)))
    return found


def machine_addresses() -> list[str]:
    res = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, "`ip -j addr` failed (iproute2 is in scripts/install-system-deps test)"
    return [a["local"] for iface in json.loads(res.stdout) for a in iface.get("addr_info", [])]


def test_jupyter_listens_on_loopback_only(running_jrd: Jrd) -> None:
    port = running_jrd.jupyter_port
    bound = listening_addresses(port)
    assert bound, f"nothing listens on Jupyter's port {port}"
    assert all(ipaddress.ip_address(a).is_loopback for a in bound), bound
    for addr in machine_addresses():
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback or ip.is_link_local:
            continue
        with pytest.raises(OSError):
            socket.create_connection((addr, port), timeout=2).close()


def test_tls_passes_sslyze_mozilla_intermediate(running_jrd: Jrd) -> None:
    # jrd's own CA is the trust anchor: devices trust it once (README, "Trusting the CA").
    res = subprocess.run([sys.executable, "-m", "sslyze", "--mozilla_config=intermediate",
                          f"--certinfo_ca_file={running_jrd.ca}", f"localhost:{running_jrd.port}"],
                         capture_output=True, text=True, timeout=240)
    out = res.stdout + res.stderr
    assert f"localhost:{running_jrd.port}: OK - Compliant." in out, out[out.find("COMPLIANCE"):] or out
    assert res.returncode == 0, out


def test_cross_origin_websocket_is_refused_and_same_origin_accepted(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    kernel = s.post(running_jrd.url("/api/kernels"), json={"name": "python3"}).json()
    try:
        cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            websocket.create_connection(
                f"wss://127.0.0.1:{running_jrd.port}/api/kernels/{kernel['id']}/channels",
                sslopt={"ca_certs": str(running_jrd.ca)}, cookie=cookie, host=f"localhost:{running_jrd.port}",
                origin="https://evil.example", header=[f"X-XSRFToken: {s.cookies.get('_xsrf')}"], timeout=60,
            )
        assert err.value.status_code == 403
        ws = open_kernel_ws(running_jrd, s, kernel["id"])  # the same Origin as the Host
        ws.close()
    finally:
        s.delete(running_jrd.url(f"/api/kernels/{kernel['id']}"))


def test_cross_origin_api_requests_are_refused_and_same_origin_accepted(running_jrd: Jrd) -> None:
    s = running_jrd.login()
    same = {"Origin": f"https://localhost:{running_jrd.port}"}
    # Jupyter compares the Origin's host and port with the Host that nginx passes on unchanged.
    for origin in ("https://evil.example", "https://localhost.evil.example", "https://localhost:1", "null"):
        for method, path, body in (("post", "/api/kernels", {"name": "python3"}),
                                   ("put", "/api/contents/x.txt", {"type": "file", "format": "text", "content": "x"}),
                                   ("delete", "/api/sessions/none", None)):
            r = getattr(s, method)(running_jrd.url(path), json=body, headers={"Origin": origin})
            assert r.status_code in (403, 404), f"{method} {path} from {origin}: HTTP {r.status_code}"
    assert s.get(running_jrd.url("/api/kernels"), headers=same).status_code == 200
    assert s.put(running_jrd.url("/api/contents/x.txt"), headers=same,
                 json={"type": "file", "format": "text", "content": "x"}).status_code in (200, 201)
    assert s.delete(running_jrd.url("/api/contents/x.txt"), headers=same).status_code == 204


def secrets_of(j: Jrd, passwords: list[str]) -> dict[str, str]:
    found = {f"password {p!r}": p for p in passwords}
    found["internal token"] = (j.state / "internal-token").read_text().strip()
    found["password hash"] = (j.state / "password").read_text().strip()
    for key in ("tls/server-key.pem", "tls/ca-key.pem"):
        body = [line for line in (j.state / key).read_text().splitlines() if line and not line.startswith("-----")]
        for n, line in enumerate(body):
            if len(line) >= 16:
                found[f"{key} line {n}"] = line
    return found


def test_no_secret_in_logs_status_or_metrics_after_logins_and_passwd(running_jrd: Jrd) -> None:
    j = running_jrd
    j.login()
    anon = j.session()
    anon.get(j.url("/login"))
    r = anon.post(j.url("/login"), data={"password": WRONG_PASSWORD, "_xsrf": anon.cookies.get("_xsrf")},
                  allow_redirects=False)
    assert r.status_code != 302
    res = subprocess.run([JRDCTL, "--config", str(j.config_path), "passwd", "--stdin"], input=NEW_PASSWORD + "\n",
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: j.login(NEW_PASSWORD), 90, "the new password to work")

    status = subprocess.run([JRDCTL, "--config", str(j.config_path), "status", "--json"], capture_output=True,
                            text=True, timeout=60)
    json.loads(status.stdout)
    metrics = requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=10).text
    assert "jrd_" in metrics
    places = {"jrdctl status --json": status.stdout + status.stderr, "metrics": metrics,
              "jrd's output": j.read_output(), "jrdctl passwd": res.stdout + res.stderr}
    for path in sorted((j.base / "log").rglob("*")):
        if path.is_file():
            places[str(path)] = path.read_text(errors="replace")
    assert len(places) > 5, sorted(places)
    for what, secret in secrets_of(j, [PASSWORD, NEW_PASSWORD, WRONG_PASSWORD]).items():
        for where, text in places.items():
            assert secret not in text, f"{what} appears in {where}"


def login_attempt(j: Jrd, password: str) -> tuple[int, requests.Session]:
    s = j.session()
    s.get(j.url("/login"))
    r = s.post(j.url("/login"), data={"password": password, "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False, timeout=30)
    return r.status_code, s


def test_password_guessing_is_slowed_and_the_right_password_still_works(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j = make_jrd().start()
    burst = 20  # the defaults: 10 a minute after a burst of 20
    statuses = [login_attempt(j, f"guess {n}")[0] for n in range(burst + 5)]
    assert 429 not in statuses[:burst], statuses
    assert statuses[-1] == 429 and statuses.count(429) >= 4, statuses
    # Limited for every password while it lasts, then the right one gets through again.
    assert login_attempt(j, PASSWORD)[0] == 429
    start = time.monotonic()
    status, session = wait_for(lambda: (lambda a: a if a[0] == 302 else None)(login_attempt(j, PASSWORD)), 30,
                               "the right password to be let through again", interval=0.5)
    assert time.monotonic() - start < 12  # one attempt every 6 s comes back
    # Everything but the login POST is never limited.
    assert all(session.get(j.url("/api/status")).status_code == 200 for _ in range(30))

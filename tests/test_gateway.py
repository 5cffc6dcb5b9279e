"""Kernels on a gateway, end to end: a real Jupyter Kernel Gateway, a real jrd in front of it, kernels through nginx.

One jrd goes through the whole story: configured for a gateway that is not up yet, `jrd check` refuses it and
the daemon starts with a warning; a kernel asked for then fails, and none runs on this machine.  Then the gateway
comes up, and the next kernel runs under the gateway's process, never under jrd's Jupyter, with the launch timeout
jrd configured.  A token file opened to other accounts is refused by a reload that keeps the running config.  The
token is in no rendered file but Jupyter's private copy, no log, no command line and no environment.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from conftest import BIN, Jrd, descendants, execute, free_port, kernel_pids, open_kernel_ws, wait_for

pytestmark = pytest.mark.integration

TOKEN = "gw-" + secrets.token_hex(16)


@pytest.fixture
def kernel_gateway(tmp_path: Path) -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    """Start `jupyter kernelgateway` on a loopback port, with TOKEN; its process group is ended afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> subprocess.Popen[bytes]:
        home = tmp_path / "gateway-home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            # The gateway's own setting, through its environment rather than its command line.
            "KG_AUTH_TOKEN": TOKEN,
        }
        log = open(tmp_path / "gateway.log", "wb")
        proc = subprocess.Popen(
            [str(BIN / "jupyter"), "kernelgateway", "--KernelGatewayApp.ip=127.0.0.1",
             f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        procs.append(proc)

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the gateway exited: {(tmp_path / 'gateway.log').read_text()}")
            r = requests.get(f"http://127.0.0.1:{port}/api/kernelspecs", timeout=2,
                             headers={"Authorization": f"token {TOKEN}"})
            return r.status_code == 200

        wait_for(answers, 30, "the kernel gateway to answer")
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the gateway and its kernels: a session of their own
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def write_token(path: Path, token: str = TOKEN, mode: int = 0o600) -> None:
    path.write_text(token + "\n")
    path.chmod(mode)


def start_kernel(s: requests.Session, j: Jrd) -> requests.Response:
    return s.post(j.url("/api/kernels"), json={"name": "python3"}, timeout=60)


def everything_jrd_wrote(j: Jrd) -> dict[str, bytes]:
    """Every file under jrd's dirs but the Jupyter account's copy of the token, and jrd's own output."""
    out = {"jrd.out": (j.base / "jrd.out").read_bytes()}
    for d in (j.state, j.run_dir, j.base / "log"):
        for path in d.rglob("*"):
            if path.is_file() and not path.is_socket() and path.name != "gateway-token":
                out[str(path)] = path.read_bytes()
    return out


def test_kernels_run_on_the_gateway_never_here(make_jrd: Callable[..., Jrd],
                                               kernel_gateway: Callable[[int], subprocess.Popen[bytes]]) -> None:
    port = free_port()
    j = make_jrd()
    token_file = j.base / "gateway-token"
    write_token(token_file)
    j.write_config(f"""
        [gateway]
        url = "http://127.0.0.1:{port}"
        auth_token_file = "{token_file}"
        request_timeout_seconds = 25
        kernel_launch_timeout_seconds = 20
    """)

    # 1. No gateway yet: `jrd check` says so in one line and fails.
    res = j.jrd("check")
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        f"jrd: {j.config_path}: [gateway] url = 'http://127.0.0.1:{port}': the gateway does not answer "
        f"(ConnectionRefusedError: [Errno 111] Connection refused); Jupyter runs no kernel here while a gateway is "
        "set, so start the gateway or correct the url"
    ]

    # 2. The daemon starts all the same (the gateway may come later), and warns.
    j.start()
    wait_for(lambda: f"the gateway at http://127.0.0.1:{port} does not answer" in j.read_output(), 30,
             "jrd's warning that the gateway does not answer")
    jupyter_pid = j.supervisor_pid("jupyter")
    s = j.login()
    r = start_kernel(s, j)
    assert r.status_code >= 500, f"a kernel without its gateway: HTTP {r.status_code} {r.text[:200]}"
    assert kernel_pids(jupyter_pid) == [], "a kernel ran on this machine"
    assert kernel_pids(j.proc.pid) == []

    # 3. The gateway comes up: the next kernel runs there, through nginx, without restarting anything.
    gateway = kernel_gateway(port)
    r = start_kernel(s, j)
    assert r.status_code == 201, f"HTTP {r.status_code} {r.text[:300]}"
    kernel_id = r.json()["id"]
    ws = open_kernel_ws(j, s, kernel_id)
    try:
        kernel_pid = int(execute(ws, "import os; os.getpid()"))
        assert kernel_pid in descendants(gateway.pid), "the kernel is not the gateway's"
        assert kernel_pid not in descendants(jupyter_pid) and kernel_pid not in descendants(j.proc.pid)
        assert kernel_pids(jupyter_pid) == []
        # The launch timeout jrd configured reached the gateway with the start request.
        assert execute(ws, "os.environ.get('KERNEL_LAUNCH_TIMEOUT')") == "'20'"
        assert j.supervisor_pid("jupyter") == jupyter_pid, "Jupyter restarted"

        # 4. A token file opened to other accounts: the reload is refused, the running config stays.
        token_file.chmod(0o644)
        res = j.jrdctl("reload")
        assert res.returncode != 0
        assert f"[gateway] auth_token_file = '{token_file}'" in res.stderr
        assert f"`chmod 600 {token_file}`" in res.stderr
        token_file.chmod(0o600)
        assert int(execute(ws, "os.getpid()")) == kernel_pid
        assert j.supervisor_pid("jupyter") == jupyter_pid
    finally:
        ws.close()
    wait_for(lambda: "answers now" in j.read_output(), 40, "jrd to log that the gateway answers now")
    assert s.delete(j.url(f"/api/kernels/{kernel_id}"), timeout=30).status_code == 204

    # 5. The token: in Jupyter's private copy only, never in a rendered file, a log, argv or the environment.
    copy = j.run_dir / "jupyter" / "gateway-token"
    st = copy.stat()
    assert copy.read_text() == TOKEN and (st.st_mode & 0o777) == 0o600
    assert st.st_uid == (0 if j.user == "root" else __import__("pwd").getpwnam(j.user).pw_uid)
    for name, content in everything_jrd_wrote(j).items():
        assert TOKEN.encode() not in content, f"the gateway token is in {name}"
    for pid in [j.proc.pid, jupyter_pid, *descendants(j.proc.pid)]:
        for what in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{what}").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            assert TOKEN.encode() not in data, f"the gateway token is in /proc/{pid}/{what}"


def test_a_missing_token_file_is_a_config_error_for_check_and_start(make_jrd: Callable[..., Jrd]) -> None:
    j = make_jrd()
    missing = j.base / "no-such-token"
    j.write_config(f'[gateway]\nurl = "http://127.0.0.1:{free_port()}"\nauth_token_file = "{missing}"\n')
    for command in ("check", "run"):
        res = j.jrd(command)
        assert res.returncode == 2, (command, res.stderr)
        assert res.stderr.strip().splitlines() == [
            f"jrd: {j.config_path}: [gateway] auth_token_file = '{missing}' is unusable: the file does not exist; "
            f"write the gateway's token into it and `chmod 600 {missing}`"
        ]

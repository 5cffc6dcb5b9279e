"""What jrd is compared with: a bare `jupyter lab`, and a bare nginx in front of it.

Both run on loopback on free ports, as the same unprivileged account jrd's Jupyter runs as, with plain
HTTP and Jupyter's own token login: what someone gets who starts JupyterLab by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import figures  # noqa: F401  (puts tests/ on the path)
from conftest import free_port

BIN = Path(sys.executable).parent
TOKEN = "bench-token"


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def lab_argv(port: int, root: Path, user: str) -> list[str]:
    """A bare `jupyter lab` command: its defaults, a known token, one port."""
    argv = [str(BIN / "jupyter-lab"), "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={TOKEN}"]
    return argv + ["--allow-root"] if user == "root" else argv


class BareLab:
    """`jupyter lab` with its defaults, as `user`, token login, plain HTTP on 127.0.0.1."""

    def __init__(self, user: str):
        self.user = user
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="jlab-", dir="/tmp"))
        self.root.chmod(0o777)  # the account writes its runtime files here
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 120) -> float:
        """Start it; the seconds from exec to its first 200 on /api (its cold start)."""
        argv = lab_argv(self.port, self.root, self.user)
        if self.user != "root" and os.geteuid() == 0:
            argv = ["runuser", "-u", self.user, "--", *argv]
        env = dict(os.environ, HOME=str(self.root), JUPYTER_RUNTIME_DIR=str(self.root / "rt"))
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     cwd=self.root)
        while time.monotonic() - t0 < timeout:
            if answers(self.url("/api")):
                return time.monotonic() - t0
            time.sleep(0.02)
        self.stop()
        raise SystemExit(f"bare jupyter lab did not answer within {timeout:.0f} s")

    @property
    def pid(self) -> int:
        """Jupyter's own pid (under runuser, its child)."""
        assert self.proc is not None
        if self.proc.args[0] != "runuser":
            return self.proc.pid
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return int(out[0])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "BareLab":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cold_start(user: str) -> float:
    """exec of a bare `jupyter lab` to its first 200 on /api."""
    lab = BareLab(user)
    try:
        return lab.start()
    finally:
        lab.stop()


BARE_NGINX_CONF = """\
worker_processes auto;
pid {base}/nginx.pid;
error_log stderr;
events {{ }}
http {{
    access_log off;
    client_body_temp_path {base}/tmp;
    proxy_temp_path {base}/tmp;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }}
    }}
}}
"""


class BareNginx:
    """Debian's nginx with a minimal reverse-proxy config (the usual recipe) in front of `upstream`."""

    def __init__(self, upstream: int):
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="nginx-", dir="/tmp"))
        (self.base / "tmp").mkdir()
        conf = self.base / "nginx.conf"
        conf.write_text(BARE_NGINX_CONF.format(base=self.base, port=self.port, upstream=upstream))
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def pids(self) -> list[int]:
        """The master and its workers."""
        workers = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [self.proc.pid, *map(int, workers.split())]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.base, ignore_errors=True)

"""Benchmark: how fast jrd serves again after each kind of death, beside what the old recipe gets.

Starts a real jrd (supervisord, nginx, JupyterLab) in /tmp on loopback ports and measures, from the
SIGKILL to the first 200 from Jupyter's /api through nginx (polled every 10 ms):

1. `kill -9` of Jupyter, beside a bare `jupyter lab` cold start (exec to first 200) and beside plain
   supervisord with its default settings running the same `jupyter lab` (kill -9 to first 200);
2. `kill -9` of nginx's master (the case that once stayed down for good);
3. `kill -9` of supervisord;
4. a crash loop: Jupyter's port taken by another process, Jupyter killed so that it fails again and
   again until jrd holds it back, then the port freed: time from freeing it to serving.

Run:  .venv/bin/python bench/bench_recovery.py [--trials 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_ctl import cold_start, report, summary  # noqa: E402
from jrd import leftovers  # noqa: E402
from conftest import Jrd, free_port, short_tmp, wait_for  # noqa: E402
from test_faults import FAST_HEALTH, hold_port, nginx_masters, probed_ok_since, supervisord_pid  # noqa: E402

BIN = Path(sys.executable).parent
POLL = 0.01


def until(predicate: Callable[[], bool], timeout: float = 120, what: str = "recovery") -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(POLL)
    raise SystemExit(f"no {what} within {timeout:.0f} s")


def settle(j: Jrd, program: str) -> None:
    """Serving, and seen healthy by jrd's own probe, before the next kill (else it is a crash loop)."""
    wait_for(j.serving, 120, "serving")
    now = time.time()
    wait_for(lambda: probed_ok_since(j, program, now), 60, f"a passing probe of {program}")


def first_supervisord(j: Jrd) -> int:
    """supervisord's pid, 0 while there is none (or, during a restart, two)."""
    try:
        return supervisord_pid(j)
    except AssertionError:
        return 0


def trials(j: Jrd, n: int, program: str, victim: Callable[[], int], label: str) -> list[float]:
    """Kill `victim()` n times; the seconds to serving each time.  `program` must pass a probe before each."""
    out = []
    for _ in range(n):
        settle(j, program)
        pid = victim()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # A successor exists (for supervisord: only once jrd has ended the old stack), then it serves.
        until(lambda: victim() not in (0, pid), 60, f"successor of {program}'s {pid}")
        until(j.serving)
        print(f"{label}: {time.monotonic() - t0:.3f} s", file=sys.stderr, flush=True)
        out.append(time.monotonic() - t0)
    return out


def plain_supervisord(user: str, n: int) -> list[float]:
    """The same `jupyter lab` under supervisord with its default settings: kill -9 to the first 200."""
    base = Path(tempfile.mkdtemp(prefix="plainsv-", dir="/tmp"))
    base.chmod(0o777)  # Jupyter's account writes its runtime files here
    port = free_port()
    sock = base / "sv.sock"
    argv = [str(BIN / "jupyter-lab"), "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={base}", "--IdentityProvider.token=bench"]
    if user == "root":
        argv.append("--allow-root")
    conf = base / "supervisord.conf"
    conf.write_text(f"""[unix_http_server]
file = {sock}
[supervisord]
nodaemon = true
logfile = {base}/supervisord.log
pidfile = {base}/supervisord.pid
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl = unix://{sock}
[program:jupyter]
command = {' '.join(argv)}
directory = {base}
{'user = ' + user if os.geteuid() == 0 else ''}
environment = HOME="{base}",JUPYTER_RUNTIME_DIR="{base}/rt"
""")
    sv = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def pid() -> int:
        out = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "pid", "jupyter"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return int(out) if out.isdigit() else 0

    out = []
    try:
        for _ in range(n):
            until(answers)
            old = pid()
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            until(lambda: not answers(), 10)
            until(answers)
            out.append(time.monotonic() - t0)
    finally:
        sv.terminate()
        sv.wait(60)
        shutil.rmtree(base, ignore_errors=True)
    return out


def crash_loops(j: Jrd, n: int) -> list[float]:
    out = []
    for _ in range(n):
        settle(j, "jupyter")
        old = j.supervisor_pid("jupyter")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: not leftovers.alive(old), 10, "the old Jupyter to be gone")
        holder = hold_port(j.jupyter_port)
        try:
            wait_for(lambda: "crash_loop" in json.loads(j.jrdctl("status", "--json").stdout)["programs"]["jupyter"],
                     180, "the crash loop")
        finally:
            holder.kill()
            holder.wait()
        t0 = time.monotonic()
        until(j.serving, 600)
        out.append(time.monotonic() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--crash-loops", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    j = Jrd(short_tmp(), FAST_HEALTH)
    j.start()
    try:
        jupyter = trials(j, args.trials, "jupyter", lambda: j.supervisor_pid("jupyter"), "jupyter")
        nginx = trials(j, args.trials, "nginx", lambda: (nginx_masters(j) or [0])[0], "nginx master")
        supervisord = trials(j, max(3, args.trials // 2), "jupyter", lambda: first_supervisord(j), "supervisord")
        loops = crash_loops(j, args.crash_loops)
    finally:
        j.stop()
        shutil.rmtree(j.base, ignore_errors=True)
    colds = [cold_start(j.user) for _ in range(args.trials)]
    plain = plain_supervisord(j.user, args.trials)

    from importlib.metadata import version

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(), "jupyterlab": version("jupyterlab"),
        "jupyter_server": version("jupyter_server"), "supervisor": version("supervisor"),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "kill -9 jupyter -> serving through nginx (jrd)": summary(jupyter),
        "bare jupyter lab cold start (exec to /api 200)": summary(colds),
        "kill -9 jupyter -> /api 200 (plain supervisord, defaults)": summary(plain),
        "jrd minus cold start (medians, ms)": round((statistics.median(jupyter) - statistics.median(colds)) * 1000),
        "kill -9 nginx master -> serving (jrd)": summary(nginx),
        "kill -9 supervisord -> serving (jrd)": summary(supervisord),
        "crash loop held, cause removed -> serving (jrd)": summary(loops),
    }
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: how fast jrdctl answers, and how fast `restart jupyter` serves again.

Starts a real jrd (supervisord, nginx, JupyterLab) in /tmp on loopback ports and measures:

1. `jrdctl status` wall time (a fresh process each time, as a person or a script runs it),
   beside `supervisorctl status` on the same supervisord and a bare `python -c pass`;
2. `jrdctl restart jupyter --yes` wall time, which returns only once Jupyter answers
   through nginx (checked with one request straight after), beside a bare
   `jupyter lab` cold start (exec to the first 200 from /api) in the same run.

Run:  .venv/bin/python bench/bench_ctl.py [--status-runs 30] [--restarts 5] [--cold-starts 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import JRDCTL, Jrd, free_port, short_tmp  # noqa: E402

BIN = Path(sys.executable).parent


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return time.monotonic() - t0


def status_times(j: Jrd, runs: int) -> dict[str, list[float]]:
    conf = str(j.run_dir / "supervisor" / "supervisord.conf")
    out: dict[str, list[float]] = {"jrdctl status": [], "supervisorctl status": [], "python -c pass": []}
    for _ in range(runs):
        out["jrdctl status"].append(timed([JRDCTL, "--config", str(j.config_path), "status"]))
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf, "status"],
                       capture_output=True, timeout=60)  # exits 3 for the stopped event listener, if any
        out["supervisorctl status"].append(time.monotonic() - t0)
        out["python -c pass"].append(timed([sys.executable, "-c", "pass"]))
    return out


def restart_times(j: Jrd, runs: int) -> list[float]:
    out = []
    s = j.session()
    for _ in range(runs):
        t = timed([JRDCTL, "--config", str(j.config_path), "restart", "jupyter", "--yes"])
        status = s.get(j.url("/api"), timeout=5).status_code
        if status != 200:
            raise SystemExit(f"the request straight after `jrdctl restart jupyter` got HTTP {status}")
        out.append(t)
    return out


def cold_start(user: str) -> float:
    """exec of a bare `jupyter lab` to its first 200 on /api."""
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="jlab-", dir="/tmp"))
    root.chmod(0o777)
    argv = [str(BIN / "jupyter-lab"), "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}", "--IdentityProvider.token=bench"]
    if user != "root" and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    elif os.geteuid() == 0:
        argv.append("--allow-root")
    env = dict(os.environ, HOME=str(root), JUPYTER_RUNTIME_DIR=str(root / "rt"))
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=root)
    try:
        while time.monotonic() - t0 < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.02)
        raise SystemExit("bare jupyter lab did not answer within 120 s")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 1), "min_ms": round(min(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1), "runs": len(values)}


def report(result: dict[str, object], as_json: bool) -> None:
    """A benchmark's figures: JSON, or one `name: value` line each."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--status-runs", type=int, default=30)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--cold-starts", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    j = Jrd(short_tmp())
    j.start()
    try:
        statuses = status_times(j, args.status_runs)
        restarts = restart_times(j, args.restarts)
        colds = [cold_start(j.user) for _ in range(args.cold_starts)]
    finally:
        j.stop()
        shutil.rmtree(j.base, ignore_errors=True)

    import jupyterlab
    import jupyter_server

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(), "jupyterlab": jupyterlab.__version__,
        "jupyter_server": jupyter_server.__version__, "jupyter_user": j.user,
        **{name: summary(v) for name, v in statuses.items()},
        "jrdctl restart jupyter (to serving through nginx)": summary(restarts),
        "bare jupyter lab cold start (exec to /api 200)": summary(colds),
        "restart / cold start (medians)": round(statistics.median(restarts) / statistics.median(colds), 2),
    }
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

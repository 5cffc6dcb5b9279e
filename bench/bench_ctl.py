"""jrdctl: how fast `jrdctl status` answers, and how fast `jrdctl restart jupyter` serves again.

Starts a real jrd (supervisord, nginx, JupyterLab as the unprivileged account) in /tmp on loopback ports
and times fresh `jrdctl` processes, as a person or a script runs them:

1. `jrdctl status`, beside `supervisorctl status` on the same supervisord and a bare `python -c pass`
   (the interpreter's own start);
2. `jrdctl restart jupyter --yes`, which returns only once Jupyter answers through nginx (one request
   straight after must get 200), each followed by a bare `jupyter lab` cold start (exec to its first
   200 on /api), so that both see the same load.

Run:  .venv/bin/python bench/bench_ctl.py [--status-runs 20] [--restarts 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

import figures
from baselines import cold_start
from conftest import JRDCTL, Jrd, short_tmp
from figures import Result, summary, summary_ms


def timed(argv: list[str], check: bool = True) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=check, capture_output=True, timeout=300)
    return time.monotonic() - t0


def status_times(j: Jrd, runs: int) -> dict[str, list[float]]:
    conf = str(j.run_dir / "supervisor" / "supervisord.conf")
    out: dict[str, list[float]] = {"jrdctl": [], "supervisorctl": [], "python": []}
    for _ in range(runs):
        out["jrdctl"].append(timed([JRDCTL, "--config", str(j.config_path), "status"]))
        # supervisorctl exits 3 when a program is not RUNNING; the time is what counts.
        out["supervisorctl"].append(timed([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf, "status"],
                                          check=False))
        out["python"].append(timed([sys.executable, "-c", "pass"]))
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


READING = (
    "Part of `jrdctl status` is Python starting (the `python -c pass` row) and importing jrd's config "
    "module; the answer asks supervisord and, through nginx over TLS, whether Jupyter answers at that "
    "moment, so it is the real state and not what supervisord believes.",
    "`restart jupyter` costs Jupyter's own cold start plus its graceful shutdown (it stops its kernels "
    "first), supervisord's `startsecs = 1` before it calls the new process RUNNING, and the first round "
    "trip through nginx: the command returns only once Jupyter answers through nginx.",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--status-runs", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=5, help="restarts of Jupyter, each beside a bare cold start")


def run(args: argparse.Namespace) -> Result:
    j = Jrd(short_tmp())
    j.start()
    try:
        statuses = status_times(j, args.status_runs)
        # Each restart beside a cold start, so that both see the same load on a shared machine.
        restarts, colds = [], []
        for _ in range(args.restarts):
            restarts += restart_times(j, 1)
            colds.append(cold_start(j.user))
    finally:
        j.stop()
        shutil.rmtree(j.base, ignore_errors=True)
    status = summary_ms(statuses["jrdctl"], "status", "`jrdctl status` (a fresh process)", baseline="supervisorctl",
                        goal="< 300 ms")
    status.met = status.median < 300
    return Result([
        status,
        summary_ms(statuses["supervisorctl"], "supervisorctl", "baseline: `supervisorctl status`, same supervisord"),
        summary_ms(statuses["python"], "python", "baseline: `python -c pass` (interpreter start alone)"),
        summary(restarts, "restart", "`jrdctl restart jupyter --yes`, until Jupyter serves through nginx",
                baseline="cold_start"),
        summary(colds, "cold_start", "baseline: bare `jupyter lab` cold start, exec to first 200 on /api"),
    ], params={"jupyter_user": j.user})


if __name__ == "__main__":
    sys.exit(figures.main("ctl", __doc__, add_arguments, run, READING))

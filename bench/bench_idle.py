#!/usr/bin/env python3
"""Benchmark: what idle tracking costs jrd in CPU, and how soon after the deadline the stop command runs.

1. CPU: two jrds in the same run, one with `[idle]` off and one on with a
   long timeout (the default sampling, every 30 s), sampled over the same
   windows; jrd's own process (all its threads) plus its reaped children
   (nvidia-smi, wall), in % of one core; medians over the windows.  A third
   jrd samples every second (a 20 s timeout) to show the cost per sample.
2. Delay: a jrd with an 18 s timeout whose command records the time it ran;
   the delay is that time minus the stop time jrd announced (`jrdctl idle`).

Usage: .venv/bin/python bench/bench_idle.py [--window 60] [--windows 3] [--stops 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import Jrd, short_tmp, wait_for  # noqa: E402
from test_idle_integration import RECORDER, runs  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def make(idle: str) -> Jrd:
    j = Jrd(short_tmp())
    script = j.base / "recorder.py"
    script.write_text(RECORDER)
    command = json.dumps([sys.executable, str(script), str(j.base / "stopped"), str(j.jupyter_port), "0"])
    j.write_config(f"[idle]\n{idle}\ncommand = {command}\n" if idle else "")
    return j


def cpu_benchmark(window: float, windows: int) -> dict[str, Any]:
    jrds = {"off": make(""), "on (every 30 s)": make("shutdown_after_minutes = 600\nwarn_minutes = 10"),
            "on (every 1 s)": make("shutdown_after_minutes = 0.34\nwarn_minutes = 0.1")}
    try:
        for j in jrds.values():
            j.start()
        time.sleep(20)  # past Jupyter's start-up
        samples: dict[str, list[float]] = {name: [] for name in jrds}
        for _ in range(windows):
            before = {name: (cpu_seconds(j.proc.pid), time.monotonic()) for name, j in jrds.items()}
            time.sleep(window)
            for name, j in jrds.items():
                cpu, at = before[name]
                samples[name].append((cpu_seconds(j.proc.pid) - cpu) / (time.monotonic() - at) * 100)
        # The 1 s one stops its idle Jupyter after 20 s and goes on sampling (Jupyter's API then refuses at once).
        return {name: {"median_percent": round(statistics.median(v), 4), "windows": [round(x, 4) for x in v]}
                for name, v in samples.items()}
    finally:
        for j in jrds.values():
            j.stop()
            shutil.rmtree(j.base, ignore_errors=True)


def delay_benchmark(stops: int) -> dict[str, Any]:
    delays = []
    for _ in range(stops):
        j = make("shutdown_after_minutes = 0.3\nwarn_minutes = 0.1")
        try:
            j.start()
            wait_for(lambda: "will stop in" in j.read_output(), 60, "the warning")  # noqa: B023
            stop_at = json.loads(j.jrdctl("idle", "--json").stdout)["stop_at"]
            wait_for(lambda: runs(j.base / "stopped"), 120, "the command")  # noqa: B023
            delays.append(runs(j.base / "stopped")[0][0] - stop_at)
        finally:
            j.stop()
            shutil.rmtree(j.base, ignore_errors=True)
    return {"median_seconds": round(statistics.median(delays), 2), "delays": [round(d, 2) for d in delays]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--stops", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = {"cpu": cpu_benchmark(args.window, args.windows), "deadline_to_command": delay_benchmark(args.stops),
              "cores": os.cpu_count(), "loadavg": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, r in result["cpu"].items():
            print(f"jrd CPU, idle tracking {name}: median {r['median_percent']:.4f} % of a core {r['windows']}")
        d = result["deadline_to_command"]
        print(f"deadline -> command: median {d['median_seconds']:.2f} s {d['delays']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

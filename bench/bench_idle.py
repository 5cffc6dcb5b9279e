"""Idle stop: what idle tracking costs jrd in CPU, and how soon after the deadline the stop command runs.

1. CPU: two jrds in the same run, one with `[idle]` off and one on with a
   long timeout (the default sampling, every 30 s), sampled over the same
   windows; jrd's own process (all its threads) plus its reaped children
   (nvidia-smi, wall), in % of one core; medians over the windows.  A third
   jrd samples every second (a 20 s timeout) to show the cost per sample.
2. Delay: a jrd with an 18 s timeout whose command records the time it ran;
   the delay is that time minus the stop time jrd announced (`jrdctl idle`).

Run:  .venv/bin/python bench/bench_idle.py [--window 30] [--windows 3] [--stops 2]
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

import figures
from conftest import Jrd, short_tmp, wait_for
from figures import Figure, Result, summary
from test_idle_integration import RECORDER, runs

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


def cpu_benchmark(window: float, windows: int) -> dict[str, list[float]]:
    """% of a core per window, for each jrd."""
    jrds = {"off": make(""), "on": make("shutdown_after_minutes = 600\nwarn_minutes = 10"),
            "every_second": make("shutdown_after_minutes = 0.34\nwarn_minutes = 0.1")}
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
        return samples
    finally:
        for j in jrds.values():
            j.stop()
            shutil.rmtree(j.base, ignore_errors=True)


def delay_benchmark(stops: int) -> list[float]:
    """Seconds from the announced stop time to the command, once per fresh jrd."""
    delays = []
    for _ in range(stops):
        j = make("shutdown_after_minutes = 0.3\nwarn_minutes = 0.1")
        try:
            j.start()
            wait_for(lambda: "will stop in" in j.read_output(), 60, "the warning")
            stop_at = json.loads(j.jrdctl("idle", "--json").stdout)["stop_at"]
            wait_for(lambda: runs(j.base / "stopped"), 120, "the command")
            delays.append(runs(j.base / "stopped")[0][0] - stop_at)
        finally:
            j.stop()
            shutil.rmtree(j.base, ignore_errors=True)
    return delays


READING = (
    "A sample asks Jupyter for its kernels (`no_track_activity=1`), reads the process tree of Jupyter in "
    "/proc, stats the ptys of its terminals and utmp, and walks its root dir for the newest mtime (at most "
    "20 000 entries).",
    "With the default sampling every 30 s, the command runs at most about 30 s after the deadline, plus the "
    "time Jupyter takes to stop (its kernels shut down first).",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--window", type=float, default=30.0, help="seconds per CPU window")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--stops", type=int, default=2)


def run(args: argparse.Namespace) -> Result:
    cpu = {k: [round(v, 4) for v in vs] for k, vs in cpu_benchmark(args.window, args.windows).items()}
    delays = delay_benchmark(args.stops)
    extra = statistics.median(cpu["on"]) - statistics.median(cpu["off"])
    tick = 100 / os.sysconf("SC_CLK_TCK") / args.window  # one clock tick per window, in % of a core
    return Result([
        Figure("cpu_on", "jrd CPU, idle tracking on (default sampling, every 30 s)", "% of a core", cpu["on"],
               baseline="cpu_off", goal="< +0.1 % over off", met=extra < 0.1, judged=f"{extra:+.3f} % over off"),
        Figure("cpu_off", "baseline: jrd CPU, idle tracking off", "% of a core", cpu["off"]),
        Figure("cpu_every_second", "jrd CPU, sampling every second (a 20 s timeout)", "% of a core",
               cpu["every_second"], baseline="cpu_off"),
        summary(delays, "deadline_to_command", "announced stop time → stop command ran (sampling every 1.2 s)",
                goal="< 60 s", met=max(delays) < 60, judged=f"the worst, {max(delays):.1f} s"),
    ], notes=[f"idle tracking on minus off (medians): {extra:+.3f} % of a core; one clock tick per window is "
              f"{tick:.3f} %, the resolution of /proc"])


if __name__ == "__main__":
    sys.exit(figures.main("idle", __doc__, add_arguments, run, READING))

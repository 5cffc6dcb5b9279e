"""Recovery: how fast jrd serves again after each kind of death, beside what the old recipe gets.

Starts a real jrd (supervisord, nginx, JupyterLab) in /tmp on loopback ports and measures, from the
SIGKILL to the first 200 from Jupyter's /api through nginx (polled every 10 ms):

1. `kill -9` of Jupyter, beside a bare `jupyter lab` cold start (exec to first 200) and beside plain
   supervisord with its default settings running the same `jupyter lab` (kill -9 to first 200);
2. `kill -9` of nginx's master (the case that once stayed down for good);
3. `kill -9` of supervisord;
4. a crash loop: Jupyter's port taken by another process, Jupyter killed so that it fails again and
   again until jrd holds it back, then the port freed: time from freeing it to serving.

Run:  .venv/bin/python bench/bench_recovery.py [--trials 5] [--crash-loops 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import figures
from baselines import answers, cold_start, lab_argv
from conftest import Jrd, free_port, short_tmp, wait_for
from figures import Result, summary
from jrd import leftovers
from test_faults import FAST_HEALTH, hold_port, nginx_masters, probed_ok_since, supervisord_pid

POLL = 0.01


def until(predicate: Callable[[], bool], timeout: float = 120, what: str = "recovery") -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(POLL)
    raise SystemExit(f"no {what} within {timeout:.0f} s")


def settle(j: Jrd, program: str) -> None:
    """Serving, seen healthy by jrd's own probe, and started as far as supervisord is concerned (RUNNING,
    past its startsecs), before the next kill: a kill before that is a failed start, which supervisord
    retries only after its backoff (about 2 s for nginx), a different fault from the one measured here."""
    wait_for(j.serving, 120, "serving")
    now = time.time()
    wait_for(lambda: probed_ok_since(j, program, now), 60, f"a passing probe of {program}")
    wait_for(lambda: supervisord_state(j, program) == "RUNNING", 60, f"supervisord to count {program} as started")


def supervisord_state(j: Jrd, program: str) -> str:
    out = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c",
                          str(j.run_dir / "supervisor" / "supervisord.conf"), "status", program],
                         capture_output=True, text=True, timeout=30).stdout.split()
    return out[1] if len(out) > 1 else ""


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
command = {' '.join(lab_argv(port, base, user))}
directory = {base}
{'user = ' + user if os.geteuid() == 0 else ''}
environment = HOME="{base}",JUPYTER_RUNTIME_DIR="{base}/rt"
""")
    sv = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"

    def pid() -> int:
        out = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "pid", "jupyter"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return int(out) if out.isdigit() else 0

    out = []
    try:
        for _ in range(n):
            until(lambda: answers(api))
            old = pid()
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            until(lambda: not answers(api), 10)
            until(lambda: answers(api))
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


READING = (
    "nginx's master: a pidfd death watch pokes supervisord the moment the master dies (supervisord itself "
    "looks once a second), and `jrd.prestart` ends the dead master's workers, which still hold the port, "
    "and removes its stale socket before the new nginx starts.",
    "Each kill comes once supervisord counts the program as started (RUNNING, past its startsecs). A kill "
    "within nginx's first second is a failed start to supervisord, retried after its backoff: about 2 s "
    "(earlier runs, which waited only for a passing probe, had one such trial in five).",
    "Jupyter: jrd notices the death and pokes supervisord within milliseconds; the rest is Jupyter's own "
    "start as the Jupyter account with jrd's config and its first answer through nginx. Plain supervisord "
    "with its defaults notices the death up to a second late, and nothing pokes it.",
    "supervisord: jrd ends what the dead supervisord left (its programs, reparented to jrd, a subreaper), "
    "starts it again and so Jupyter from cold: about one cold start. The old nginx and Jupyter keep serving "
    "until jrd ends them.",
    "Crash loop: jrd tries again after 1 s, 2 s, 4 s ...; the first try after the cause is gone succeeds, so "
    "the time is one Jupyter start plus the wait for that try.",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--trials", type=int, default=5, help="kills of Jupyter and of nginx; cold starts")
    ap.add_argument("--crash-loops", type=int, default=2)


def run(args: argparse.Namespace) -> Result:
    j = Jrd(short_tmp(), FAST_HEALTH)
    j.start()
    try:
        # Each kill beside a cold start, so that both see the same load on a shared machine.
        jupyter, colds = [], []
        for _ in range(args.trials):
            jupyter += trials(j, 1, "jupyter", lambda: j.supervisor_pid("jupyter"), "jupyter")
            colds.append(cold_start(j.user))
        nginx = trials(j, args.trials, "nginx", lambda: (nginx_masters(j) or [0])[0], "nginx master")
        supervisord = trials(j, 3, "jupyter", lambda: first_supervisord(j), "supervisord")
        loops = crash_loops(j, args.crash_loops)
    finally:
        j.stop()
        shutil.rmtree(j.base, ignore_errors=True)
    plain = plain_supervisord(j.user, args.trials)
    over_cold = statistics.median(jupyter) - statistics.median(colds)
    return Result([
        summary(jupyter, "jupyter", "`kill -9` of Jupyter → serving through nginx", baseline="cold_start",
                goal="≤ cold start + 0.3 s", met=over_cold <= 0.3, judged=f"{over_cold:+.2f} s over the cold start"),
        summary(colds, "cold_start", "baseline: bare `jupyter lab` cold start"),
        summary(plain, "plain_supervisord", "baseline: plain supervisord (defaults), `kill -9` of Jupyter → 200",
                baseline="cold_start"),
        summary(nginx, "nginx", "`kill -9` of nginx's master → a new master serving", goal="< 0.5 s",
                met=statistics.median(nginx) < 0.5),
        summary(supervisord, "supervisord", "`kill -9` of supervisord → serving again (stack ended, restarted)",
                baseline="cold_start"),
        summary(loops, "crash_loop", "crash loop held back, cause removed → serving", baseline="cold_start"),
    ], notes=[f"jrd's Jupyter recovery minus the bare cold start (medians): {over_cold:+.2f} s"],
        params={"jupyter_user": j.user, "supervisord_kills": 3})


if __name__ == "__main__":
    sys.exit(figures.main("recovery", __doc__, add_arguments, run, READING))

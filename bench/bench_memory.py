"""Memory: what jrd's processes hold while it is idle and serving, beside a bare `jupyter lab` and nginx.

Starts a real jrd (supervisord, nginx, JupyterLab as the unprivileged account) in /tmp on loopback
ports, logs in and loads /lab once in Chromium, scrapes /metrics once, lets it settle, then samples
every process of the stack a few seconds apart.  Then the same for the baseline: a bare `jupyter lab`
behind a bare nginx (a minimal reverse-proxy config, plain HTTP), loaded the same way.

Two measures per process, from /proc:

* RSS, what `ps` and `top` show: every page the process has in memory, including the code it shares
  with the others (each of jrd, supervisord, the event listener and Jupyter maps the same Python
  interpreter, so a sum of RSS counts it four times);
* PSS, where each shared page is split evenly among the processes that map it, so that the figures
  add up to what the stack really holds.  As root, the split is computed among the stack's own
  processes from /proc/PID/pagemap (the PSS the stack would have on a machine of its own); the
  kernel's own PSS also splits pages with unrelated programs (other Pythons on a shared machine),
  which would flatter the figure and change from run to run.  Without root, the kernel's PSS is used.

The goal (≤ 75 MiB for the supervising layer: jrd, supervisord and the event listener together) is
judged on PSS, the only one of the two whose sum is not inflated by counting shared code again and
again; RSS is reported beside it.

Run:  .venv/bin/python bench/bench_memory.py [--samples 3] [--settle 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import urllib.request
from array import array
from collections import Counter

import figures
from baselines import BareLab, BareNginx
from bench_page import load_lab_once
from conftest import Jrd, descendants, ensure_test_user, short_tmp
from figures import Figure, Result
from test_faults import cmdline

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63
PFN = (1 << 55) - 1
MIB = 2**20
LAYER = ("jrd", "supervisord", "event listener")  # the supervising layer the goal is about
GOAL_MIB = 75


def rss(pid: int) -> int:
    """Bytes resident, from smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Rss:"))


def kernel_pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def frames(pid: int) -> list[int]:
    """The physical page frames the process has resident (all zero without CAP_SYS_ADMIN)."""
    out: list[int] = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            if line.rstrip().endswith("[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            pagemap.seek(start // PAGE * 8)
            out.extend(e & PFN for e in array("Q", pagemap.read((end - start) // PAGE * 8)) if e & PRESENT)
    return out


def stack_pss(pids: list[int]) -> dict[int, float] | None:
    """Each process's PSS in bytes, shared pages split among `pids` only; None if frames cannot be read."""
    by_pid = {pid: frames(pid) for pid in pids}
    if not any(any(f) for f in by_pid.values()):
        return None
    mapped = Counter(f for fs in by_pid.values() for f in fs)
    return {pid: sum(PAGE / mapped[f] for f in fs) for pid, fs in by_pid.items()}


def sample(groups: dict[str, list[int]]) -> dict[str, tuple[float, float]]:
    """(RSS, PSS) in MiB per group of processes."""
    pids = [p for ps in groups.values() for p in ps]
    pss = stack_pss(pids) or {p: kernel_pss(p) for p in pids}
    return {name: (sum(rss(p) for p in ps) / MIB, sum(pss[p] for p in ps) / MIB) for name, ps in groups.items()}


def jrd_groups(j: Jrd) -> dict[str, list[int]]:
    """jrd's processes by role; Jupyter with everything below it (kernels, terminals)."""
    assert j.proc is not None
    below = {p: cmdline(p) for p in descendants(j.proc.pid)}
    jupyter = j.supervisor_pid("jupyter")
    return {
        "jrd": [j.proc.pid],
        "supervisord": [p for p, c in below.items() if "supervisor.supervisord" in c],
        "event listener": [p for p, c in below.items() if "event_listener" in c],
        "nginx": [p for p, c in below.items() if c.startswith("nginx:")],
        "Jupyter": [jupyter, *descendants(jupyter)],
    }


def samples(groups: dict[str, list[int]], n: int, gap: float = 5) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in groups}
    for i in range(n):
        if i:
            time.sleep(gap)
        for name, value in sample(groups).items():
            out[name].append(value)
    return out


def measure_jrd(user: str, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    j = Jrd(short_tmp(), user=user)
    try:
        j.start()
        load_lab_once(j, None)
        urllib.request.urlopen(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=30).read()
        time.sleep(args.settle)
        return samples(jrd_groups(j), args.samples)
    finally:
        j.stop()
        shutil.rmtree(j.base, ignore_errors=True)


def measure_bare(user: str, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    lab = BareLab(user)
    nginx = None
    try:
        lab.start()
        nginx = BareNginx(lab.port)
        load_lab_once(None, lab, base=nginx.url("").rstrip("/"))
        time.sleep(args.settle)
        return samples({"Jupyter": [lab.pid, *descendants(lab.pid)], "nginx": nginx.pids()}, args.samples)
    finally:
        if nginx is not None:
            nginx.stop()
        lab.stop()


READING = (
    "jrd's own memory is mostly the code of the modules it uses while it runs: cryptography (its Rust "
    "library alone is about 7 MiB resident), ssl and http.client for the probes through nginx, "
    "prometheus_client, watchdog, xmlrpc.client. Importing them later would not lower the idle figure: the "
    "certificate is checked at start and at every renewal check, the probes and the watcher run all the "
    "time, and a module once imported stays. Only moving the certificate work into a short-lived helper "
    "process would save the cryptography part.",
    "supervisord's is its own modules (XML-RPC, its HTTP server, configparser, http.client with ssl and "
    "email). How it is launched barely changes it: `-I`, `-S` with an explicit path and MALLOC_ARENA_MAX=1 "
    "saved at most 0.2 MiB; `-OO` would need bytecode caches of its own, which a read-only install never "
    "writes, and compiling every module instead cost 3 MiB more.",
    "The event listener runs as a script with `python -I -S` and imports only built-in modules (`_socket`, "
    "`sys`), so it holds little more than the interpreter. Before commit 3201a20 it ran as "
    "`python -m jrd.event_listener` through site-packages and imported json, socket and typing; the same "
    "bench on the commit before (ec109cf, raw figures in docs/bench/memory-before-ec109cf.json) measured "
    "the listener at 11.6 MiB RSS / 7.1 MiB PSS and the supervising layer at 77.0 MiB RSS / 55.2 MiB PSS.",
    "Jupyter's PSS under jrd is a little lower than the bare one's although its RSS is the same: it shares "
    "the interpreter's code with three more Python processes, so its share of those pages is smaller.",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--samples", type=int, default=3, help="samples of each stack, 5 s apart")
    ap.add_argument("--settle", type=float, default=15, help="seconds between the /lab load and the first sample")


def run(args: argparse.Namespace) -> Result:
    user = ensure_test_user()
    jrd = measure_jrd(user, args)
    bare = measure_bare(user, args)
    exact = os.geteuid() == 0

    def mib(stack: dict[str, list[tuple[float, float]]], names: tuple[str, ...], which: int) -> list[float]:
        return [round(sum(stack[name][i][which] for name in names), 2) for i in range(args.samples)]

    out = []
    for which, measure in ((1, "PSS"), (0, "RSS")):
        m = measure.lower()
        layer = Figure(f"layer_{m}", f"supervising layer (jrd + supervisord + event listener), {measure}", "MiB",
                       mib(jrd, LAYER, which), goal=f"≤ {GOAL_MIB} MiB" + ("" if which else " (judged on PSS)"))
        layer.met = layer.median <= GOAL_MIB if which else None
        out += [layer, *(Figure(f"{name.replace(' ', '_')}_{m}", f"{name}, {measure}", "MiB", mib(jrd, (name,), which))
                         for name in LAYER)]
        out += [
            Figure(f"nginx_{m}", f"nginx under jrd (master + workers), {measure}", "MiB", mib(jrd, ("nginx",), which),
                   baseline=f"bare_nginx_{m}"),
            Figure(f"bare_nginx_{m}", f"baseline: bare nginx (master + workers), {measure}", "MiB",
                   mib(bare, ("nginx",), which)),
            Figure(f"jupyter_{m}", f"Jupyter under jrd, {measure}", "MiB", mib(jrd, ("Jupyter",), which),
                   baseline=f"bare_jupyter_{m}"),
            Figure(f"bare_jupyter_{m}", f"baseline: bare `jupyter lab`, {measure}", "MiB",
                   mib(bare, ("Jupyter",), which)),
            Figure(f"stack_{m}", f"whole stack under jrd, {measure}", "MiB", mib(jrd, tuple(jrd), which),
                   baseline=f"bare_stack_{m}"),
            Figure(f"bare_stack_{m}", f"baseline: bare `jupyter lab` + bare nginx, {measure}", "MiB",
                   mib(bare, tuple(bare), which)),
        ]
    layer_rss = statistics.median(mib(jrd, LAYER, 0))
    how = "split among each stack's own processes (pagemap)" if exact else "the kernel's (smaps_rollup)"
    return Result(out, params={"pss": how},
                  notes=[f"PSS here is {how}; the supervising layer's RSS ({layer_rss:.1f} MiB) counts the "
                         "interpreter's shared code once per process"])


if __name__ == "__main__":
    sys.exit(figures.main("memory", __doc__, add_arguments, run, READING))

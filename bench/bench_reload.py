"""Reload: how fast a config edit is live, and what clients see meanwhile.

Starts a real jrd (supervisord, nginx, JupyterLab) in /tmp on loopback ports and
measures:

1. latency: from the atomic rename of an edited jrd.toml to the first request
   that nginx answers with the new config (a new client_max_body_size, seen
   as a 413 for a body one byte larger), over many edits;
2. failed requests under continuous load while reloading, for clients on
   fresh connections and on keep-alive connections, during config edits
   applied by jrd and, in the same run, during bare `kill -HUP` of the nginx
   master (what `nginx -s reload` does).

Run:  .venv/bin/python bench/bench_reload.py [--edits 25] [--reloads 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time

import requests

import figures
from conftest import Jrd, short_tmp, wait_for
from figures import Result, count, summary_ms
from test_reload import MIB, body_status, config, reload_lines, write_atomically


def latency(j: Jrd, edits: int, start_limit: int) -> list[float]:
    out = []
    limit = start_limit
    for _ in range(edits):
        limit -= 2
        before = len(reload_lines(j, "applied"))
        t0 = time.monotonic()
        write_atomically(j.config_path, config(j, limit))
        while body_status(j, limit * MIB + 1) != 413:
            if time.monotonic() - t0 > 10:
                raise SystemExit(f"edit to {limit}m was not live after 10 s")
            # Probe every 10 ms: a tighter loop only competes with jrd and nginx for the CPUs.
            time.sleep(0.01)
        out.append(time.monotonic() - t0)
        wait_for(lambda: len(reload_lines(j, "applied")) > before, 10, "the reload line")
        time.sleep(0.3)  # let the old nginx workers go before the next edit
    return out


class Clients:
    """`fresh` threads open a new TLS connection per request; `keepalive` threads reuse one session."""

    def __init__(self, j: Jrd, fresh: int = 2, keepalive: int = 2):
        self.j = j
        self.stop = threading.Event()
        self.counts = {"fresh": [0, 0], "keepalive": [0, 0]}  # [ok, failed]
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=("fresh",), daemon=True) for _ in range(fresh)]
        self.threads += [threading.Thread(target=self.run, args=("keepalive",), daemon=True) for _ in range(keepalive)]

    def run(self, kind: str) -> None:
        session = self.j.session()
        while not self.stop.is_set():
            if kind == "fresh":
                session.close()
                session = self.j.session()
            try:
                ok = session.get(self.j.url("/api"), timeout=10).status_code == 200
                err = "" if ok else "HTTP status"
            except requests.RequestException as exc:
                ok, err = False, f"{type(exc).__name__}"
            with self.lock:
                self.counts[kind][0 if ok else 1] += 1
                if err:
                    self.errors.append(f"{kind}: {err}")
        session.close()

    def __enter__(self) -> "Clients":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def under_load(j: Jrd, reloads: int, action, gap: float = 0.6) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    with Clients(j) as clients:
        time.sleep(0.5)
        for i in range(reloads):
            action(i)
            time.sleep(gap)
        time.sleep(0.5)
    return {k: list(v) for k, v in clients.counts.items()}


READING = (
    "Where the time goes: about 30 ms of quiet period after the rename, then loading, validating and "
    "rendering the config and `nginx -t` on a staged copy, a HUP, and nginx starting new workers and "
    "retiring the old ones.",
    "A failure on a keep-alive connection is nginx's own race, the same with a bare HUP: an old worker "
    "closes an idle keep-alive connection just as the client sends its next request on it (browsers "
    "retry). Fresh connections should never fail.",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--edits", type=int, default=25)
    ap.add_argument("--reloads", type=int, default=15)


def run(args: argparse.Namespace) -> Result:
    j = Jrd(short_tmp())
    j.start()
    try:
        lat = latency(j, args.edits, 1000)
        limits = iter(range(800, 600, -2))
        edits = under_load(j, args.reloads, lambda i: write_atomically(j.config_path, config(j, next(limits))))
        nginx_master = j.supervisor_pid("nginx")
        hups = under_load(j, args.reloads, lambda i: os.kill(nginx_master, signal.SIGHUP))
    finally:
        j.stop()
        shutil.rmtree(j.base, ignore_errors=True)
    live = summary_ms(lat, "edit_to_live", "config edit (atomic rename) → new nginx config answering",
                      goal="< 300 ms at p95")
    live.met, live.judged = live.percentile(95) < 300, f"p95 {live.percentile(95):.0f} ms"
    n = args.reloads
    return Result([
        live,
        count(*failed_of(edits["fresh"]), "jrd_fresh", f"failed requests during {n} jrd reloads, fresh connections",
              baseline="hup_fresh", goal="0", met=edits["fresh"][1] == 0, judged="the count"),
        count(*failed_of(hups["fresh"]), "hup_fresh", f"baseline: same during {n} bare `kill -HUP` of nginx"),
        count(*failed_of(edits["keepalive"]), "jrd_keepalive",
              f"failed requests during {n} jrd reloads, keep-alive clients", baseline="hup_keepalive"),
        count(*failed_of(hups["keepalive"]), "hup_keepalive", f"baseline: same during {n} bare `kill -HUP` of nginx"),
    ], notes=[f"edit → live p95: {live.percentile(95):.0f} ms, worst {max(live.samples):.0f} ms"])


def failed_of(counts: list[int]) -> tuple[int, int]:
    ok, failed = counts
    return failed, ok + failed


if __name__ == "__main__":
    sys.exit(figures.main("reload", __doc__, add_arguments, run, READING))

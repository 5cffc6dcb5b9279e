"""Metrics: the /metrics endpoint and jrd's idle CPU, on a real jrd.

Measures, on one jrd (supervisord, nginx, JupyterLab) started in /tmp on
loopback ports with the default [health] settings:
  1. scrape latency, median and p99 over N scrapes (a new connection each, as
     Prometheus makes one per scrape when keep-alive is off), against a
     baseline measured in the same run: a prometheus_client server in this
     process with only the standard process and Python collectors, which is
     the floor that the HTTP server and the text format cost;
  2. the time per source inside a scrape (jrd_scrape_collector_duration_seconds);
  3. the number of series in one scrape;
  4. jrd's idle CPU over a quiet period (no scrapes, health probes running),
     for the jrd process alone; supervisord and the event listener beside it.
     (Memory: bench/bench_memory.py.)

Run:  .venv/bin/python bench/bench_metrics.py [--scrapes 500] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client import start_http_server

import figures
from conftest import Jrd, descendants, short_tmp
from figures import Figure, Result, summary_ms
from test_faults import cmdline

TICKS = os.sysconf("SC_CLK_TCK")


def scrape_once(port: int) -> tuple[float, bytes]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"scrape answered HTTP {resp.status}")
    return time.perf_counter() - start, body


def latencies(port: int, n: int) -> list[float]:
    for _ in range(20):
        scrape_once(port)  # warm up
    return [scrape_once(port)[0] for _ in range(n)]


def series(body: bytes) -> tuple[int, int]:
    lines = [l for l in body.decode().splitlines() if l and not l.startswith("#")]
    return len(lines), sum(1 for l in lines if l.startswith("jrd_"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def baseline_server() -> tuple[Any, int]:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    return server, server.server_port


def source_times(body: bytes) -> dict[str, float]:
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("jrd_scrape_collector_duration_seconds{"):
            name = line.split('"')[1]
            out[name] = round(float(line.rsplit(" ", 1)[1]) * 1000, 2)
    return out


READING = (
    "A scrape asks Jupyter, supervisord and nginx (in parallel) and reads /proc; the baseline asks nobody, "
    "so the ratio is the price of those three round trips on 2 shared cores. Even the worst scrape is far "
    "below Prometheus's default 10 s scrape_timeout.",
    "jrd's idle CPU is mostly the health probe every 15 s.",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--scrapes", type=int, default=500)
    ap.add_argument("--idle-seconds", type=float, default=30)


def run(args: argparse.Namespace) -> Result:
    j = Jrd(short_tmp())
    try:
        j.start()
        assert j.proc is not None
        pid = j.proc.pid
        # Wait for the first health probes, so that every source is warm.
        time.sleep(1)
        cpu_before = cpu_seconds(pid)
        jrd_lat = latencies(j.metrics_port, args.scrapes)
        cpu_per_scrape = (cpu_seconds(pid) - cpu_before) / (args.scrapes + 20)
        _, body = scrape_once(j.metrics_port)
        total, own = series(body)
        server, port = baseline_server()
        try:
            base_lat = latencies(port, args.scrapes)
        finally:
            server.shutdown()
            server.server_close()

        # Quiet period: nothing scrapes; the health timer keeps running.
        helpers = {p: cmdline(p) for p in descendants(pid)}
        watched = {"jrd": pid, "supervisord": next(p for p, c in helpers.items() if "supervisord" in c),
                   "event listener": next(p for p, c in helpers.items() if "event_listener" in c)}
        before = {k: cpu_seconds(p) for k, p in watched.items()}
        t0 = time.monotonic()
        time.sleep(args.idle_seconds)
        elapsed = time.monotonic() - t0
        idle = {k: 100 * (cpu_seconds(p) - before[k]) / elapsed for k, p in watched.items()}
    finally:
        j.stop(signal.SIGTERM, timeout=60)
        shutil.rmtree(j.base, ignore_errors=True)
    scrape = summary_ms(jrd_lat, "scrape", "scrape latency (a new connection each)", baseline="scrape_baseline",
                        goal="p99 < 25 ms")
    scrape.met, scrape.judged = scrape.percentile(99) < 25, f"p99 {scrape.percentile(99):.1f} ms"
    per_source = ", ".join(f"{name} {ms:.2f}" for name, ms in source_times(body).items())
    return Result([
        scrape,
        summary_ms(base_lat, "scrape_baseline", "baseline: prometheus_client with only its process and GC collectors"),
        Figure("cpu_per_scrape", "jrd's CPU per scrape, all threads", "ms", [round(cpu_per_scrape * 1000, 2)]),
        Figure("idle_jrd", f"jrd idle CPU over {elapsed:.0f} s (health probes running)", "% of a core",
               [round(idle["jrd"], 3)], goal="< 0.5 %", met=idle["jrd"] < 0.5, judged="the one window"),
        *(Figure(f"idle_{k.replace(' ', '_')}", f"{k} idle CPU, same window", "% of a core", [round(idle[k], 3)])
          for k in ("supervisord", "event listener")),
    ], notes=[f"scrape latency p99: {scrape.percentile(99):.1f} ms, worst {max(scrape.samples):.1f} ms",
              f"series per scrape: {total} ({own} of them jrd_*)",
              f"time per source in one scrape (ms): {per_source}"])


if __name__ == "__main__":
    sys.exit(figures.main("metrics", __doc__, add_arguments, run, READING))

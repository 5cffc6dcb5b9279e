#!/usr/bin/env python3
"""Benchmark: the /metrics endpoint and jrd's own footprint, on a real jrd.

Measures, on one jrd (supervisord, nginx, JupyterLab) started in /tmp on
loopback ports with the default [health] settings:
  1. scrape latency, median and p99 over N scrapes (a new connection each, as
     Prometheus makes one per scrape when keep-alive is off), against a
     baseline measured in the same run: a prometheus_client server in this
     process with only the standard process and Python collectors, which is
     the floor that the HTTP server and the text format cost;
  2. the time per source inside a scrape (jrd_scrape_collector_duration_seconds);
  3. the number of series in one scrape;
  4. jrd's own RSS, and its idle CPU over a quiet period (no scrapes, health
     probes running), for the jrd process alone; supervisord and the event
     listener are reported beside it.

Usage: .venv/bin/python bench/bench_metrics.py [--scrapes 1000] [--idle-seconds 60] [--json]
Runs in about a minute and a half.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import Jrd, descendants, short_tmp  # noqa: E402
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector  # noqa: E402
from prometheus_client import start_http_server  # noqa: E402

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


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def series(body: bytes) -> tuple[int, int]:
    lines = [l for l in body.decode().splitlines() if l and not l.startswith("#")]
    return len(lines), sum(1 for l in lines if l.startswith("jrd_"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


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


def run(scrapes: int, idle_seconds: float) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    j = Jrd(short_tmp())
    try:
        j.start()
        assert j.proc is not None
        pid = j.proc.pid
        # Wait for the first health probes, so that every source is warm.
        time.sleep(1)
        cpu_before = cpu_seconds(pid)
        jrd_lat = latencies(j.metrics_port, scrapes)
        cpu_per_scrape = (cpu_seconds(pid) - cpu_before) / (scrapes + 20)
        _, body = scrape_once(j.metrics_port)
        total, own = series(body)
        server, port = baseline_server()
        try:
            base_lat = latencies(port, scrapes)
        finally:
            server.shutdown()
            server.server_close()

        # Quiet period: nothing scrapes; the health timer keeps running.
        helpers = {p: cmdline(p) for p in descendants(pid)}
        supervisord = next(p for p, c in helpers.items() if "supervisord" in c)
        listener = next((p for p, c in helpers.items() if "jrd.events" in c), None)
        watched = {"jrd": pid, "supervisord": supervisord, **({"event_listener": listener} if listener else {})}
        before = {k: cpu_seconds(p) for k, p in watched.items()}
        t0 = time.monotonic()
        time.sleep(idle_seconds)
        elapsed = time.monotonic() - t0
        idle_cpu = {k: round(100 * (cpu_seconds(p) - before[k]) / elapsed, 3) for k, p in watched.items()}
        rss = {k: round(rss_bytes(p) / 2**20, 1) for k, p in watched.items()}
        jrd_summary = summary(jrd_lat)
        base_summary = summary(base_lat)
        return {
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "python": platform.python_version(),
            # Other work on the machine shows in the tail latencies: say how busy it was.
            "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "scrapes": scrapes,
            "scrape_jrd": jrd_summary,
            "scrape_baseline_process_python_only": base_summary,
            "ratio_median_vs_baseline": round(jrd_summary["median_ms"] / base_summary["median_ms"], 2),
            "jrd_cpu_ms_per_scrape": round(cpu_per_scrape * 1000, 2),
            "source_ms_in_last_scrape": source_times(body),
            "series_total": total,
            "series_jrd": own,
            "idle_seconds": round(elapsed, 1),
            "idle_cpu_percent_of_one_core": idle_cpu,
            "rss_mib": rss,
        }
    finally:
        j.stop(signal.SIGTERM, timeout=60)
        shutil.rmtree(j.base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.scrapes, args.idle_seconds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s, b = result["scrape_jrd"], result["scrape_baseline_process_python_only"]
    print(f"machine: {result['machine']}, Python {result['python']}, "
          f"load average before/after {result['load_average_1m_before_after']}")
    print(f"scrape latency over {result['scrapes']} scrapes: median {s['median_ms']} ms, p99 {s['p99_ms']} ms, "
          f"max {s['max_ms']} ms (goal p99 < 25 ms)")
    print(f"baseline (process+Python collectors only): median {b['median_ms']} ms, p99 {b['p99_ms']} ms; "
          f"jrd/baseline median ratio {result['ratio_median_vs_baseline']}")
    print(f"jrd's CPU per scrape: {result['jrd_cpu_ms_per_scrape']} ms; "
          f"time per source in one scrape (ms): {result['source_ms_in_last_scrape']}")
    print(f"series: {result['series_total']} in total, {result['series_jrd']} of them jrd_*")
    print(f"idle CPU over {result['idle_seconds']} s (% of one core): {result['idle_cpu_percent_of_one_core']} "
          "(goal for jrd < 0.5)")
    print(f"RSS (MiB): {result['rss_mib']} (goal for jrd < 50 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

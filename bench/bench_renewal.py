#!/usr/bin/env python3
"""Benchmark: certificate renewal under a real jrd (supervisord, nginx, JupyterLab).

Measures, on one jrd started in /tmp on loopback ports:
  1. latency: from sending `renew_cert --force` on the control socket (what
     `jrdctl cert renew --force` does) to the first new TLS handshake that gets
     the new certificate; also how long the renewal itself took to answer;
  2. availability: failed requests out of N for a client making continuous
     HTTPS requests on fresh connections (2 threads) during K back-to-back
     renewals, against two baselines measured in the same run: the same load
     with no renewal at all, and the same load during K hard nginx restarts
     (`supervisorctl restart nginx`, what a hand-made setup does after
     replacing its certificate).

Usage: .venv/bin/python bench/bench_renewal.py [--renewals 10] [--load-seconds 8] [--json]
Runs in about a minute.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from cryptography import x509  # noqa: E402

from conftest import Jrd, short_tmp  # noqa: E402  (the integration tests' way to run a real jrd)
from jrd.control import client as control_client  # noqa: E402


def serial_of(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


class Poller:
    """One thread doing TLS handshakes back to back, recording (time, serial) for each."""

    def __init__(self, j: Jrd):
        self.j = j
        self.ctx = ssl.create_default_context(cafile=str(j.ca))
        self.seen: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with socket.create_connection(("127.0.0.1", self.j.port), timeout=10) as raw:
                with self.ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    self.seen.append((time.perf_counter(), serial_of(tls)))

    def first_seen(self, serial: int, after: float, timeout: float = 10) -> float:
        """When the first handshake completed after `after` got `serial`."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            hit = next((t for t, s in list(self.seen) if t >= after and s == serial), None)
            if hit is not None:
                return hit
            time.sleep(0.005)
        raise RuntimeError(f"serial {serial:x} never seen")


class Load:
    """HTTPS GET /api on a fresh connection per request, from `threads` threads, counting failures."""

    def __init__(self, j: Jrd, threads: int = 2):
        self.j = j
        self.ctx = ssl.create_default_context(cafile=str(j.ca))
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "Load":
        self.started = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.elapsed = time.perf_counter() - self.started

    def _run(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPSConnection("127.0.0.1", self.j.port, timeout=10, context=self.ctx)
            try:
                conn.request("GET", "/api", headers={"Host": f"localhost:{self.j.port}", "Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                with self.lock:
                    if resp.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"HTTP {resp.status}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failures.append(type(exc).__name__)
            finally:
                conn.close()

    def summary(self) -> dict[str, Any]:
        total = self.ok + len(self.failures)
        return {"requests": total, "failed": len(self.failures), "rps": round(total / self.elapsed, 1),
                "failure_kinds": sorted(set(self.failures))}


def renew(j: Jrd) -> int:
    result = control_client.request(j.run_dir / "control.sock", "renew_cert", {"force": True})
    return int(result["serial"], 16)


def measure_latency(j: Jrd, n: int) -> dict[str, Any]:
    poller = Poller(j)
    poller.thread.start()
    answered, served = [], []
    try:
        for _ in range(n):
            time.sleep(0.3)  # let old nginx workers settle between renewals
            t0 = time.perf_counter()
            serial = renew(j)
            t1 = time.perf_counter()
            t2 = poller.first_seen(serial, t0)
            answered.append(t1 - t0)
            served.append(t2 - t0)
    finally:
        poller.stop.set()
        poller.thread.join(10)
    return {
        "renewals": n,
        "answered_median_ms": round(statistics.median(answered) * 1000, 1),
        "served_median_ms": round(statistics.median(served) * 1000, 1),
        "served_max_ms": round(max(served) * 1000, 1),
    }


def under_load(j: Jrd, seconds: float, action: Any, k: int) -> dict[str, Any]:
    with Load(j) as load:
        time.sleep(0.5)
        deadline = time.perf_counter() + seconds
        done = 0
        while done < k:
            action()
            done += 1
        while time.perf_counter() < deadline:
            time.sleep(0.05)
    return {"actions": done, **load.summary()}


def hard_restart_nginx(j: Jrd) -> None:
    conf = j.run_dir / "supervisor" / "supervisord.conf"
    subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "restart", "nginx"],
                   check=True, capture_output=True, timeout=60)


def machine() -> dict[str, str]:
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().rpartition("/")[2]
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    import cryptography

    return {"cpu": cpu, "cores": str(len(os.sched_getaffinity(0))), "nginx": nginx,
            "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
            "cryptography": cryptography.__version__}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--renewals", type=int, default=10, help="K: renewals (and hard restarts) per load run")
    parser.add_argument("--load-seconds", type=float, default=8.0, help="minimum length of each load run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    assert shutil.which("nginx"), "nginx is missing: run scripts/install-system-deps test"

    j = Jrd(short_tmp())
    j.start()
    try:
        out: dict[str, Any] = {"machine": machine()}
        out["latency"] = measure_latency(j, args.renewals)
        out["load_no_renewal"] = under_load(j, args.load_seconds, lambda: None, 0)
        out["load_renewals"] = under_load(j, args.load_seconds, lambda: renew(j), args.renewals)
        out["load_hard_restarts"] = under_load(j, args.load_seconds, lambda: hard_restart_nginx(j), args.renewals)
    finally:
        j.stop(signal.SIGTERM, timeout=60)
        shutil.rmtree(j.base, ignore_errors=True)

    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    m, lat = out["machine"], out["latency"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; nginx {m['nginx']}; Python {m['python']}; {m['openssl']}")
    print(f"renewal answered (median of {lat['renewals']}): {lat['answered_median_ms']} ms")
    print(f"new certificate on new handshakes after the start of a renewal: median {lat['served_median_ms']} ms, "
          f"max {lat['served_max_ms']} ms")
    for key, label in (("load_no_renewal", "no renewal (baseline)"), ("load_renewals", f"{args.renewals} renewals"),
                       ("load_hard_restarts", f"{args.renewals} hard nginx restarts")):
        r = out[key]
        print(f"{label:28s}: {r['failed']} failed of {r['requests']} requests ({r['rps']} req/s) "
              f"{r['failure_kinds'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

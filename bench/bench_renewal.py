"""Renewal: a certificate renewal under a real jrd (supervisord, nginx, JupyterLab).

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

Run:  .venv/bin/python bench/bench_renewal.py [--renewals 10] [--load-seconds 8]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

from cryptography import x509

import figures
from conftest import HandshakeLoad, Jrd, short_tmp
from figures import Result, count, summary_ms
from jrd.control import client as control_client


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


def renew(j: Jrd) -> int:
    result = control_client.request(j.run_dir / "control.sock", "renew_cert", {"force": True})
    return int(result["serial"], 16)


def measure_latency(j: Jrd, n: int) -> tuple[list[float], list[float]]:
    """Seconds from sending each renewal to its answer, and to the first new handshake that gets the new leaf."""
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
    return answered, served


def under_load(j: Jrd, seconds: float, action: Any, k: int) -> dict[str, Any]:
    """`k` actions while two threads GET /api on a fresh TLS connection each; what the clients met."""
    started = time.perf_counter()
    with HandshakeLoad.to(j) as load:
        time.sleep(0.5)
        deadline = time.perf_counter() + seconds
        done = 0
        while done < k:
            action()
            done += 1
        while time.perf_counter() < deadline:
            time.sleep(0.05)
    return {"actions": done, "requests": load.ok + len(load.failures), "failed": len(load.failures),
            "seconds": time.perf_counter() - started,
            "failure_kinds": sorted({failure.split(":")[0] for failure in load.failures})}


def hard_restart_nginx(j: Jrd) -> None:
    conf = j.run_dir / "supervisor" / "supervisord.conf"
    subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "restart", "nginx"],
                   check=True, capture_output=True, timeout=60)


READING = (
    "The gap between the renewal's answer and the new certificate on new handshakes is nginx's graceful "
    "reload: old workers take connections, with the old and still valid certificate, until they close "
    "their listening sockets.",
    "The hard restart baseline (what a hand-made setup does after replacing its certificate) refuses "
    "connections for the whole restart, so its clients make many more, very fast, failing requests; a "
    "graceful reload never closes the listening sockets.",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--renewals", type=int, default=10, help="K: renewals (and hard restarts) per load run")
    ap.add_argument("--load-seconds", type=float, default=8.0, help="minimum length of each load run")


def run(args: argparse.Namespace) -> Result:
    assert shutil.which("nginx"), "nginx is missing: run scripts/install-system-deps test"
    j = Jrd(short_tmp())
    j.start()
    try:
        answered, served = measure_latency(j, args.renewals)
        quiet = under_load(j, args.load_seconds, lambda: None, 0)
        renewals = under_load(j, args.load_seconds, lambda: renew(j), args.renewals)
        restarts = under_load(j, args.load_seconds, lambda: hard_restart_nginx(j), args.renewals)
    finally:
        j.stop(signal.SIGTERM, timeout=60)
        shutil.rmtree(j.base, ignore_errors=True)
    k = args.renewals
    new_leaf = summary_ms(served, "served", "start of a renewal → new certificate on new handshakes",
                          goal="< 1 s", met=max(served) < 1, judged=f"the worst, {max(served) * 1000:.0f} ms")
    return Result([
        summary_ms(answered, "answered", "renewal answered (new key and leaf, atomic write, `nginx -t`, HUP)"),
        new_leaf,
        count(renewals["failed"], renewals["requests"], "load_renewals",
              f"failed HTTPS requests on fresh connections during {k} back-to-back renewals",
              baseline="load_quiet", goal="0", met=renewals["failed"] == 0, judged="the count"),
        count(quiet["failed"], quiet["requests"], "load_quiet", "baseline: same load, no renewal"),
        count(restarts["failed"], restarts["requests"], "load_restarts",
              f"baseline: same load during {k} hard nginx restarts (`supervisorctl restart nginx`)"),
    ], notes=[f"{name}: {r['requests'] / r['seconds']:.0f} requests/s; failures: {', '.join(r['failure_kinds'])}"
              for name, r in (("no renewal", quiet), ("renewals", renewals), ("hard restarts", restarts))
              if r["failure_kinds"]],
        params={"tls": ssl.OPENSSL_VERSION})


if __name__ == "__main__":
    sys.exit(figures.main("renewal", __doc__, add_arguments, run, READING))

"""A real ACME server for tests: Debian's Pebble (Let's Encrypt's test CA) and its DNS stub, on loopback.

Pebble 2.4.0 (Debian 12) validates http-01 for real (PEBBLE_VA_ALWAYS_VALID is
never set here) on the `httpPort` of its config, which the tests point at
jrd's `[acme] http_port`.  Names resolve through `pebble-challtestsrv`'s DNS
server, which answers 127.0.0.1 for any name.  Pebble's own HTTPS listener
gets a certificate made here; its issuing root is new at every start and is
fetched from the management port.  That version has neither profiles nor ARI.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import free_port
from jrd.tls import certs

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


class Pebble:
    """Pebble on loopback ports, validating http-01 on `http_port`; `start()`/`stop()` as often as needed."""

    def __init__(self, base: Path, http_port: int, validity_seconds: int | None = None):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.port = free_port()
        self.management_port = free_port()
        self.dns_port = free_udp_port()
        self.dns_management_port = free_port()
        self.tls_ca = base / "pebble-listener-ca.pem"
        now = certs.utcnow()
        ca, ca_key = certs.make_ca(now, dt.timedelta(days=30), "pebble-test")
        policy = certs.LeafPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        leaf, key = certs.make_leaf(ca, ca_key, policy, now)
        (base / "pebble-cert.pem").write_bytes(certs.pem(leaf))
        (base / "pebble-key.pem").write_bytes(certs.key_pem(key))
        self.tls_ca.write_bytes(certs.pem(ca))
        conf = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(base / "pebble-cert.pem"),
                "privateKey": str(base / "pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        if validity_seconds is not None:
            conf["pebble"]["certificateValidityPeriod"] = validity_seconds
        self.config = base / "pebble-config.json"
        self.config.write_text(json.dumps(conf))
        self.proc: subprocess.Popen[bytes] | None = None
        self.dns: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self, timeout: float = 20) -> "Pebble":
        if self.dns is None:
            self.dns = subprocess.Popen(
                [CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01",
                 f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                 "-management", f"127.0.0.1:{self.dns_management_port}"],
                stdout=open(self.base / "challtestsrv.log", "ab"), stderr=subprocess.STDOUT)
        env = {"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0",
               "PEBBLE_WFE_NONCEREJECT": "0"}
        self.proc = subprocess.Popen([PEBBLE, "-config", str(self.config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                                     env=env, stdout=open(self.base / "pebble.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.roots()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"pebble did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        return (self.base / "pebble.log").read_text(errors="replace")

    def _management(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.tls_ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management_port}{path}", context=ctx, timeout=5) as r:
            return r.read()

    def roots(self) -> bytes:
        """The root that signs what Pebble issues (new at every start)."""
        return self._management("/roots/0")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self.dns is not None and self.dns.poll() is None:
            self.dns.terminate()
            self.dns.wait(10)
        self.dns = None

"""One HTTP GET with a hard timeout: jrd's probes of Jupyter, direct or through nginx."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int
    latency: float
    body: bytes = b""
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def _context() -> ssl.SSLContext:
    # Probes go to our own nginx on this machine; what they check is that it
    # serves, not who it is, so they do not verify the certificate.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get(host: str, port: int, path: str, *, tls: bool, timeout: float, host_header: str | None = None,
        token: str | None = None, context: ssl.SSLContext | None = None) -> ProbeResult:
    """GET `path`; ok means a 2xx answer within `timeout`.

    Over TLS the certificate is not verified unless a `context` that verifies it is given.
    """
    start = time.monotonic()
    conn: http.client.HTTPConnection
    if tls:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context or _context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Host": host_header or f"localhost:{port}", "Connection": "close"}
    if token:
        headers["Authorization"] = f"token {token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        status = resp.status
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, 0, time.monotonic() - start, error=f"{exc.__class__.__name__}: {exc}")
    finally:
        conn.close()
    return ProbeResult(200 <= status < 300, status, time.monotonic() - start, body)

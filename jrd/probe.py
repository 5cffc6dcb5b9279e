"""HTTP probes of Jupyter, direct or through nginx, with hard timeouts."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jrd.config import Config


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
        token: str | None = None) -> ProbeResult:
    """GET `path`; ok means a 2xx answer within `timeout`."""
    start = time.monotonic()
    conn: http.client.HTTPConnection
    if tls:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=_context())
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


def jupyter_api(config: "Config", token: str, path: str, timeout: float) -> Any:
    """GET Jupyter's API `path` directly on loopback with jrd's internal token; the parsed JSON.

    Raises JrdError with the reason if Jupyter does not answer with JSON.
    Callers add `no_track_activity=1` where Jupyter would count the request as use.
    """
    from jrd.errors import JrdError

    cfg = config.jupyter
    result = get("127.0.0.1", cfg.port, cfg.base_url + path, tls=False, timeout=timeout, token=token)
    if not result.ok:
        raise JrdError(f"Jupyter {path}: {result.error or f'HTTP {result.status}'}")
    try:
        return result.json()
    except ValueError:
        raise JrdError(f"Jupyter {path}: not JSON") from None


def busy(kernels: list[dict[str, Any]]) -> int:
    """How many of Jupyter's kernels are executing."""
    return sum(1 for k in kernels if k.get("execution_state") == "busy")

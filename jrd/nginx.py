"""nginx as a tool: find the binary, test a config, read stub_status.

The running nginx is supervised; reloading it is a signal through
`jrd.supervisor`.  This module only runs `nginx -t` and reads counters.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jrd.errors import NginxConfigError, PreflightError
from jrd.unixhttp import UnixHTTPConnection


def find_nginx(binary: str) -> Path:
    """The nginx executable named by [nginx] binary, or a PreflightError that says how to get one."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise PreflightError(
            f"nginx is not installed (no {binary!r} on PATH); install it with `apt-get install nginx-light` "
            "or set [nginx] binary to its path"
        )
    return Path(found)


def test_config(nginx: Path, conf: Path, timeout: float = 30.0) -> None:
    """Run `nginx -t` on `conf`; raise NginxConfigError with nginx's own words if it refuses."""
    try:
        proc = subprocess.run(
            [str(nginx), "-t", "-q", "-e", "stderr", "-c", str(conf)],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise NginxConfigError(f"`nginx -t` on {conf} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        reason = "; ".join(l for l in lines if "[emerg]" in l or "[crit]" in l) or "; ".join(lines[-2:])
        if not reason:
            reason = (f"`{nginx} -t` exited with status {proc.returncode} and said nothing; "
                      "is [nginx] binary really nginx?")
        raise NginxConfigError(f"nginx rejected the rendered config: {reason}")


@dataclass(frozen=True)
class NginxBuild:
    """What `nginx -V` says of a binary: its version and what it was built with."""

    version: tuple[int, int, int] = (1, 22, 1)
    # The built-in optional modules, by configure flag name: "http_sub", "http_gzip_static", ...
    modules: frozenset[str] = frozenset()
    # Where `load_module` finds dynamic modules built for this binary (Debian: /usr/lib/nginx/modules).
    modules_path: Path | None = None

    def has(self, module: str) -> bool:
        return module in self.modules

    def dynamic_module(self, name: str) -> Path | None:
        """A dynamic module built for this binary (`ngx_http_brotli_filter_module`), if it is installed."""
        if self.modules_path is None:
            return None
        path = self.modules_path / f"{name}.so"
        return path if path.is_file() else None


def probe(nginx: Path) -> NginxBuild:
    """The binary's version and build, from `nginx -V` (it prints to stderr)."""
    try:
        proc = subprocess.run([str(nginx), "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PreflightError(f"{nginx} -V did not answer ({exc}); is [nginx] binary really nginx?") from None
    return parse_build(proc.stderr)


def parse_build(text: str) -> NginxBuild:
    modules = frozenset(re.findall(r"--with-([a-z0-9_]+)_module\b", text))
    path = re.search(r"--modules-path=(\S+)", text)
    return NginxBuild(parse_version(text), modules, Path(path.group(1)) if path else None)


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        return (1, 22, 1)
    major, minor, patch = (int(g) for g in match.groups())
    return (major, minor, patch)


def read_stub_status(status_socket: Path, timeout: float = 1.0) -> dict[str, int]:
    """nginx's stub_status counters: active, accepts, handled, requests, reading, writing, waiting."""
    conn = UnixHTTPConnection(str(status_socket), timeout)
    try:
        conn.request("GET", "/stub_status")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    return parse_stub_status(body)


def parse_stub_status(body: str) -> dict[str, int]:
    lines = body.split("\n")
    active = int(lines[0].split(":")[1])
    accepts, handled, requests = (int(x) for x in lines[2].split())
    parts = lines[3].split()
    return {
        "active": active, "accepts": accepts, "handled": handled, "requests": requests,
        "reading": int(parts[1]), "writing": int(parts[3]), "waiting": int(parts[5]),
    }

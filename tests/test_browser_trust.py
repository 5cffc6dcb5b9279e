"""A real browser trusts jrd's chain once its CA is imported, and not before.

Headless Debian Chromium, with a temporary HOME whose NSS database
(~/.pki/nssdb, where Chromium on Linux reads user-added trust anchors) holds
jrd's CA, loads the page with certificate verification on: no
--ignore-certificate-errors anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from urllib3.exceptions import InsecureRequestWarning

from conftest import Jrd, tls_peer_der, wait_for

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run scripts/install-system-deps test"
    return path


class Browser:
    """Chromium with its own HOME (and so its own NSS trust store) and a fresh profile per load."""

    def __init__(self, home: Path, ca_pem: Path | None):
        self.home = home
        db = home / ".pki" / "nssdb"
        db.mkdir(parents=True)
        subprocess.run([tool("certutil"), "-d", f"sql:{db}", "-N", "--empty-password"], check=True, capture_output=True)
        if ca_pem is not None:
            subprocess.run([tool("certutil"), "-d", f"sql:{db}", "-A", "-n", "jrd local CA", "-t", "C,,",
                            "-i", str(ca_pem)], check=True, capture_output=True)

    def dump_dom(self, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
        profile = tempfile.mkdtemp(prefix="profile-", dir=self.home)
        assert not any("ignore-certificate" in f for f in (*CHROMIUM_FLAGS, *extra))
        return subprocess.run(
            [tool("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, "--dump-dom", url],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(self.home)},
        )


def title(dom: str) -> str:
    m = re.search(r"<title>(.*?)</title>", dom, re.S)
    return m.group(1).strip() if m else ""


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jrd-browser-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def fetched_ca(running_jrd: Jrd, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA as a new device gets it: over the network, before it can verify anything,
    checked against the fingerprint that `jrd ca export` prints on the server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)  # unverified on purpose: no trust yet
        r = requests.get(running_jrd.url("/jrd/ca.pem"), verify=False,
                         headers={"Host": f"localhost:{running_jrd.port}"}, timeout=10)
    assert r.status_code == 200
    out = tmp_path_factory.mktemp("export")
    export = running_jrd.jrd("ca", "export", "-o", str(out))
    assert export.returncode == 0, export.stderr
    printed = re.search(r"SHA-256 fingerprint: ([0-9A-F:]+)", export.stdout).group(1)  # type: ignore[union-attr]
    fetched = x509.load_pem_x509_certificate(r.content)
    assert hashlib.sha256(fetched.public_bytes(Encoding.DER)).hexdigest() == printed.replace(":", "").lower()
    path = out / "fetched-ca.pem"
    path.write_bytes(r.content)
    return path


def test_chromium_trusts_the_page_once_the_ca_is_imported(running_jrd: Jrd, fetched_ca: Path, home: Path) -> None:
    browser = Browser(home, fetched_ca)
    for url, extra in (
        (f"https://127.0.0.1:{running_jrd.port}/login", ()),  # an IP: SAN entry
        # A DNS: SAN entry, resolved to loopback inside the browser only.
        (f"https://jrd.test:{running_jrd.port}/login", ("--host-resolver-rules=MAP jrd.test 127.0.0.1",)),
    ):
        res = browser.dump_dom(url, *extra)
        assert "ERR_CERT" not in res.stderr, res.stderr[-2000:]
        assert title(res.stdout) == "Jupyter Server", res.stdout[:500]
        assert 'type="password"' in res.stdout


def test_chromium_refuses_the_page_without_the_ca(running_jrd: Jrd, home: Path) -> None:
    res = Browser(home, None).dump_dom(f"https://127.0.0.1:{running_jrd.port}/login")
    assert "ERR_CERT_AUTHORITY_INVALID" in res.stderr
    assert "Jupyter Server" not in res.stdout


def test_chromium_refuses_a_name_the_certificate_does_not_hold(running_jrd: Jrd, fetched_ca: Path, home: Path) -> None:
    res = Browser(home, fetched_ca).dump_dom(f"https://other.test:{running_jrd.port}/login",
                                            "--host-resolver-rules=MAP other.test 127.0.0.1")
    assert "ERR_CERT_COMMON_NAME_INVALID" in res.stderr
    assert "Jupyter Server" not in res.stdout


def test_a_renewed_certificate_needs_no_new_trust(running_jrd: Jrd, fetched_ca: Path, home: Path) -> None:
    browser = Browser(home, fetched_ca)
    before = tls_peer_der("127.0.0.1", running_jrd.port)
    res = running_jrd.jrdctl("cert", "renew", "--force")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: tls_peer_der("127.0.0.1", running_jrd.port) != before, 1.0, "the renewed certificate")
    res = browser.dump_dom(f"https://127.0.0.1:{running_jrd.port}/login")
    assert "ERR_CERT" not in res.stderr, res.stderr[-2000:]
    assert title(res.stdout) == "Jupyter Server"

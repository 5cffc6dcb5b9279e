"""[tls] mode = "acme" against a real ACME server: Debian's Pebble, validating http-01 for real.

jrd runs as `jrd run` does (`jrd.app.build_daemon`), from this file as a
harness so that the ACME backoff can be shortened from 15 minutes to a
second (production never goes below 15 minutes).  Pebble validates
http-01 by connecting to jrd's `[acme] http_port`, where jrd's own
responder (before nginx starts) or nginx answers.  Names resolve to
127.0.0.1 through pebble-challtestsrv's DNS.

An IP address in the certificate: a public CA certifies only global
addresses (`Config.acme_identifiers`), and this machine may have none that
Pebble can reach, so the harness may count loopback addresses other than
127.0.0.1 (127.0.0.2) as public; Pebble 2.4 issues for any IP identifier and
validates it by connecting to it.  nginx then listens on the wildcard, which
is what a VM does, and 127.0.0.2 plays the VM's public address.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import sys
import time
from pathlib import Path

if __name__ != "__main__":
    import pytest
    import requests
    import websocket
    from cryptography import x509

    from acme_support import Pebble, free_port
    from conftest import PASSWORD, HandshakeLoad, Jrd, execute, short_tmp, wait_for

    pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve()


def harness_main(config_path: str, retry_seconds: str, public_ips: str = "") -> int:
    from jrd.app import build_daemon
    from jrd.cli import setup_logging
    from jrd.config import Config, load_config
    from jrd.tls.acme_policy import Timing
    from jrd.tls.acme_service import AcmeService

    if public_ips:
        count_as_public(Config, tuple(public_ips.split(",")))
    path = Path(config_path)
    setup_logging("info")
    daemon = build_daemon(load_config(path), lambda: load_config(path), interactive=True)
    acme = next(e for e in daemon.extensions if isinstance(e, AcmeService))
    retry = dt.timedelta(seconds=float(retry_seconds))
    acme.timing = Timing(retry_first=retry, retry_max=retry * 4)
    acme.check_seconds = 0.5
    return daemon.run()


def count_as_public(config_class: type, addresses: tuple[str, ...]) -> None:
    """Test only: `addresses` (loopback ones, here) among [tls] ip_addresses are certified as if public."""
    plain = config_class.acme_identifiers.fget  # type: ignore[attr-defined]

    def acme_identifiers(self):  # type: ignore[no-untyped-def]
        names, ips = plain(self)
        return names, (*ips, *(i for i in self.tls.ip_addresses if i in addresses and i not in ips))

    config_class.acme_identifiers = property(acme_identifiers)  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(harness_main(*sys.argv[1:]))


# --- test side -----------------------------------------------------------------------------


class AcmeJrd(Jrd):
    """A jrd in ACME mode for the name jrd.test, started through the harness."""

    def __init__(self, base: Path, pebble: "Pebble", retry_seconds: float = 1.0, public_ip: str = ""):
        self.pebble = pebble
        self.retry_seconds = retry_seconds
        self.public_ip = public_ip
        super().__init__(base)
        text = self.config_text(
            f'[acme]\ndirectory_url = "{pebble.directory_url}"\ndirectory_ca_file = "{pebble.tls_ca}"\n'
            f'http_port = {pebble.http_port}\nemail = "me@example.com"\n',
            tls='mode = "acme"\n')
        if public_ip:
            # The wildcard, as on a VM: the address connected to (127.0.0.1 or the "public" one) picks
            # the certificate for a client that sends no SNI.
            assert f'ip_addresses = ["{public_ip}"]' in text
            text = text.replace('listen = ["127.0.0.1"]\nport', 'listen = ["0.0.0.0"]\nport', 1)
        self.config_path.write_text(text)

    def run_command(self) -> list[str]:
        return [sys.executable, str(HERE), str(self.config_path), str(self.retry_seconds), self.public_ip]

    def cert_show(self) -> dict:
        res = self.jrdctl("cert", "show", "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


def served_cert(port: int, server_name: str | None, address: str = "127.0.0.1") -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def verify_with_root(port: int, root: Path, server_name: str = "jrd.test", address: str = "127.0.0.1") -> None:
    """A TLS handshake that trusts only `root` and checks the name: raises if the served chain does not verify."""
    ctx = ssl.create_default_context(cafile=str(root))
    with socket.create_connection((address, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name):
            pass


def is_pebble(cert: x509.Certificate) -> bool:
    return "Pebble" in cert.issuer.rfc4514_string()


@pytest.fixture
def acme_env():
    base = short_tmp()
    pebble = Pebble(base / "pebble", http_port=free_port())
    made: list[AcmeJrd] = []

    def make(retry_seconds: float = 1.0, public_ip: str = "") -> AcmeJrd:
        home = base / f"jrd{len(made)}"
        home.mkdir(mode=0o755)
        j = AcmeJrd(home, pebble, retry_seconds, public_ip)
        made.append(j)
        return j

    yield pebble, make
    for j in made:
        j.stop()
    pebble.close()
    import shutil

    shutil.rmtree(base, ignore_errors=True)


def test_certificate_issued_through_real_http01_and_local_names_keep_jrds_ca(acme_env) -> None:
    """A name and an IP address, validated by real http-01; loopback, by name or bare address, keeps jrd's CA."""
    pebble, make = acme_env
    pebble.start()
    j = make(public_ip="127.0.0.2")
    j.start()
    root = j.base / "pebble-root.pem"
    root.write_bytes(pebble.roots())
    # The public name: Pebble's certificate, whose chain verifies against Pebble's root alone.
    verify_with_root(j.port, root)
    assert is_pebble(served_cert(j.port, "jrd.test"))
    # The "public" address, connected to by address (no SNI, as a browser does for an IP): Pebble's too.
    issued = served_cert(j.port, None, "127.0.0.2")
    assert is_pebble(issued)
    assert [str(a) for a in issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.IPAddress)] == ["127.0.0.2"]
    # Loopback without SNI (https://127.0.0.1:PORT/lab), and localhost: jrd's own CA, as before.
    for sni in (None, "localhost"):
        cert = served_cert(j.port, sni)
        assert not is_pebble(cert) and "jrd CA" in cert.issuer.rfc4514_string()
    # Jupyter answers on both, each with its own certificate checked.
    s = requests.Session()
    s.trust_env = False
    assert s.get(f"https://127.0.0.2:{j.port}/api", verify=str(root), timeout=10).status_code == 200
    assert s.get(f"https://127.0.0.1:{j.port}/api", verify=str(j.ca), timeout=10).status_code == 200
    assert j.serving()
    # Port http_port: only the challenge path; everything else goes to HTTPS.
    r = requests.get(f"http://127.0.0.1:{pebble.http_port}/lab", allow_redirects=False, timeout=5)
    assert r.status_code == 301 and r.headers["Location"] == f"https://127.0.0.1:{j.port}/lab"
    assert requests.get(f"http://127.0.0.1:{pebble.http_port}/.well-known/acme-challenge/nope",
                        timeout=5).status_code == 404
    shown = j.cert_show()["acme"]
    assert shown["serving"] == "acme" and "Pebble" in shown["certificate"]["issuer"]
    assert shown["orders"] == {"success": 1} and shown["last_error"] is None
    metrics = requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=10).text
    for line in ("jrd_acme_certificate_served 1.0", 'jrd_acme_orders_total{result="success"} 1.0',
                 "jrd_acme_certificate_not_after_timestamp_seconds ", "jrd_acme_certificate_info{"):
        assert line in metrics, line
    a_browser_that_trusts_only_the_acme_root_runs_a_cell(j, root)
    # A restart with a valid certificate on disk orders nothing.
    assert j.stop() == 0
    j.start()
    assert j.cert_show()["acme"]["orders"] == {"success": 1}
    assert is_pebble(served_cert(j.port, "jrd.test"))


def a_browser_that_trusts_only_the_acme_root_runs_a_cell(j: AcmeJrd, root: Path) -> None:
    """Headless Chromium with Pebble's root alone in its NSS store (not jrd's CA), no certificate-error flags."""
    from test_browser_lab import (CHROMIUM_FLAGS, HOST, PAGE_TIMEOUT_MS, open_notebook_and_run, sync_playwright,
                                  tool, trusting_home)

    home = trusting_home(j.base / "browser-home", root)
    with sync_playwright() as pw:
        from playwright.sync_api import expect

        expect.set_options(timeout=PAGE_TIMEOUT_MS)
        browser = pw.chromium.launch(executable_path=tool("chromium"), args=CHROMIUM_FLAGS, headless=True,
                                     env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        try:
            page = browser.new_context(ignore_https_errors=False).new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            response = page.goto(f"https://{HOST}:{j.port}/lab")
            assert response is not None and response.ok, response
            tls = response.security_details()
            assert tls is not None and "Pebble" in tls.get("issuer", ""), tls
            page.locator("input[type=password]").fill(PASSWORD)
            page.locator("input[type=password]").press("Enter")
            open_notebook_and_run(page, expect, {})
        finally:
            browser.close()


def test_ca_unreachable_at_start_serves_local_ca_then_switches_without_restart(acme_env) -> None:
    pebble, make = acme_env
    j = make(retry_seconds=1.0)
    t0 = time.monotonic()
    j.start()
    assert time.monotonic() - t0 < 60
    assert not is_pebble(served_cert(j.port, "jrd.test"))
    shown = j.cert_show()["acme"]
    assert shown["serving"] == "local CA" and "cannot be reached" in shown["why_local"]
    status = j.jrdctl("status")
    assert "NOT serving the CA's certificate" in status.stdout and "cannot be reached" in status.stdout
    assert "serving with jrd's own CA's certificate" in j.read_output()
    nginx_pid = j.supervisor_pid("nginx")
    pebble.start()
    wait_for(lambda: is_pebble(served_cert(j.port, "jrd.test")), 30, "the ACME certificate to be served")
    assert j.supervisor_pid("nginx") == nginx_pid  # a graceful reload, not a restart
    assert j.proc is not None and j.proc.poll() is None
    assert j.cert_show()["acme"]["serving"] == "acme"


def test_failing_validation_backs_off_and_keeps_serving_the_old_certificate(acme_env) -> None:
    pebble, make = acme_env
    pebble.start()
    j = make(retry_seconds=1.0)
    j.start()
    first = served_cert(j.port, "jrd.test")
    assert is_pebble(first)
    # Validation now fails: Pebble asks a port where nothing listens; and the certificate is due
    # (its recorded ARI time is in the past).
    j.stop()
    pebble.stop()
    conf = json.loads(pebble.config.read_text())
    conf["pebble"]["httpPort"] = free_port()
    pebble.config.write_text(json.dumps(conf))
    pebble.start()
    state_path = j.state / "acme" / "state.json"
    state = json.loads(state_path.read_text())
    state["ari_renew_at"] = time.time() - 60
    state_path.write_text(json.dumps(state))
    j.start()
    window = 8.0
    time.sleep(window)  # the window over which orders are counted, not a wait for a condition
    shown = j.cert_show()["acme"]
    failures = shown["orders"].get("failure", 0)
    # Backoff 1 s, 2 s, 4 s (at most 4 s here): at most 4 orders in 8 s, not one per check.
    assert 1 <= failures <= 4, shown
    assert "validation failed" in shown["last_error"] and "connection refused" in shown["last_error"]
    assert shown["serving"] == "acme"
    assert served_cert(j.port, "jrd.test").serial_number == first.serial_number
    text = j.jrdctl("cert", "show").stdout
    assert "validation failed" in text


def test_expired_certificate_on_disk_is_renewed_before_ready(acme_env) -> None:
    pebble, make = acme_env
    pebble.start()
    j = make()
    j.start()
    j.stop()
    # Replace the pair in service with an expired one for the same name (a machine stopped for weeks).
    from jrd.tls import certs

    state = json.loads((j.state / "acme" / "state.json").read_text())
    cert_path = j.state / "acme" / "live" / f"{state['current']}.pem"
    key_path = j.state / "acme" / "live" / f"{state['current']}-key.pem"
    now = certs.utcnow()
    ca, ca_key = certs.make_ca(now - dt.timedelta(days=30), dt.timedelta(days=3650), "old")
    policy = certs.LeafPolicy(dns_names=("jrd.test",), ip_addresses=(), lifetime=dt.timedelta(days=6))
    leaf, key = certs.make_leaf(ca, ca_key, policy, now - dt.timedelta(days=10))
    certs.write_pair(cert_path, key_path, certs.pem(leaf), certs.key_pem(key))
    j.start()
    # The first answer after "serving" already has a new, valid Pebble certificate.
    served = served_cert(j.port, "jrd.test")
    assert is_pebble(served) and served.not_valid_after_utc > certs.utcnow()
    assert "expired" in j.read_output()


def test_forced_acme_renewals_under_load_keep_requests_and_a_websocket(acme_env) -> None:
    """`jrdctl cert renew --force` orders from the CA; new handshakes get it, nothing fails, a kernel's
    websocket stays open across the reloads; past the weekly count a forced order is refused, saying why."""
    pebble, make = acme_env
    pebble.start()
    j = make(public_ip="127.0.0.2")
    j.start()
    root = j.base / "pebble-root.pem"
    root.write_bytes(pebble.roots())
    base = f"https://127.0.0.2:{j.port}"
    s = requests.Session()
    s.trust_env = False
    s.verify = str(root)
    s.get(f"{base}/login", headers={"Connection": "close"})
    r = s.post(f"{base}/login", data={"password": PASSWORD, "_xsrf": s.cookies.get("_xsrf")}, allow_redirects=False)
    assert r.status_code == 302
    s.headers["X-XSRFToken"] = s.cookies.get("_xsrf")
    kernel = s.post(f"{base}/api/kernels", json={"name": "python3"}).json()
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    ws = websocket.create_connection(
        f"wss://127.0.0.2:{j.port}/api/kernels/{kernel['id']}/channels", sslopt={"ca_certs": str(root)},
        cookie=cookie, origin=base, header=[f"X-XSRFToken: {s.cookies.get('_xsrf')}"], timeout=60)
    try:
        assert execute(ws, "x = 41; x") == "41"
        with HandshakeLoad("127.0.0.2", j.port, root) as load:
            wait_for(lambda: load.ok >= 20, 30, "the load to get going")
            served = [served_cert(j.port, None, "127.0.0.2").serial_number]
            for _ in range(3):  # with the first order, 4 in the week: the most a forced order allows
                res = j.jrdctl("cert", "renew", "--force")
                assert res.returncode == 0 and "ACME: ordering a new certificate" in res.stdout, res

                def a_new_one() -> bool:
                    serial = served_cert(j.port, None, "127.0.0.2").serial_number
                    if serial in served:
                        return False
                    served.append(serial)
                    return True

                wait_for(a_new_one, 30, "the new certificate to be served")
                wait_for(lambda: served[-1] in load.serials, 10, "the load to get the new certificate")
        failed = len(load.failures)
        assert load.failures == [], f"{failed} of {load.ok + failed} requests failed: {load.failures[:5]}"
        assert len(served) == 4 and set(served) <= load.serials, (served, load.serials)
        assert ws.connected and execute(ws, "x + 1") == "42"
    finally:
        ws.close()
    refused = j.jrdctl("cert", "renew", "--force")
    assert refused.returncode == 1 and "4 certificates were issued in the last 7 days" in refused.stdout, refused
    assert j.cert_show()["acme"]["orders"] == {"success": 4}

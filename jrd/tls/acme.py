"""Publicly trusted certificates over ACME (RFC 8555): the account, one order, and what is kept on disk.

`AcmeStore` is the state dir's `acme/` directory: the account key (made once,
0600, reused), the account's URL, the certificates in service (each pair
named after its serial, so that a new one changes nginx.conf and nginx
reloads through the ordinary reload transaction), and `state.json`, the
failures and order counts that must survive a restart so that a jrd that
restarts in a loop does not order in a loop.

`order_certificate` runs one order with certbot's `acme` library: http-01
challenges are published as files that nginx (or, before nginx runs,
`ChallengeResponder`) serves under `/.well-known/acme-challenge/`.  It blocks
on the network, so the daemon runs it off the main loop.  The certificate's
private key is made here and never leaves the machine.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from jrd import __version__
from jrd.errors import CertError
from jrd.fsutil import atomic_write, ensure_dir
from jrd.tls import certs
from jrd.tls.acme_policy import CertFacts, choose_profile

log = logging.getLogger("jrd")

NETWORK_TIMEOUT = 15
# How long one order may take, challenges and finalization included.
ORDER_DEADLINE = dt.timedelta(seconds=90)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}\Z")


class AcmeError(CertError):
    """An order that failed; the text is the CA's own where it gave one."""


# --- on disk -------------------------------------------------------------------------------


@dataclass
class AcmeRecord:
    """What must survive a restart: failures (for the backoff) and orders by result."""

    consecutive_failures: int = 0
    last_failure: float | None = None  # Unix time
    last_error: str = ""
    last_success: float | None = None
    orders: dict[str, int] = field(default_factory=dict)
    current: str = ""  # the serial (hex) of the pair in service
    profile: str = ""
    ari_renew_at: float | None = None
    ari_checked: float | None = None
    issued: list[float] = field(default_factory=list)  # Unix times of the last week's certificates


class AcmeStore:
    def __init__(self, directory: Path):
        self.dir = directory

    @property
    def account_key_path(self) -> Path:
        return self.dir / "account-key.pem"

    @property
    def account_path(self) -> Path:
        return self.dir / "account.json"

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def pair_paths(self, serial: str) -> tuple[Path, Path]:
        return self.dir / "live" / f"{serial}.pem", self.dir / "live" / f"{serial}-key.pem"

    def account_key(self) -> ec.EllipticCurvePrivateKey:
        """The account key, made (P-256, mode 0600) the first time and reused after."""
        try:
            key = certs.load_key(self.account_key_path)
        except CertError:
            if self.account_key_path.exists():
                raise
            ensure_dir(self.dir, 0o700)
            key = ec.generate_private_key(ec.SECP256R1())
            atomic_write(self.account_key_path, certs.key_pem(key), 0o600)
            log.info("made a new ACME account key in %s", self.account_key_path)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError(f"{self.account_key_path}: the ACME account key must be ECDSA P-256")
        return key

    def account_url(self, directory_url: str) -> str | None:
        try:
            data = json.loads(self.account_path.read_text())
        except (OSError, ValueError):
            return None
        return data.get("url") if data.get("directory") == directory_url else None

    def save_account_url(self, directory_url: str, url: str | None) -> None:
        if url is None:
            self.account_path.unlink(missing_ok=True)
            return
        atomic_write(self.account_path, json.dumps({"directory": directory_url, "url": url}).encode(), 0o600)

    def load_record(self) -> AcmeRecord:
        try:
            data = json.loads(self.state_path.read_text())
            return AcmeRecord(**{k: v for k, v in data.items() if k in AcmeRecord.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return AcmeRecord()

    def save_record(self, record: AcmeRecord) -> None:
        ensure_dir(self.dir, 0o700)
        atomic_write(self.state_path, json.dumps(record.__dict__, sort_keys=True).encode(), 0o600)

    def install(self, chain_pem: bytes, key_pem: bytes) -> tuple[str, x509.Certificate]:
        """Write a new pair as live/SERIAL.pem and its key; the serial and the leaf."""
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        serial = format(leaf.serial_number, "x")
        cert_path, key_path = self.pair_paths(serial)
        ensure_dir(cert_path.parent, 0o700)
        certs.write_pair(cert_path, key_path, chain_pem, key_pem)
        return serial, leaf

    def current_pair(self, record: AcmeRecord) -> tuple[Path, Path, x509.Certificate] | None:
        """The pair in service, if it is on disk, readable and matching; else None."""
        if not record.current:
            return None
        cert_path, key_path = self.pair_paths(record.current)
        leaf = certs.current_leaf(cert_path, key_path)
        return (cert_path, key_path, leaf) if leaf is not None else None

    def prune(self, keep: set[str]) -> None:
        """Remove pairs other than `keep` (the one in service and the one before it)."""
        live = self.dir / "live"
        for path in live.glob("*.pem") if live.is_dir() else ():
            if path.name.removesuffix(".pem").removesuffix("-key") not in keep:
                path.unlink(missing_ok=True)


def facts(cert: x509.Certificate, ari_renew_at: float | None = None) -> CertFacts:
    names, ips = certs.san_of(cert)
    ari = dt.datetime.fromtimestamp(ari_renew_at, dt.timezone.utc) if ari_renew_at else None
    return CertFacts(cert.not_valid_before_utc, cert.not_valid_after_utc, names, ips, ari)


# --- challenges ------------------------------------------------------------------------------


class ChallengeFiles:
    """http-01 key authorizations as files under the directory nginx serves them from."""

    def __init__(self, directory: Path):
        self.dir = directory

    def publish(self, token: str, validation: str) -> None:
        if not _TOKEN.match(token):
            raise AcmeError(f"the CA sent an http-01 token that is not base64url ({token[:40]!r})")
        ensure_dir(self.dir, 0o755)
        atomic_write(self.dir / token, validation.encode(), 0o644)

    def withdraw(self, token: str) -> None:
        if _TOKEN.match(token):
            (self.dir / token).unlink(missing_ok=True)


class ChallengeResponder:
    """A plain-HTTP server for http-01 while nginx is not running yet (at start), on nginx's addresses.

    It answers `/.well-known/acme-challenge/TOKEN` from the challenge directory and 404 otherwise.
    """

    def __init__(self, addresses: tuple[str, ...], port: int, directory: Path):
        self.servers: list[http.server.ThreadingHTTPServer] = []
        handler = _challenge_handler(directory)
        try:
            for addr in addresses:
                host = {"*": "0.0.0.0"}.get(addr, addr).strip("[]")
                self.servers.append(_make_server(host, port, handler))
        except OSError as exc:
            self.close()
            raise AcmeError(f"cannot answer http-01 challenges on port {port} ({exc.strerror}); "
                            "check [acme] http_port and what else listens there") from None
        for server in self.servers:
            threading.Thread(target=server.serve_forever, name="acme-http01", daemon=True).start()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown() if server.socket.fileno() >= 0 else None
            server.server_close()
        self.servers = []


def _make_server(host: str, port: int, handler: type) -> http.server.ThreadingHTTPServer:
    v6 = ":" in host

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if v6 else socket.AF_INET
        daemon_threads = True

        def server_bind(self) -> None:
            if v6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(self.server_address)
            self.server_address = self.socket.getsockname()

    return Server((host, port), handler)


def _challenge_handler(directory: Path) -> type:
    prefix = "/.well-known/acme-challenge/"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            token = self.path.split("?", 1)[0].removeprefix(prefix) if self.path.startswith(prefix) else ""
            try:
                body = (directory / token).read_bytes() if _TOKEN.match(token) else None
            except OSError:
                body = None
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http-01 responder: " + format, *args)

    return Handler


# --- one order --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRequest:
    directory_url: str
    names: tuple[str, ...]
    ips: tuple[str, ...]
    profile_setting: str
    email: str
    eab_kid: str = ""
    eab_hmac_key: str = field(default="", repr=False)
    verify: str | bool = True  # a CA bundle path for a private ACME server, else the system's


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    profile: str
    # The CA's renewal window (ARI), when it has one: a Unix time in it.
    ari_renew_at: float | None = None


def order_certificate(req: OrderRequest, store: AcmeStore, challenges_out: ChallengeFiles,
                      key_type: str = "ecdsa-p256") -> Issued:
    """Order a certificate for the request's identifiers with http-01; raises AcmeError with the CA's words."""
    import josepy as jose
    import requests
    from acme import errors as acme_errors
    from acme import messages

    try:
        return _order(req, store, challenges_out, key_type)
    except AcmeError:
        raise
    except acme_errors.ValidationError as exc:
        raise AcmeError(f"validation failed: {_validation_text(exc)}") from None
    except messages.Error as exc:
        raise AcmeError(f"the CA refused: {exc.typ.rsplit(':', 1)[-1] if exc.typ else 'error'}: "
                        f"{exc.detail or exc.title or exc}") from None
    except acme_errors.TimeoutError:
        raise AcmeError(f"the order did not finish within {ORDER_DEADLINE.seconds} s") from None
    except requests.exceptions.ConnectionError as exc:
        raise AcmeError(f"the CA at {req.directory_url} cannot be reached ({_root_cause(exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise AcmeError(f"talking to the CA at {req.directory_url} failed ({_root_cause(exc)})") from None
    except (acme_errors.Error, jose.errors.Error, ValueError) as exc:
        raise AcmeError(f"the CA's answer was not understood ({exc})") from None


def _order(req: OrderRequest, store: AcmeStore, out: ChallengeFiles, key_type: str) -> Issued:
    import josepy as jose
    from acme import challenges, crypto_util, messages
    from acme import client as acme_client

    account_key = jose.JWKEC(key=store.account_key())
    net = acme_client.ClientNetwork(account_key, alg=jose.ES256, verify_ssl=req.verify,
                                    user_agent=f"jrd/{__version__}", timeout=NETWORK_TIMEOUT)
    directory = acme_client.ClientV2.get_directory(req.directory_url, net)
    client = acme_client.ClientV2(directory, net)
    profile = choose_profile_or_fail(req, directory)
    _account(client, net, req, store, directory)
    key = certs.generate_key(key_type)
    key_pem = certs.key_pem(key)
    csr = crypto_util.make_csr(key_pem, domains=list(req.names) or None,
                               ipaddrs=[ipaddress.ip_address(i) for i in req.ips] or None)
    try:
        order = client.new_order(csr, profile=profile)
    except messages.Error as exc:
        if exc.typ and exc.typ.endswith("accountDoesNotExist"):
            store.save_account_url(req.directory_url, None)  # the CA forgot it: register again, once
            _account(client, net, req, store, directory)
            order = client.new_order(csr, profile=profile)
        else:
            raise
    published: list[str] = []
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            http01 = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
            if http01 is None:
                raise AcmeError(f"the CA offers no http-01 challenge for {authz.body.identifier.value}")
            response, validation = http01.response_and_validation(account_key)
            token = http01.chall.encode("token")
            out.publish(token, validation)
            published.append(token)
            client.answer_challenge(http01, response)
        deadline = dt.datetime.now() + ORDER_DEADLINE
        done = client.poll_and_finalize(order, deadline)
    finally:
        for token in published:
            out.withdraw(token)
    ari = _ari_renew_at(client, done.fullchain_pem.encode())
    return Issued(done.fullchain_pem.encode(), key_pem, profile or "", ari)


def choose_profile_or_fail(req: OrderRequest, directory: Any) -> str | None:
    meta = getattr(directory, "meta", None)
    offered = getattr(meta, "profiles", None) if meta is not None else None
    try:
        return choose_profile(req.profile_setting, dict(offered) if offered else None, bool(req.ips))
    except ValueError as exc:
        raise AcmeError(f"[acme] profile: {exc}") from None


def _account(client: Any, net: Any, req: OrderRequest, store: AcmeStore, directory: Any) -> None:
    from acme import errors as acme_errors
    from acme import messages

    url = store.account_url(req.directory_url)
    if url is not None:
        net.account = messages.RegistrationResource(uri=url, body=messages.Registration())
        return
    eab = None
    if req.eab_kid:
        eab = messages.ExternalAccountBinding.from_data(
            account_public_key=net.key.public_key(), kid=req.eab_kid, hmac_key=req.eab_hmac_key, directory=directory)
    elif client.external_account_required():
        raise AcmeError("the CA requires an external account binding: set [acme] eab_kid and eab_hmac_key_file")
    reg = messages.NewRegistration.from_data(email=req.email or None, terms_of_service_agreed=True,
                                             external_account_binding=eab)
    try:
        regr = client.new_account(reg)
        url = regr.uri
    except acme_errors.ConflictError as exc:  # the key has an account already
        url = str(exc)
        net.account = messages.RegistrationResource(uri=url, body=messages.Registration())
    store.save_account_url(req.directory_url, url)
    log.info("registered an ACME account at %s", req.directory_url)


def _ari_renew_at(client: Any, chain_pem: bytes) -> float | None:
    """The CA's suggested renewal time (ARI), or None when the directory has no renewalInfo."""
    try:
        if "renewalInfo" not in client.directory.to_partial_json():
            return None
        at, _ = client.renewal_time(chain_pem)
    except Exception as exc:  # noqa: BLE001 - ARI is advice; the fixed rule stands without it
        log.info("could not read the CA's renewal information (ARI): %s", exc)
        return None
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.timezone.utc)
    return at.timestamp()


def _validation_text(exc: Any) -> str:
    parts = []
    for authzr in exc.failed_authzrs:
        ident = authzr.body.identifier.value
        errs = [c.error for c in authzr.body.challenges if getattr(c, "error", None) is not None]
        text = "; ".join(f"{(e.typ or '').rsplit(':', 1)[-1]}: {e.detail or e.title}" for e in errs) or "invalid"
        parts.append(f"{ident}: {text}")
    return "; ".join(parts) or str(exc)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or (exc.args and isinstance(exc.args[0], BaseException)):
        exc = exc.__cause__ or exc.args[0]
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^')]+)|(Connection refused|Name or service not known|timed out)", text)
    return (match.group(1) or match.group(2)) if match else text[:200]


def loaded_chain_issuer(chain_pem: bytes) -> str:
    return x509.load_pem_x509_certificates(chain_pem)[0].issuer.rfc4514_string()


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def read_verify(path: Path | None) -> str | bool:
    if path is None:
        return True
    if not os.access(path, os.R_OK):
        raise AcmeError(f"[acme] directory_ca_file {path} cannot be read")
    return str(path)


Callback = Callable[[], None]

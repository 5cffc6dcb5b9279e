"""jrd's own CA and leaf certificate: make, load, describe, write, and decide renewal.

The pattern is mkcert's and Caddy's: a long-lived CA that each device trusts
once, and a short-lived leaf, signed by it, that jrd renews by itself.  Apple
devices reject leaves valid for more than 825 days, without a
subjectAltName, or without the serverAuth EKU, so every leaf has all three.

`renewal_due` is a pure function of (certificate, clock, policy).  The I/O
around it is kept apart: `ensure_ca`, `write_pair`, and the lifecycle at the
end of this module, where `leaf_state` is the one place that decides whether
jrd's leaf is due and `issue_leaf` the one place that issues it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jrd.errors import CertError
from jrd.fsutil import atomic_write, ensure_dir, fsync_dir, write_temp

if TYPE_CHECKING:
    from jrd.config import Config
    from jrd.layout import Layout

APPLE_MAX_LEAF_DAYS = 825
# Leaves are backdated so that a device whose clock is a little behind
# still accepts a freshly issued certificate.
BACKDATE = dt.timedelta(hours=1)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class LeafPolicy:
    """What the leaf must look like, and when to renew it."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    key_type: str = "ecdsa-p256"
    lifetime: dt.timedelta = dt.timedelta(days=90)
    renew_when_remaining: float = 1 / 3
    renew_before: dt.timedelta = dt.timedelta(0)


@dataclass(frozen=True)
class Renewal:
    """The answer of `renewal_due`: whether, why, and when it will be due."""

    due: bool
    reason: str
    due_at: dt.datetime


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --- pure policy --------------------------------------------------------------


def key_type_of(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ecdsa-{'p256' if public_key.curve.name == 'secp256r1' else public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    return type(public_key).__name__


def san_of(cert: x509.Certificate) -> tuple[frozenset[str], frozenset[str]]:
    """The certificate's (DNS names, IP addresses)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    names = frozenset(n.lower() for n in ext.get_values_for_type(x509.DNSName))
    ips = frozenset(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))
    return names, ips


def renewal_margin(lifetime: dt.timedelta, policy: LeafPolicy) -> dt.timedelta:
    """How long before expiry a leaf of `lifetime` is due: the larger of the two thresholds.

    `renew_before` may bring renewal forward to the middle of the lifetime but
    no further, so that a short leaf (say 7 days, with the default 30-day
    `renew_before`) is not due the moment it is issued.
    """
    by_fraction = lifetime * policy.renew_when_remaining
    return max(by_fraction, min(policy.renew_before, lifetime / 2))


def renewal_due(
    cert: x509.Certificate, now: dt.datetime, policy: LeafPolicy, ca: x509.Certificate | None = None
) -> Renewal:
    """Decide whether `cert` must be renewed at `now` under `policy`.

    Due when: the names or IPs differ from the policy, the key type differs,
    it was not issued by `ca`, it is not yet valid (the clock jumped back) or
    it has less than the renewal threshold of its lifetime left.
    """
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    due_at = not_after - renewal_margin(not_after - not_before, policy)

    names, ips = san_of(cert)
    want_names = frozenset(n.lower() for n in policy.dns_names)
    want_ips = frozenset(str(ipaddress.ip_address(i)) for i in policy.ip_addresses)
    if names != want_names or ips != want_ips:
        return Renewal(True, "subjectAltName differs from the config", now)
    if key_type_of(cert.public_key()) != policy.key_type:
        return Renewal(True, f"key type is {key_type_of(cert.public_key())}, config wants {policy.key_type}", now)
    if ca is not None and not issued_by(cert, ca):
        return Renewal(True, "not issued by the current CA", now)
    if now < not_before:
        return Renewal(True, "not valid yet (the clock is behind the certificate)", now)
    if now >= not_after:
        return Renewal(True, "expired", now)
    if now >= due_at:
        left = (not_after - now).total_seconds() / 86400
        return Renewal(True, f"{left:.1f} days left, below the renewal threshold", now)
    return Renewal(False, "valid", due_at)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """True if `ca` signed `cert`."""
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature and friends
        return False
    return True


# --- making keys and certificates (pure: no files) ------------------------


def generate_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ValueError(f"unknown key type {key_type!r}")


def make_ca(
    now: dt.datetime, lifetime: dt.timedelta, hostname: str | None = None
) -> tuple[x509.Certificate, PrivateKey]:
    """A new self-signed CA: CA:TRUE, keyCertSign and cRLSign, named after jrd and the host."""
    hostname = hostname or socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jrd local CA"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, hostname),
            x509.NameAttribute(NameOID.COMMON_NAME, f"jrd CA {hostname} {now:%Y-%m-%d}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca_cert: x509.Certificate, ca_key: PrivateKey, policy: LeafPolicy, now: dt.datetime
) -> tuple[x509.Certificate, PrivateKey]:
    """A new leaf for `policy`, signed by the CA: SANs, serverAuth, SHA-256, random 128-bit serial."""
    lifetime = min(policy.lifetime, dt.timedelta(days=APPLE_MAX_LEAF_DAYS))
    # A leaf that outlives its CA would stop verifying when the CA expires.
    not_after = min(now - BACKDATE + lifetime, ca_cert.not_valid_after_utc)
    key = generate_key(policy.key_type)
    cn = (policy.dns_names or policy.ip_addresses)[0]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in policy.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in policy.ip_addresses]
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        # 128 random bits, top bit clear so that the DER integer stays positive.
        .serial_number(int.from_bytes(os.urandom(16), "big") >> 1 | 1)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# --- files ---------------------------------------------------------------------


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def describe(cert: x509.Certificate, now: dt.datetime) -> dict[str, object]:
    """What a person (or a metric) wants to know about a certificate, as plain values."""
    names, ips = san_of(cert)
    not_after = cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": [f"DNS:{n}" for n in sorted(names)] + [f"IP:{i}" for i in sorted(ips)],
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.timestamp(),
        "not_after": not_after.timestamp(),
        "days_left": round((not_after - now).total_seconds() / 86400, 1),
        "sha256": fingerprint(cert),
        "key_type": key_type_of(cert.public_key()),
    }


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def load_cert(path: Path) -> x509.Certificate:
    """The first certificate in a PEM file, or a CertError that says what is wrong."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{path}: certificate file is missing") from None
    except OSError as exc:
        raise CertError(f"{path}: cannot read certificate ({exc.strerror})") from None
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        raise CertError(f"{path}: not a PEM certificate (corrupt or wrong file)") from None


def load_chain(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise CertError(f"{path}: certificate file is missing") from None
    except OSError as exc:
        raise CertError(f"{path}: cannot read certificate ({exc.strerror})") from None
    except ValueError:
        raise CertError(f"{path}: not a PEM certificate chain (corrupt or wrong file)") from None


def load_key(path: Path) -> PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{path}: private key file is missing") from None
    except OSError as exc:
        raise CertError(f"{path}: cannot read private key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CertError(f"{path}: not an unencrypted PEM private key (corrupt or wrong file)") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertError(f"{path}: unsupported key type {type(key).__name__}; use ECDSA or RSA")
    return key


def load_pair(cert_path: Path, key_path: Path) -> tuple[list[x509.Certificate], PrivateKey]:
    """A certificate chain and its key, checked to belong together."""
    chain = load_chain(cert_path)
    key = load_key(key_path)
    if not chain:
        raise CertError(f"{cert_path}: holds no certificate")
    if not key_matches(chain[0], key):
        raise CertError(f"{key_path} does not match the certificate in {cert_path}; refusing the pair")
    return chain, key


def write_pair(cert_path: Path, key_path: Path, chain_pem: bytes, key_bytes: bytes) -> None:
    """Replace a certificate and its key atomically, the key first.

    Both are written to synced temp files and checked to match before either
    is moved into place, so nginx (which reads them only when told to reload)
    only ever finds a matching pair.  If the certificate cannot be moved into
    place after the key was, the old key is put back from a hard link, which
    needs no free space, so a failure halfway leaves the old pair intact.
    """
    ensure_dir(cert_path.parent, 0o700)
    tmp_key = write_temp(key_path, key_bytes, 0o600)
    backup = key_path.with_name(f".{key_path.name}.old")
    try:
        tmp_cert = write_temp(cert_path, chain_pem, 0o644)
    except BaseException:
        tmp_key.unlink(missing_ok=True)
        raise
    try:
        load_pair(tmp_cert, tmp_key)
        backup.unlink(missing_ok=True)
        had_key = _link_if_exists(key_path, backup)
        os.replace(tmp_key, key_path)
        try:
            os.replace(tmp_cert, cert_path)
        except BaseException:
            if had_key:
                os.replace(backup, key_path)
            raise
        fsync_dir(cert_path.parent)
    finally:
        tmp_key.unlink(missing_ok=True)
        tmp_cert.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)


def _link_if_exists(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
    except FileNotFoundError:
        return False
    return True


def ensure_ca(
    cert_path: Path, key_path: Path, lifetime: dt.timedelta, now: dt.datetime
) -> tuple[x509.Certificate, PrivateKey, bool]:
    """Load the local CA, creating it only if neither of its files exists.

    Devices trust this CA by hand, so a CA that exists but is broken or
    expired is never replaced silently: that is a CertError that says how
    to start over.  Returns (cert, key, created).
    """
    if not cert_path.exists() and not key_path.exists():
        cert, key = make_ca(now, lifetime)
        ensure_dir(cert_path.parent, 0o700)
        atomic_write(key_path, key_pem(key), 0o600)
        atomic_write(cert_path, pem(cert), 0o644)
        return cert, key, True
    restart = (
        "devices that trust it would stop trusting jrd if it were replaced silently; "
        "to make a new CA, run `jrd init --force --new-ca` and trust the new CA on every device"
    )
    try:
        cert = load_cert(cert_path)
        key = load_key(key_path)
    except CertError as exc:
        raise CertError(f"the local CA is unusable: {exc}; {restart}") from None
    if not key_matches(cert, key):
        raise CertError(f"the local CA is unusable: {key_path} does not match {cert_path}; {restart}")
    if now >= cert.not_valid_after_utc:
        raise CertError(f"the local CA at {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; {restart}")
    return cert, key, False


# --- the lifecycle on disk, as the daemon and the CLIs use it ---------------------


def policy_from_config(config: "Config") -> LeafPolicy:
    tls = config.tls
    return LeafPolicy(
        dns_names=config.dns_names,
        ip_addresses=config.ip_addresses,
        key_type=tls.key_type,
        lifetime=dt.timedelta(days=tls.leaf_lifetime_days),
        renew_when_remaining=tls.renew_when_remaining,
        renew_before=dt.timedelta(days=tls.renew_before_days),
    )


def own_ca(config: "Config", layout: "Layout", now: dt.datetime) -> tuple[x509.Certificate, PrivateKey, bool]:
    """jrd's CA for this config: `ensure_ca` on the layout's files with the configured lifetime."""
    lifetime = dt.timedelta(days=config.tls.ca_lifetime_days)
    return ensure_ca(layout.ca_cert, layout.ca_key, lifetime, now)


@dataclass(frozen=True)
class LeafState:
    """jrd's CA and leaf as they are on disk, and whether the leaf is due under the config's policy."""

    ca: x509.Certificate
    ca_key: PrivateKey
    policy: LeafPolicy
    leaf: x509.Certificate | None  # None: missing, unreadable or not matching its key
    decision: Renewal


def leaf_state(config: "Config", layout: "Layout", now: dt.datetime) -> LeafState:
    """The one answer to "is jrd's leaf due?", for the daemon's build, renewals, `jrd init` and `jrd check`.

    The CA is always the one on disk (`own_ca`: created only if neither of
    its files exists; a broken or expired CA is a CertError), so a leaf from
    a CA that was replaced is due.  A missing or unusable leaf is due at once.
    """
    ca, ca_key, _ = own_ca(config, layout, now)
    policy = policy_from_config(config)
    leaf = current_leaf(layout.leaf_cert, layout.leaf_key)
    if leaf is None:
        decision = Renewal(True, "no usable leaf certificate", now)
    else:
        decision = renewal_due(leaf, now, policy, ca)
    return LeafState(ca, ca_key, policy, leaf, decision)


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    policy: LeafPolicy,
    cert_path: Path,
    key_path: Path,
    now: dt.datetime,
) -> x509.Certificate:
    """Issue a new leaf and put it (leaf + CA chain) and its key in place atomically: the one issuing path."""
    cert, key = make_leaf(ca_cert, ca_key, policy, now)
    write_pair(cert_path, key_path, pem(cert) + pem(ca_cert), key_pem(key))
    return cert


def current_leaf(cert_path: Path, key_path: Path) -> x509.Certificate | None:
    """The leaf in place if it is readable and matches its key; None otherwise."""
    try:
        chain, _ = load_pair(cert_path, key_path)
    except CertError:
        return None
    return chain[0]

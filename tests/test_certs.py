"""jrd.tls, unit tier: the CA, the leaf, `renewal_due`, `leaf_state`, atomic pairs, snapshots, profiles, the manager.

Everything here runs on an injected clock and temp files; nothing sleeps.
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
import plistlib
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from jrd.backoff import backoff_delay
from jrd.config import Config, PathsConfig, TlsConfig
from jrd.errors import CertError, NginxConfigError
from jrd.layout import Layout
from jrd.tls import certs, profiles, renewal
from jrd.tls.bootstrap import PairSnapshot, TlsFiles, ensure_tls

T0 = dt.datetime(2030, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)
POLICY = certs.LeafPolicy(dns_names=("jrd.test", "localhost"), ip_addresses=("127.0.0.1", "::1", "192.0.2.7"))


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, certs.PrivateKey]:
    return certs.make_ca(T0, dt.timedelta(days=3650), hostname="box")


@pytest.fixture(scope="module")
def leaf(ca) -> x509.Certificate:  # type: ignore[no-untyped-def]
    cert, _ = certs.make_leaf(*ca, POLICY, T0)
    return cert


# --- renewal_due ------------------------------------------------------------------


def test_renewal_due_across_the_whole_lifetime(leaf: x509.Certificate, ca) -> None:  # type: ignore[no-untyped-def]
    """A 90-day leaf is due from the moment 1/3 (30 days) of its lifetime is left, and not before."""
    issued = leaf.not_valid_before_utc
    due_at = leaf.not_valid_after_utc - dt.timedelta(days=30)
    for hours in range(0, 95 * 24, 6):
        now = issued + dt.timedelta(hours=hours)
        decision = certs.renewal_due(leaf, now, POLICY, ca[0])
        assert decision.due == (now >= due_at), (hours, decision)
        if not decision.due:
            assert decision.due_at == due_at
    assert not certs.renewal_due(leaf, due_at - dt.timedelta(seconds=1), POLICY).due
    assert certs.renewal_due(leaf, due_at, POLICY).due
    assert "expired" in certs.renewal_due(leaf, leaf.not_valid_after_utc, POLICY).reason


def test_both_thresholds_are_configurable(ca) -> None:  # type: ignore[no-untyped-def]
    long = certs.LeafPolicy(POLICY.dns_names, POLICY.ip_addresses, lifetime=dt.timedelta(days=825),
                            renew_before=dt.timedelta(days=30))
    cert, _ = certs.make_leaf(*ca, long, T0)
    # 1/3 of 825 days is more than 30 days: the fraction wins.
    assert cert.not_valid_after_utc - certs.renewal_due(cert, T0, long).due_at == dt.timedelta(days=275)
    days = certs.LeafPolicy(POLICY.dns_names, POLICY.ip_addresses, renew_when_remaining=0.1,
                            renew_before=dt.timedelta(days=20))
    cert, _ = certs.make_leaf(*ca, days, T0)
    # 10 % of 90 days is 9 days, fewer than 20: the day count wins.
    assert cert.not_valid_after_utc - certs.renewal_due(cert, T0, days).due_at == dt.timedelta(days=20)


def test_a_short_leaf_is_not_due_the_moment_it_is_issued(ca) -> None:  # type: ignore[no-untyped-def]
    """renew_before (30 days by default) longer than a 7-day leaf brings renewal to mid-life, no further."""
    week = certs.LeafPolicy(POLICY.dns_names, POLICY.ip_addresses, lifetime=dt.timedelta(days=7),
                            renew_before=dt.timedelta(days=30))
    cert, _ = certs.make_leaf(*ca, week, T0)
    decision = certs.renewal_due(cert, T0, week)
    assert not decision.due
    assert decision.due_at == cert.not_valid_before_utc + dt.timedelta(days=3.5)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"dns_names": ("jrd.test", "localhost", "new.example")}, "subjectAltName"),
        ({"dns_names": ("localhost",)}, "subjectAltName"),
        ({"ip_addresses": ("127.0.0.1", "::1")}, "subjectAltName"),
        ({"ip_addresses": ("127.0.0.1", "::1", "192.0.2.8")}, "subjectAltName"),
        ({"key_type": "rsa-2048"}, "key type"),
    ],
)
def test_config_changes_make_the_leaf_due_at_once(leaf: x509.Certificate, change: dict, reason: str) -> None:
    policy = certs.LeafPolicy(**{**POLICY.__dict__, **change})
    decision = certs.renewal_due(leaf, T0, policy)
    assert decision.due and reason in decision.reason
    assert decision.due_at == T0


def test_names_compare_without_case_and_ips_in_canonical_form(leaf: x509.Certificate) -> None:
    policy = certs.LeafPolicy(("JRD.test", "LocalHost"), ("127.0.0.1", "0:0:0:0:0:0:0:1", "192.0.2.7"))
    assert not certs.renewal_due(leaf, T0, policy).due


def test_a_leaf_from_another_ca_is_due(leaf: x509.Certificate) -> None:
    other, _ = certs.make_ca(T0, dt.timedelta(days=3650), hostname="box")
    decision = certs.renewal_due(leaf, T0, POLICY, other)
    assert decision.due and "CA" in decision.reason


def test_clock_skew(leaf: x509.Certificate) -> None:
    # A clock a little behind (within the one-hour backdating) still accepts the fresh leaf ...
    assert not certs.renewal_due(leaf, T0 - dt.timedelta(minutes=50), POLICY).due
    # ... a clock that jumped back further sees a leaf from the future and renews it.
    decision = certs.renewal_due(leaf, T0 - dt.timedelta(hours=2), POLICY)
    assert decision.due and "not valid yet" in decision.reason
    # A clock that jumped forward past the threshold (a long suspend) renews at once.
    assert certs.renewal_due(leaf, T0 + 70 * DAY, POLICY).due


# --- what Apple requires of the leaf ----------------------------------------------


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "rsa-2048", "rsa-3072"])
def test_leaf_has_every_property_apple_requires(ca, key_type: str) -> None:  # type: ignore[no-untyped-def]
    policy = certs.LeafPolicy(POLICY.dns_names, POLICY.ip_addresses, key_type=key_type)
    cert, key = certs.make_leaf(*ca, policy, T0)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"jrd.test", "localhost"}
    # IPs are IP entries, never DNS names.
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(i) for i in POLICY.ip_addresses}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=825)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    pub = cert.public_key()
    if key_type == "ecdsa-p256":
        assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    else:
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == int(key_type[4:]) >= 2048
    assert certs.key_matches(cert, key)
    assert certs.issued_by(cert, ca[0])


def test_lifetime_is_capped_at_825_days_and_at_the_ca(ca) -> None:  # type: ignore[no-untyped-def]
    long = certs.LeafPolicy(POLICY.dns_names, POLICY.ip_addresses, lifetime=dt.timedelta(days=2000))
    cert, _ = certs.make_leaf(*ca, long, T0)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=825)
    late = ca[0].not_valid_after_utc - 10 * DAY
    cert, _ = certs.make_leaf(*ca, POLICY, late)
    assert cert.not_valid_after_utc == ca[0].not_valid_after_utc


def test_serials_are_random_128_bit_and_positive(ca) -> None:  # type: ignore[no-untyped-def]
    serials = {certs.make_leaf(*ca, POLICY, T0)[0].serial_number for _ in range(20)}
    assert len(serials) == 20
    assert all(0 < s < 2**128 for s in serials)
    assert max(s.bit_length() for s in serials) > 120


def test_ca_is_a_ten_year_ca_named_after_jrd_and_the_host(ca) -> None:  # type: ignore[no-untyped-def]
    cert, key = ca
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.not_valid_after_utc - T0 == dt.timedelta(days=3650)
    subject = cert.subject.rfc4514_string()
    assert "jrd" in subject and "box" in subject
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_openssl_verifies_the_leaf_against_the_ca(tmp_path: Path) -> None:
    assert shutil.which("openssl"), "openssl is missing: run scripts/install-system-deps test"
    now = certs.utcnow()
    ca_cert, ca_key = certs.make_ca(now, dt.timedelta(days=3650), hostname="box")
    (tmp_path / "ca.pem").write_bytes(certs.pem(ca_cert))
    for key_type in ("ecdsa-p256", "rsa-2048"):
        policy = certs.LeafPolicy(POLICY.dns_names, POLICY.ip_addresses, key_type=key_type)
        cert, _ = certs.make_leaf(ca_cert, ca_key, policy, now)
        (tmp_path / "leaf.pem").write_bytes(certs.pem(cert))
        for extra in ([], ["-purpose", "sslserver", "-x509_strict", "-verify_hostname", "jrd.test"],
                      ["-purpose", "sslserver", "-verify_ip", "192.0.2.7"]):
            proc = subprocess.run(["openssl", "verify", *extra, "-CAfile", str(tmp_path / "ca.pem"),
                                   str(tmp_path / "leaf.pem")], capture_output=True, text=True)
            assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
    wrong = subprocess.run(["openssl", "verify", "-verify_hostname", "evil.example",
                            "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
                           capture_output=True, text=True)
    assert wrong.returncode != 0


# --- profiles -------------------------------------------------------------------------


def test_mobileconfig_is_a_valid_profile_with_the_ca(ca) -> None:  # type: ignore[no-untyped-def]
    data = profiles.mobileconfig(ca[0], "box.example")
    profile = plistlib.loads(data)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    (payload,) = profile["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.security.root"
    assert payload["PayloadContent"] == ca[0].public_bytes(serialization.Encoding.DER)
    assert x509.load_der_x509_certificate(payload["PayloadContent"]) == ca[0]
    for uid in (profile["PayloadUUID"], payload["PayloadUUID"]):
        assert str(uuid.UUID(uid)).upper() == uid
    assert profile["PayloadUUID"] != payload["PayloadUUID"]
    assert profile["PayloadIdentifier"] != payload["PayloadIdentifier"]
    # The same CA always gives the same profile, so reinstalling replaces it.
    assert profiles.mobileconfig(ca[0], "box.example") == data


# --- files ------------------------------------------------------------------------------


def pair_bytes(ca, policy: certs.LeafPolicy = POLICY) -> tuple[bytes, bytes, x509.Certificate]:  # type: ignore[no-untyped-def]
    cert, key = certs.make_leaf(*ca, policy, T0)
    return certs.pem(cert) + certs.pem(ca[0]), certs.key_pem(key), cert


def test_write_pair_puts_a_matching_pair_in_place(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    cert_path, key_path = tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server-key.pem"
    chain, key, cert = pair_bytes(ca)
    certs.write_pair(cert_path, key_path, chain, key)
    assert certs.current_leaf(cert_path, key_path) == cert
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.parent.stat().st_mode) == 0o700
    assert [c for c in certs.load_chain(cert_path)] == [cert, ca[0]]
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["server-key.pem", "server.pem"]


def test_write_pair_refuses_a_mismatched_pair_and_changes_nothing(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server-key.pem"
    chain, key, cert = pair_bytes(ca)
    certs.write_pair(cert_path, key_path, chain, key)
    other_chain, other_key, _ = pair_bytes(ca)
    with pytest.raises(CertError, match="does not match"):
        certs.write_pair(cert_path, key_path, other_chain, key)
    assert certs.current_leaf(cert_path, key_path) == cert
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server-key.pem", "server.pem"]


def test_write_pair_failing_halfway_leaves_the_old_pair(tmp_path: Path, ca, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The key is in place, then moving the certificate fails: the old key comes back."""
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server-key.pem"
    chain, key, cert = pair_bytes(ca)
    certs.write_pair(cert_path, key_path, chain, key)
    real_replace = os.replace

    def failing_replace(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == cert_path:
            raise OSError(errno.EIO, "injected fault", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(certs.os, "replace", failing_replace)
    new_chain, new_key, _ = pair_bytes(ca)
    with pytest.raises(OSError, match="injected"):
        certs.write_pair(cert_path, key_path, new_chain, new_key)
    monkeypatch.undo()
    assert certs.current_leaf(cert_path, key_path) == cert
    assert key_path.read_bytes() == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server-key.pem", "server.pem"]


def test_load_pair_names_what_is_wrong(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    chain, key, _ = pair_bytes(ca)
    (tmp_path / "c.pem").write_bytes(chain)
    (tmp_path / "k.pem").write_bytes(b"garbage")
    with pytest.raises(CertError, match="k.pem: not an unencrypted PEM private key"):
        certs.load_pair(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(CertError, match="missing"):
        certs.load_pair(tmp_path / "none.pem", tmp_path / "k.pem")


def test_ensure_ca_creates_once_and_never_regenerates(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "tls" / "ca.pem", tmp_path / "tls" / "ca-key.pem"
    ca_cert, _, created = certs.ensure_ca(cert_path, key_path, dt.timedelta(days=3650), T0)
    assert created and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    again, _, created = certs.ensure_ca(cert_path, key_path, dt.timedelta(days=3650), T0 + DAY)
    assert not created and again == ca_cert
    # Expired: loud, never silently replaced.
    with pytest.raises(CertError, match="expired.*trust the new CA"):
        certs.ensure_ca(cert_path, key_path, dt.timedelta(days=3650), T0 + 3651 * DAY)
    # Corrupt key: loud, never silently replaced.
    key_path.write_bytes(b"not a key")
    with pytest.raises(CertError, match="the local CA is unusable"):
        certs.ensure_ca(cert_path, key_path, dt.timedelta(days=3650), T0)
    assert certs.load_cert(cert_path) == ca_cert
    # Only the key lost: also loud.
    key_path.unlink()
    with pytest.raises(CertError, match="missing"):
        certs.ensure_ca(cert_path, key_path, dt.timedelta(days=3650), T0)


def test_describe_gives_what_status_reports(leaf: x509.Certificate) -> None:
    info = certs.describe(leaf, T0 + 10 * DAY)
    assert info["sans"] == ["DNS:jrd.test", "DNS:localhost", "IP:127.0.0.1", "IP:192.0.2.7", "IP:::1"]
    assert info["not_after"] == leaf.not_valid_after_utc.timestamp()
    assert info["not_before"] == leaf.not_valid_before_utc.timestamp()
    assert info["days_left"] == round((leaf.not_valid_after_utc - T0).total_seconds() / 86400 - 10, 1)
    assert info["serial"] == format(leaf.serial_number, "x")
    assert info["sha256"] == leaf.fingerprint(hashes.SHA256()).hex(":").upper()
    assert "jrd CA box" in info["issuer"] and info["subject"] == "CN=jrd.test"


# --- the renewal manager (pure scheduling, then on temp files with a fake clock) ------------


def test_check_delay_is_the_due_time_capped_at_the_recheck() -> None:
    assert renewal.check_delay(T0 + dt.timedelta(seconds=90), T0) == 90
    assert renewal.check_delay(T0 + 40 * DAY, T0) == 3600
    assert renewal.check_delay(T0 - DAY, T0) == 0
    assert renewal.check_delay(T0 + DAY, T0, recheck=60) == 60


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(n, 30, 3600) for n in range(0, 10)] == [0, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert backoff_delay(10_000, 30, 3600) == 3600


class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def own_config(base: Path, **tls: object) -> Config:
    return Config(
        tls=TlsConfig(names=("jrd.test",), ip_addresses=("192.0.2.7",), **tls),  # type: ignore[arg-type]
        paths=PathsConfig(state_dir=base / "state", runtime_dir=base / "run", log_dir=base / "log"),
    )


@pytest.fixture
def issued(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A config, its layout and a fresh CA + leaf on disk at T0."""
    cfg = own_config(tmp_path)
    layout = Layout.of(cfg)
    ensure_tls(cfg, layout, T0)
    return cfg, layout


def test_manager_schedules_the_exact_due_time_capped_hourly(issued) -> None:  # type: ignore[no-untyped-def]
    cfg, layout = issued
    clock = Clock(T0)
    mgr = renewal.CertManager(wall=clock)
    assert mgr.next_check(cfg, layout) == 3600
    leaf = certs.load_cert(layout.leaf_cert)
    due_at = leaf.not_valid_after_utc - dt.timedelta(days=30)
    clock.now = due_at - dt.timedelta(seconds=125)
    assert mgr.next_check(cfg, layout) == pytest.approx(125)
    assert mgr.next_check_at == pytest.approx(due_at.timestamp())
    clock.now = due_at + dt.timedelta(seconds=1)
    assert mgr.next_check(cfg, layout) == 0


def test_manager_renews_only_when_due_unless_forced(issued) -> None:  # type: ignore[no-untyped-def]
    cfg, layout = issued
    clock = Clock(T0 + DAY)
    reloads: list[str] = []
    mgr = renewal.CertManager(wall=clock)
    old = certs.load_cert(layout.leaf_cert)
    result = mgr.renew(cfg, layout, force=False, reload_nginx=lambda: reloads.append("HUP"))
    assert result["renewed"] is False and "not due until" in result["reason"] and reloads == []
    result = mgr.renew(cfg, layout, force=True, reload_nginx=lambda: reloads.append("HUP"))
    serial = format(certs.load_cert(layout.leaf_cert).serial_number, "x")
    assert result == {"renewed": True, "reason": "forced", "serial": serial}
    assert reloads == ["HUP"] and certs.load_cert(layout.leaf_cert) != old
    clock.now = T0 + 70 * DAY
    new = certs.load_cert(layout.leaf_cert)
    result = mgr.renew(cfg, layout, force=False, reload_nginx=lambda: reloads.append("HUP"))
    assert result["renewed"] and "below the renewal threshold" in result["reason"]
    assert certs.load_cert(layout.leaf_cert) != new
    assert mgr.record.successes == 2 and mgr.record.failures == 0
    assert mgr.record.last_success == clock.now.timestamp()


def test_manager_failure_keeps_the_old_pair_counts_and_backs_off(issued, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """nginx -t refusing the new pair: the old pair goes back, one log line, backoff, forced retry."""
    cfg, layout = issued
    clock = Clock(T0 + DAY)
    mgr = renewal.CertManager(wall=clock, retry_first=30, retry_max=3600)
    old_pair = (layout.leaf_cert.read_bytes(), layout.leaf_key.read_bytes())

    def refuse() -> None:
        raise NginxConfigError("nginx rejected the rendered config: injected")

    caplog.set_level("DEBUG", logger="jrd")
    for attempt in range(1, 4):
        with pytest.raises(NginxConfigError):
            mgr.renew(cfg, layout, force=attempt == 1, reload_nginx=refuse)
        assert (layout.leaf_cert.read_bytes(), layout.leaf_key.read_bytes()) == old_pair
        assert mgr.next_check(cfg, layout) == 30 * 2 ** (attempt - 1)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "injected" in errors[0].getMessage() and "stays in service" in errors[0].getMessage()
    status = mgr.status(cfg, layout)
    assert status["renewals"] == {"success": 0, "failure": 3}
    assert status["last_renewal_success"] is None and "injected" in status["last_renewal_error"]
    # The retry of a forced renewal is still forced, though the leaf is not due.
    result = mgr.renew(cfg, layout, force=False, reload_nginx=lambda: None)
    assert result["renewed"] and result["reason"] == "forced"
    assert mgr.record.consecutive_failures == 0 and mgr.next_check(cfg, layout) == 3600
    assert mgr.status(cfg, layout)["renewals"] == {"success": 1, "failure": 3}


def test_manager_turns_a_disk_error_into_one_clear_error(issued, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    cfg, layout = issued
    mgr = renewal.CertManager(wall=Clock(T0 + DAY))
    old = layout.leaf_cert.read_bytes()

    def full(path, data, mode=0o644, owner=None):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(certs, "write_temp", full)
    with pytest.raises(CertError, match="No space left on device"):
        mgr.renew(cfg, layout, force=True, reload_nginx=lambda: None)
    assert layout.leaf_cert.read_bytes() == old and mgr.record.failures == 1


def test_manager_never_renews_in_a_loop_when_the_policy_cannot_be_met(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = own_config(tmp_path, leaf_lifetime_days=1, renew_when_remaining=0.99)
    layout = Layout.of(cfg)
    clock = Clock(T0)
    mgr = renewal.CertManager(wall=clock)
    ensure_tls(cfg, layout, T0)
    mgr.renew(cfg, layout, force=True, reload_nginx=lambda: None)
    assert mgr.next_check(cfg, layout) == 3600
    assert mgr.next_check(cfg, layout) == 3600
    assert sum("due for renewal at once" in r.getMessage() for r in caplog.records) == 1


def test_status_has_the_shape_metrics_and_jrdctl_read(issued) -> None:  # type: ignore[no-untyped-def]
    cfg, layout = issued
    status = renewal.CertManager(wall=Clock(T0)).status(cfg, layout)
    for role in ("leaf", "ca"):
        for key in ("not_after", "days_left", "serial", "subject", "sans", "issuer", "not_before", "sha256"):
            assert key in status[role], (role, key)
    assert status["leaf"]["days_left"] == pytest.approx(90, abs=0.1)
    assert status["renewals"] == {"success": 0, "failure": 0}
    assert status["last_renewal_success"] is None
    assert status["mode"] == "own"


def test_external_pair_changes_are_noticed_by_digest(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    chain, key, cert = pair_bytes(ca)
    (tmp_path / "fullchain.pem").write_bytes(chain)
    (tmp_path / "privkey.pem").write_bytes(key)
    cfg = Config(tls=TlsConfig(cert_file=tmp_path / "fullchain.pem", key_file=tmp_path / "privkey.pem"))
    mgr = renewal.CertManager(wall=Clock(T0))
    mgr.external_loaded = renewal.external_digest(cfg)
    assert mgr.external_changed(cfg) is None
    assert mgr.check_external(cfg) == {"days_left": pytest.approx(90, abs=0.1), "changed": False}
    chain2, key2, _ = pair_bytes(ca)
    (tmp_path / "fullchain.pem").write_bytes(chain2)
    (tmp_path / "privkey.pem").write_bytes(key2)
    assert mgr.external_changed(cfg) == renewal.external_digest(cfg)
    status = mgr.status(cfg, Layout.of(cfg))
    assert status["mode"] == "external" and "ca" not in status
    assert status["leaf"]["serial"] != format(cert.serial_number, "x")
    # A mismatched pair is reported, not raised.
    (tmp_path / "privkey.pem").write_bytes(key)
    assert "does not match" in mgr.check_external(cfg)["error"]


def test_external_expiry_warning_once_a_day(tmp_path: Path, ca, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    chain, key, cert = pair_bytes(ca)
    (tmp_path / "c.pem").write_bytes(chain)
    (tmp_path / "k.pem").write_bytes(key)
    cfg = Config(tls=TlsConfig(cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem"))
    clock = Clock(cert.not_valid_after_utc - 5 * DAY)
    mgr = renewal.CertManager(wall=clock)
    for _ in range(3):
        mgr.check_external(cfg)
    clock.now += DAY
    mgr.check_external(cfg)
    assert sum("expires in" in r.getMessage() for r in caplog.records) == 2


def test_status_reparses_a_certificate_only_when_its_file_changes(tmp_path: Path) -> None:
    from unittest import mock

    from jrd.config import parse_config

    cfg = parse_config(f'[paths]\nstate_dir = "{tmp_path}/s"\nruntime_dir = "{tmp_path}/r"\nlog_dir = "{tmp_path}/l"\n')
    layout = Layout.of(cfg)
    now = certs.utcnow()
    ca, ca_key, _ = certs.ensure_ca(layout.ca_cert, layout.ca_key, dt.timedelta(days=3650), now)
    certs.issue_leaf(ca, ca_key, certs.policy_from_config(cfg), layout.leaf_cert, layout.leaf_key, now)
    manager = renewal.CertManager(wall=lambda: now)
    with mock.patch.object(certs, "load_cert", wraps=certs.load_cert) as load:
        first = manager.status(cfg, layout)
        again = manager.status(cfg, layout)
        assert load.call_count == 2  # leaf and CA, once each
        assert first["leaf"] == again["leaf"]
        new = certs.issue_leaf(ca, ca_key, certs.policy_from_config(cfg), layout.leaf_cert, layout.leaf_key, now)
        after = manager.status(cfg, layout)
        assert load.call_count == 3  # only the replaced leaf
        assert after["leaf"]["serial"] == format(new.serial_number, "x")


# --- the one "is the leaf due" decision, and everything that asks it ------------------------


def _replace_ca(layout: Layout) -> None:
    other, other_key = certs.make_ca(T0, dt.timedelta(days=3650), hostname="box")
    layout.ca_cert.write_bytes(certs.pem(other))
    layout.ca_key.write_bytes(certs.key_pem(other_key))


def _remove_ca(layout: Layout) -> None:
    layout.ca_cert.unlink()
    layout.ca_key.unlink()


def _mismatch_key(layout: Layout) -> None:
    layout.leaf_key.write_bytes(certs.key_pem(certs.generate_key("ecdsa-p256")))


# name: (config changes, what to do to the files issued at T0, the clock, expected reason or None when not due)
SCENARIOS = {
    "fresh leaf from the CA on disk": ({}, None, T0 + DAY, None),
    "the CA was replaced": ({}, _replace_ca, T0 + DAY, "not issued by the current CA"),
    "the CA was removed (a new one is made)": ({}, _remove_ca, T0 + DAY, "not issued by the current CA"),
    "the leaf is missing": ({}, lambda layout: layout.leaf_cert.unlink(), T0 + DAY, "no usable leaf"),
    "the leaf's key does not match": ({}, _mismatch_key, T0 + DAY, "no usable leaf"),
    "1/3 of the lifetime not yet reached": ({}, None, T0 + 58 * DAY, None),
    "less than 1/3 of the lifetime left": ({}, None, T0 + 60 * DAY, "below the renewal threshold"),
    "40 days before expiry not yet reached": (
        {"renew_before_days": 40.0, "renew_when_remaining": 0.1}, None, T0 + 49 * DAY, None),
    "within 40 days of expiry": (
        {"renew_before_days": 40.0, "renew_when_remaining": 0.1}, None, T0 + 51 * DAY, "below the renewal threshold"),
}


def _scenario(base: Path, name: str) -> tuple[Config, Layout, dt.datetime, str | None]:
    tls, damage, now, reason = SCENARIOS[name]
    cfg = own_config(base, **tls)
    layout = Layout.of(cfg)
    ensure_tls(cfg, layout, T0)
    if damage is not None:
        damage(layout)
    return cfg, layout, now, reason


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_leaf_state_decides_and_every_caller_follows_it(tmp_path: Path, name: str) -> None:
    """leaf_state's answer is what ensure_tls, CertManager.next_check and CertManager.renew act on."""
    cfg, layout, now, reason = _scenario(tmp_path / "a", name)
    state = certs.leaf_state(cfg, layout, now)
    assert state.ca == certs.load_cert(layout.ca_cert)
    assert state.decision.due == (reason is not None), state.decision
    if reason is not None:
        assert reason in state.decision.reason
    # The schedule: due means check now; not due means the due time, capped at the recheck.
    mgr = renewal.CertManager(wall=Clock(now))
    delay = mgr.next_check(cfg, layout)
    assert (delay == 0) == state.decision.due
    # A scheduled renewal renews exactly when the decision says so, for the same reason.
    result = mgr.renew(cfg, layout, force=False, reload_nginx=lambda: None)
    assert result["renewed"] == state.decision.due
    if reason is not None:
        assert reason in result["reason"]
        assert certs.renewal_due(certs.load_cert(layout.leaf_cert), now, state.policy, state.ca).due is False
    # The build (and `jrd init`) issues exactly when the decision says so.
    cfg, layout, now, reason = _scenario(tmp_path / "b", name)
    files, issued = ensure_tls(cfg, layout, now)
    assert (issued is not None) == (reason is not None)
    if reason is not None:
        assert reason in issued
    assert files == TlsFiles(layout.leaf_cert, layout.leaf_key, layout.ca_cert.read_bytes())
    assert not certs.leaf_state(cfg, layout, now).decision.due


def test_an_unusable_ca_is_reported_through_the_renewal_failure_path(issued, caplog) -> None:  # type: ignore[no-untyped-def]
    """next_check never raises: it asks for a renewal now, which fails once, loudly, and backs off."""
    cfg, layout = issued
    layout.ca_key.write_bytes(b"not a key")
    mgr = renewal.CertManager(wall=Clock(T0 + DAY), retry_first=30, retry_max=3600)
    assert mgr.next_check(cfg, layout) == 0
    with pytest.raises(CertError, match="the local CA is unusable"):
        mgr.renew(cfg, layout, force=False, reload_nginx=lambda: None)
    assert mgr.record.failures == 1 and mgr.next_check(cfg, layout) == 30
    with pytest.raises(CertError, match="the local CA is unusable"):
        ensure_tls(cfg, layout, T0 + DAY)


def test_ensure_tls_for_an_external_pair_checks_it_and_writes_nothing(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    chain, key, _ = pair_bytes(ca)
    (tmp_path / "fullchain.pem").write_bytes(chain)
    (tmp_path / "privkey.pem").write_bytes(key)
    cfg = Config(
        tls=TlsConfig(cert_file=tmp_path / "fullchain.pem", key_file=tmp_path / "privkey.pem"),
        paths=PathsConfig(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run", log_dir=tmp_path / "log"),
    )
    files, issued = ensure_tls(cfg, Layout.of(cfg), T0)
    assert files == TlsFiles(tmp_path / "fullchain.pem", tmp_path / "privkey.pem", None) and issued is None
    assert not (tmp_path / "state").exists()
    (tmp_path / "privkey.pem").write_bytes(pair_bytes(ca)[1])
    with pytest.raises(CertError, match="does not match"):
        ensure_tls(cfg, Layout.of(cfg), T0)


# --- PairSnapshot ---------------------------------------------------------------------------


def test_pair_snapshot_restores_bytes_mode_and_times(issued) -> None:  # type: ignore[no-untyped-def]
    cfg, layout = issued
    os.utime(layout.leaf_cert, ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
    os.utime(layout.leaf_key, ns=(1_200_000_000_000_000_000, 1_300_000_000_000_000_000))
    before = {p: (p.read_bytes(), p.stat()) for p in (layout.leaf_cert, layout.leaf_key)}
    snapshot = PairSnapshot.take(cfg, layout)
    state = certs.leaf_state(cfg, layout, T0)
    certs.issue_leaf(state.ca, state.ca_key, state.policy, layout.leaf_cert, layout.leaf_key, T0 + DAY)
    layout.leaf_cert.chmod(0o600)
    assert layout.leaf_cert.read_bytes() != before[layout.leaf_cert][0]
    assert sorted(snapshot.restore()) == sorted([layout.leaf_cert, layout.leaf_key])
    for path, (data, st) in before.items():
        now = path.stat()
        assert path.read_bytes() == data
        assert stat.S_IMODE(now.st_mode) == stat.S_IMODE(st.st_mode)
        assert (now.st_mtime_ns, now.st_atime_ns) == (st.st_mtime_ns, st.st_atime_ns)
    assert certs.current_leaf(layout.leaf_cert, layout.leaf_key) is not None
    # Nothing changed since: nothing is written.
    assert snapshot.restore() == []


def test_pair_snapshot_leaves_files_it_did_not_see_and_ignores_external_pairs(tmp_path: Path) -> None:
    cfg = own_config(tmp_path)
    layout = Layout.of(cfg)
    snapshot = PairSnapshot.take(cfg, layout)
    ensure_tls(cfg, layout, T0)
    assert snapshot.files == () and snapshot.restore() == []
    assert certs.current_leaf(layout.leaf_cert, layout.leaf_key) is not None
    external = Config(tls=TlsConfig(cert_file=layout.leaf_cert, key_file=layout.leaf_key))
    assert PairSnapshot.take(external, layout).files == ()


# --- status from other threads --------------------------------------------------------------


def test_status_is_safe_from_other_threads_while_the_manager_renews(issued) -> None:  # type: ignore[no-untyped-def]
    import threading

    cfg, layout = issued
    mgr = renewal.CertManager(wall=Clock(T0 + DAY))
    stop = threading.Event()
    seen: list[dict] = []
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                seen.append(mgr.status(cfg, layout))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            mgr.renew(cfg, layout, force=True, reload_nginx=lambda: None)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == [] and seen
    for status in seen:
        assert "error" not in status["leaf"] and "error" not in status["ca"]
        assert 0 <= status["renewals"]["success"] <= 10
        assert (status["renewals"]["success"] == 0) == (status["last_renewal_success"] is None)
    final = mgr.status(cfg, layout)
    assert final["renewals"] == {"success": 10, "failure": 0}
    assert final["leaf"]["serial"] == format(certs.load_cert(layout.leaf_cert).serial_number, "x")

"""The pure ACME policy (renewal, backoff, profile), the [acme] config keys and the nginx rendering, with fakes."""

from __future__ import annotations

import datetime as dt

import pytest

from jrd.config import parse_config
from jrd.errors import ConfigError
from jrd.tls.acme_policy import CertFacts, Timing, choose_profile, next_attempt, renewal_due

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
SIX_DAYS = dt.timedelta(hours=160)


def cert(lifetime: dt.timedelta = SIX_DAYS, ari: dt.datetime | None = None) -> CertFacts:
    return CertFacts(T0, T0 + lifetime, frozenset({"jrd.example.com"}), frozenset({"203.0.113.7"}), ari)


IDS = (("jrd.example.com",), ("203.0.113.7",))


def test_renews_at_a_third_of_the_lifetime_left() -> None:
    due_at = T0 + SIX_DAYS * 2 / 3
    assert not renewal_due(cert(), *IDS, due_at - dt.timedelta(seconds=1)).due
    d = renewal_due(cert(), *IDS, due_at)
    assert d.due and not d.urgent and d.due_at == due_at and "third" in d.reason


def test_ari_window_brings_renewal_forward_never_later() -> None:
    early = T0 + dt.timedelta(days=1)
    d = renewal_due(cert(ari=early), *IDS, early)
    assert d.due and "ARI" in d.reason
    late = T0 + dt.timedelta(days=5)
    assert renewal_due(cert(ari=late), *IDS, T0).due_at == T0 + SIX_DAYS * 2 / 3


def test_missing_expired_or_other_names_are_urgent() -> None:
    assert renewal_due(None, *IDS, T0).urgent
    assert renewal_due(cert(), *IDS, T0 + SIX_DAYS).urgent  # a machine stopped past the end
    assert renewal_due(cert(), ("other.example.com",), (), T0 + dt.timedelta(hours=1)).urgent
    assert renewal_due(cert(), *IDS, T0 - dt.timedelta(hours=1)).urgent  # the clock went back


def test_backoff_floor_keeps_failed_orders_under_lets_encrypts_hourly_limit() -> None:
    timing = Timing()
    due = renewal_due(None, *IDS, T0)
    # Simulate an hour of failures, trying whenever allowed: fewer than 5 failed orders.
    now, failures, last, orders = T0, 0, None, 0
    while now < T0 + dt.timedelta(hours=1):
        if now >= next_attempt(due, failures, last, timing):
            orders, failures, last = orders + 1, failures + 1, now
        now += dt.timedelta(seconds=30)
    assert orders <= 3
    assert timing.retry_delay(50) == dt.timedelta(hours=6)


def test_a_valid_certificate_is_never_reordered_before_it_is_due() -> None:
    due = renewal_due(cert(), *IDS, T0 + dt.timedelta(hours=1))
    assert not due.due and next_attempt(due, 0, None, Timing()) == T0 + SIX_DAYS * 2 / 3


def test_profile_choice() -> None:
    offered = {"classic": "90 days", "shortlived": "160 hours"}
    assert choose_profile("auto", offered, has_ip=True) == "shortlived"
    assert choose_profile("auto", offered, has_ip=False) is None
    assert choose_profile("auto", None, has_ip=True) is None  # Pebble 2.4: no profiles at all
    assert choose_profile("classic", offered, has_ip=False) == "classic"
    assert choose_profile("", offered, has_ip=True) is None
    with pytest.raises(ValueError, match="offers: classic, shortlived"):
        choose_profile("tlsserver", offered, has_ip=False)


def test_config_acme_mode_and_identifiers() -> None:
    c = parse_config('[tls]\nmode = "acme"\nnames = ["jrd.example.com"]\nip_addresses = ["203.0.113.7", "10.0.0.5"]\n'
                     '[acme]\nhttp_port = 8080\n')
    assert c.acme_tls and c.acme_identifiers == (("jrd.example.com",), ())  # 203.0.113.0/24 is documentation
    c = parse_config('[tls]\nmode = "acme"\nip_addresses = ["8.8.8.8", "127.0.0.2"]\n')
    assert c.acme_identifiers == ((), ("8.8.8.8",)) and c.acme.http_port == 80
    with pytest.raises(ConfigError, match="needs a public DNS name"):
        parse_config('[tls]\nmode = "acme"\nip_addresses = ["10.1.2.3"]\n')
    with pytest.raises(ConfigError, match="eab_kid and eab_hmac_key_file"):
        parse_config('[tls]\nmode = "acme"\nnames = ["a.example.com"]\n[acme]\neab_kid = "k"\n')
    with pytest.raises(ConfigError, match="directory_url"):
        parse_config('[acme]\ndirectory_url = "http://insecure.example.com/dir"\n')
    with pytest.raises(ConfigError, match="takes no cert_file"):
        parse_config('[tls]\nmode = "acme"\nnames = ["a.example.com"]\ncert_file = "/x.pem"\nkey_file = "/x.key"\n')


def test_nginx_serves_the_acme_pair_by_sni_and_jrds_own_for_local_names(tmp_path) -> None:
    from dataclasses import replace

    from render_parsers import nginx_directives
    from test_render import inputs

    from jrd.render import render_nginx_conf
    from jrd.render.base import AcmeServing

    base = inputs('[tls]\nmode = "acme"\nnames = ["jrd.example.com"]\n[acme]\nhttp_port = 8080\n')
    waiting = render_nginx_conf(replace(base, acme=AcmeServing(tmp_path / "chal", 8080)))
    assert "/.well-known/acme-challenge/" in waiting and "listen 0.0.0.0:8080;" in waiting
    assert waiting.count("# The Jupyter server.") == 1
    conf = render_nginx_conf(replace(base, acme=AcmeServing(tmp_path / "chal", 8080, tmp_path / "a.pem",
                                                            tmp_path / "a-key.pem", ("jrd.example.com",))))
    assert conf.count("# The Jupyter server.") == 2
    names = [a for d, a in nginx_directives(conf) if d == "server_name"]
    assert ["jrd.example.com"] in names and any("localhost" in a and "127.0.0.1" in a for a in names)
    certs_ = [a[0] for d, a in nginx_directives(conf) if d == "ssl_certificate"]
    assert str(tmp_path / "a.pem") in certs_ and len(certs_) == 2


def _servers(conf: str) -> list[list[tuple[str, list[str]]]]:
    """The directives of each `server { ... }` block at the http level, in order."""
    from render_parsers import nginx_directives

    out: list[list[tuple[str, list[str]]]] = []
    for name, args in nginx_directives(conf):
        if name == "server" and args == ["{"]:
            out.append([])
        elif out:
            out[-1].append((name, args))
    return out


@pytest.mark.parametrize("listen, loopback", [('"0.0.0.0", "[::]"', ["127.0.0.1:8443", "[::1]:8443"]),
                                              ('"203.0.113.9", "127.0.0.1"', ["127.0.0.1:8443"])])
def test_with_a_public_ip_in_the_acme_certificate_loopback_keeps_jrds_ca_by_address(tmp_path, listen,
                                                                                    loopback) -> None:
    """No SNI (a visit by IP address): the public addresses' default server has the CA's pair, loopback's jrd's."""
    from dataclasses import replace

    from test_render import inputs

    from jrd.render import render_nginx_conf
    from jrd.render.base import AcmeServing

    base = inputs(f'[nginx]\nport = 8443\nlisten = [{listen}]\n[tls]\nmode = "acme"\nip_addresses = ["8.8.8.8"]\n'
                  '[acme]\nhttp_port = 8080\n')
    conf = render_nginx_conf(replace(base, acme=AcmeServing(tmp_path / "chal", 8080, tmp_path / "a.pem",
                                                            tmp_path / "a-key.pem", ("8.8.8.8",))))
    defaults = {}
    for block in _servers(conf):
        listens = [a for d, a in block if d == "listen"]
        cert = next((a[0] for d, a in block if d == "ssl_certificate"), "jrd's own")
        if any("default_server" in a for a in listens):
            defaults[cert] = [a[0] for a in listens]
        elif any(d == "location" for d, _ in block) and listens[0][0].endswith(":8443"):
            # Both Jupyter servers answer on every address, so that SNI picks the pair anywhere.
            assert [a[0] for a in listens if a[0] in loopback] == loopback
    assert defaults["jrd's own"] == loopback
    assert defaults[str(tmp_path / "a.pem")] and not set(defaults[str(tmp_path / "a.pem")]) & set(loopback)


def test_a_forced_order_keeps_the_backoff_and_the_weekly_count() -> None:
    from jrd.tls.acme_policy import forced_order_refused

    timing = Timing()
    assert forced_order_refused([], 0, None, T0, timing) == ""
    failed = forced_order_refused([], 2, T0 - dt.timedelta(minutes=10), T0, timing)
    assert "the last order failed (2 in a row)" in failed and "2026-03-01 00:20:00" in failed
    assert forced_order_refused([], 2, T0 - dt.timedelta(minutes=31), T0, timing) == ""
    days = [T0 - dt.timedelta(days=d) for d in (6, 3, 2, 1)]
    refused = forced_order_refused(days, 0, None, T0, timing)
    assert "4 certificates were issued in the last 7 days" in refused and "2026-03-02 00:00:00" in refused
    assert forced_order_refused(days[1:], 0, None, T0, timing) == ""
    assert forced_order_refused(days, 0, None, T0 + dt.timedelta(days=1, seconds=1), timing) == ""


class _Ctx:
    """Just what AcmeService's schedule and order start touch."""

    def __init__(self, config, layout):
        self.config, self.layout, self.scheduled = config, layout, []

    def schedule(self, name, delay, fn) -> None:
        self.scheduled.append((name, delay))

    def submit(self, *a, **kw) -> None:
        pass


def test_a_clock_jump_or_renew_looks_at_the_acme_certificate_at_once(tmp_path, monkeypatch) -> None:
    """The daemon's certificate check (run at once after a clock jump) orders when due, not at the next timer."""
    from jrd.layout import Layout
    from jrd.tls.acme import AcmeStore
    from jrd.tls.acme_service import AcmeService

    cfg = parse_config(f'[tls]\nmode = "acme"\nnames = ["jrd.example.com"]\n[paths]\nstate_dir = "{tmp_path}/s"\n'
                       f'runtime_dir = "{tmp_path}/r"\nlog_dir = "{tmp_path}/l"\n')
    svc = AcmeService(wall=lambda: T0)
    started: list[str] = []
    monkeypatch.setattr(svc, "_start_order", lambda c, reason: started.append(reason))
    svc.ctx = _Ctx(cfg, Layout.of(cfg))  # type: ignore[assignment]
    svc.store = AcmeStore(tmp_path / "acme")
    assert svc.check_certificates(False) == {"acme": {"ordered": False, "reason": "no ACME certificate yet"}}
    assert started == ["no ACME certificate yet"]
    started.clear()
    assert svc.check_certificates(True) == {"acme": {"ordered": True, "reason": "forced"}}
    svc.record.issued = [(T0 - dt.timedelta(hours=h)).timestamp() for h in (1, 2, 3, 4)]
    out = svc.check_certificates(True)
    assert out is not None and not out["acme"]["ordered"] and "last 7 days" in out["acme"]["reason"]
    assert started == ["forced (jrdctl cert renew --force)"]

"""Pure ACME policy: when to renew, when to try again after a failure, which profile to ask for.

Nothing here does I/O or reads a clock; every function takes `now`.  The
numbers keep an unattended jrd well inside Let's Encrypt's limits: at most
5 failed validations per identifier per account per hour, and 5
certificates for the same set of identifiers per week.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# Renew when this fraction of the lifetime is left (two days of a 6-day certificate).
RENEW_WHEN_REMAINING = 1 / 3
# After a failed order: wait 15 min, then 30, 60, ... at most 6 h.  The first hour then
# holds at most 3 failed orders (0, 15, 45 min), under the CA's 5 failed validations.
RETRY_FIRST = dt.timedelta(minutes=15)
RETRY_MAX = dt.timedelta(hours=6)
# `jrdctl cert renew --force` orders at most this many certificates a week: one below Let's
# Encrypt's 5 for the same identifiers, which leaves room for the automatic renewal.
FORCED_PER_WEEK = 4
WEEK = dt.timedelta(days=7)
SHORTLIVED = "shortlived"


@dataclass(frozen=True)
class Timing:
    """The backoff after failures; tests shorten it, production keeps the defaults."""

    retry_first: dt.timedelta = RETRY_FIRST
    retry_max: dt.timedelta = RETRY_MAX
    forced_per_week: int = FORCED_PER_WEEK

    def retry_delay(self, failures: int) -> dt.timedelta:
        """The wait after `failures` failed orders in a row (0: none)."""
        if failures <= 0:
            return dt.timedelta(0)
        return min(self.retry_max, self.retry_first * 2 ** min(failures - 1, 30))


@dataclass(frozen=True)
class CertFacts:
    """What the policy needs to know about the ACME certificate on disk."""

    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: frozenset[str]
    ip_addresses: frozenset[str]
    # The CA's suggested renewal time (ARI, RFC 9773), when it publishes one.
    ari_renew_at: dt.datetime | None = None


@dataclass(frozen=True)
class Due:
    """Whether to order now, why, and when it will be (or became) due."""

    due: bool
    reason: str
    due_at: dt.datetime
    # True when there is nothing that may be served: an order must finish before READY.
    urgent: bool = False


def renewal_due(cert: CertFacts | None, names: tuple[str, ...], ips: tuple[str, ...], now: dt.datetime) -> Due:
    """Is a new certificate due at `now`: none, other identifiers, expired, a third left, or ARI's window."""
    if cert is None:
        return Due(True, "no ACME certificate yet", now, urgent=True)
    if cert.dns_names != frozenset(n.lower() for n in names) or cert.ip_addresses != frozenset(ips):
        return Due(True, "the names or addresses in [tls] changed", now, urgent=True)
    if now >= cert.not_after:
        return Due(True, "expired", now, urgent=True)
    if now < cert.not_before:
        return Due(True, "not valid yet (the clock is behind the certificate)", now, urgent=True)
    by_fraction = cert.not_after - (cert.not_after - cert.not_before) * RENEW_WHEN_REMAINING
    due_at, why = by_fraction, "a third of its lifetime left"
    if cert.ari_renew_at is not None and cert.ari_renew_at < by_fraction:
        due_at, why = cert.ari_renew_at, "the CA's renewal window (ARI)"
    if now >= due_at:
        return Due(True, why, due_at)
    return Due(False, why, due_at)


def next_attempt(due: Due, failures: int, last_failure: dt.datetime | None, timing: Timing) -> dt.datetime:
    """When to order next: when due, but never before the backoff after the last failure has passed."""
    at = due.due_at
    if failures and last_failure is not None:
        at = max(at, last_failure + timing.retry_delay(failures))
    return at


def forced_order_refused(issued: list[dt.datetime], failures: int, last_failure: dt.datetime | None,
                         now: dt.datetime, timing: Timing) -> str:
    """Why a forced order (`jrdctl cert renew --force`) must wait, or "" when it may go now.

    It still keeps the backoff after failures and the weekly count of certificates, so that
    repeating the command cannot run into the CA's rate limits.
    """
    if failures and last_failure is not None and now < last_failure + timing.retry_delay(failures):
        return (f"the last order failed ({failures} in a row); the next is allowed at "
                f"{last_failure + timing.retry_delay(failures):%Y-%m-%d %H:%M:%S} UTC")
    recent = sorted(t for t in issued if now - WEEK < t <= now)
    if len(recent) >= timing.forced_per_week:
        return (f"{len(recent)} certificates were issued in the last 7 days (the CA allows 5 for the same "
                f"names a week); the next forced order is allowed at "
                f"{recent[-timing.forced_per_week] + WEEK:%Y-%m-%d %H:%M:%S} UTC")
    return ""


def choose_profile(setting: str, offered: dict[str, str] | None, has_ip: bool) -> str | None:
    """The profile to name in a new order, or None for the CA's default.

    "auto": `shortlived` when an IP address is among the identifiers and the CA
    offers it (a public CA certifies IP addresses only under it); otherwise none.
    "": none.  A name: that one, if the CA offers profiles at all; a CA that
    offers profiles but not this one is a ValueError that lists what it offers.
    """
    if setting == "":
        return None
    if not offered:
        return None
    if setting == "auto":
        return SHORTLIVED if has_ip and SHORTLIVED in offered else None
    if setting not in offered:
        raise ValueError(f"the CA offers no profile {setting!r}; it offers: {', '.join(sorted(offered))}")
    return setting

"""The certificate manager the daemon holds: when to check, how to renew, what to report.

`jrd.certs.renewal_due` decides whether a leaf must be renewed.  This
module turns that decision into a schedule (the exact due time, rechecked
at least hourly so that clock jumps and suspends are caught), carries a
renewal out as a transaction (new pair written atomically, `nginx -t`,
graceful nginx reload; the old pair put back if any step fails), retries a
failure with exponential backoff, and keeps the counts that `status()` and
the metrics report.  For external certificates (certbot's) it only reads:
it reports their expiry and notices when the files nginx loaded changed.

Jupyter is never touched: TLS ends at nginx.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from jrd import certs
from jrd.errors import CertError, JrdError

if TYPE_CHECKING:
    from jrd.config import Config
    from jrd.layout import Layout

log = logging.getLogger("jrd")

# Recheck at least this often, even when the next renewal is months away.
RECHECK_SECONDS = 3600.0
# After a failed renewal: retry after 30 s, then 60 s, 120 s, ... at most hourly.
RETRY_FIRST_SECONDS = 30.0
RETRY_MAX_SECONDS = 3600.0
# Warn (once a day) when an external certificate has fewer days than this left.
EXTERNAL_WARN_DAYS = 14.0


# --- pure scheduling ---------------------------------------------------------


def check_delay(due_at: dt.datetime, now: dt.datetime, recheck: float = RECHECK_SECONDS) -> float:
    """Seconds until `due_at`, never negative and never more than `recheck`."""
    return max(0.0, min(recheck, (due_at - now).total_seconds()))


def retry_delay(failures: int, first: float = RETRY_FIRST_SECONDS, cap: float = RETRY_MAX_SECONDS) -> float:
    """The wait after `failures` consecutive failures: first, 2x first, 4x first, ... at most `cap`."""
    if failures <= 0:
        return 0.0
    return min(cap, first * 2 ** min(failures - 1, 32))


# --- the manager ---------------------------------------------------------------


@dataclass
class RenewalRecord:
    """Renewals by result, since this jrd started."""

    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success: float | None = None  # Unix time
    last_error: str = ""
    # A forced renewal that failed stays forced for its retries.
    retry_forced: bool = False


class CertManager:
    """Renews jrd's own leaf on schedule and reports on every certificate nginx serves."""

    def __init__(
        self,
        *,
        wall: Callable[[], dt.datetime] = certs.utcnow,
        recheck: float = RECHECK_SECONDS,
        retry_first: float = RETRY_FIRST_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
    ):
        self._wall = wall
        self.recheck = recheck
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.record = RenewalRecord()
        self.next_check_at: float | None = None  # Unix time, for status
        self._issued_serial: int | None = None
        self._described: dict[Path, tuple[tuple[int, int, int, int], dict[str, Any]]] = {}
        self._logged_error = ""
        self._warned_policy = False
        self._warned_external_day: dt.date | None = None
        self.external_loaded: str | None = None  # digest of the external pair nginx loaded

    # --- scheduling --------------------------------------------------------------
    def next_check(self, config: "Config", layout: "Layout") -> float:
        """Seconds until the next check: the backoff after a failure, else the due time capped at `recheck`."""
        now = self._wall()
        delay = self._next_delay(config, layout, now)
        self.next_check_at = now.timestamp() + delay
        return delay

    def _next_delay(self, config: "Config", layout: "Layout", now: dt.datetime) -> float:
        if self.record.consecutive_failures:
            return retry_delay(self.record.consecutive_failures, self.retry_first, self.retry_max)
        if config.external_tls:
            return self.recheck
        leaf = certs.current_leaf(layout.leaf_cert, layout.leaf_key)
        if leaf is None:
            return 0.0
        decision = certs.renewal_due(leaf, now, certs.policy_from_config(config), _ca_or_none(layout.ca_cert))
        if decision.due and leaf.serial_number == self._issued_serial:
            # The leaf just issued is due already: the policy can never be met.
            # Check hourly instead of renewing in a loop, and say so once.
            if not self._warned_policy:
                log.warning(
                    "a newly issued TLS certificate is due for renewal at once (%s); check [tls] "
                    "leaf_lifetime_days, renew_when_remaining and renew_before_days; renewing at most hourly",
                    decision.reason,
                )
                self._warned_policy = True
            return self.recheck
        return check_delay(decision.due_at, now, self.recheck)

    # --- renewing -----------------------------------------------------------------
    def renew(self, config: "Config", layout: "Layout", *, force: bool, reload_nginx: Callable[[], None]) -> dict[str, Any]:
        """Renew the leaf if it is due (or `force`): atomic write, `nginx -t`, graceful reload.

        On any failure the old pair is back in place and still served, the
        failure is counted and logged once, and a CertError (or the JrdError
        that stopped it) is raised; `next_check` then returns the backoff.
        """
        force = force or self.record.retry_forced
        try:
            result = self._renew(config, layout, force, reload_nginx)
        except JrdError as exc:
            self._failed(str(exc), force)
            raise
        except OSError as exc:
            err = CertError(f"renewing the TLS certificate failed: {exc.strerror or exc} ({exc.filename or 'no file'})")
            self._failed(str(err), force)
            raise err from None
        if result["renewed"]:
            self.note_issued(int(result["serial"], 16))
            log.info("renewed the TLS certificate (%s); new serial %s; nginx reloaded gracefully",
                     result["reason"], result["serial"])
        elif self.record.consecutive_failures:
            self._recovered()
        return result

    def _renew(self, config: "Config", layout: "Layout", force: bool, reload_nginx: Callable[[], None]) -> dict[str, Any]:
        now = self._wall()
        ca_cert, ca_key, _ = certs.ensure_ca(
            layout.ca_cert, layout.ca_key, dt.timedelta(days=config.tls.ca_lifetime_days), now
        )
        policy = certs.policy_from_config(config)
        leaf = certs.current_leaf(layout.leaf_cert, layout.leaf_key)
        decision = certs.renewal_due(leaf, now, policy, ca_cert) if leaf else certs.Renewal(True, "no usable leaf", now)
        if not (decision.due or force):
            return {"renewed": False, "reason": f"not due until {decision.due_at:%Y-%m-%d %H:%M} UTC"}
        reason = "forced" if force and not decision.due else decision.reason
        old = (layout.leaf_cert.read_bytes(), layout.leaf_key.read_bytes()) if leaf else None
        cert, key = certs.make_leaf(ca_cert, ca_key, policy, now)
        certs.write_pair(layout.leaf_cert, layout.leaf_key, certs.pem(cert) + certs.pem(ca_cert), certs.key_pem(key))
        try:
            reload_nginx()
        except BaseException:
            if old is not None:
                certs.write_pair(layout.leaf_cert, layout.leaf_key, *old)
            raise
        return {"renewed": True, "reason": reason, "serial": format(cert.serial_number, "x")}

    def note_issued(self, serial: int) -> None:
        """Count a leaf that is now in service (by a renewal, a reload or at start)."""
        rec = self.record
        if rec.consecutive_failures:
            log.info("TLS certificate renewal succeeded after %d failed attempts", rec.consecutive_failures)
        rec.successes += 1
        rec.last_success = self._wall().timestamp()
        rec.consecutive_failures, rec.retry_forced, rec.last_error = 0, False, ""
        self._logged_error = ""
        self._issued_serial = serial

    def _recovered(self) -> None:
        rec = self.record
        log.info("the TLS certificate check succeeds again after %d failed attempts", rec.consecutive_failures)
        rec.consecutive_failures, rec.retry_forced, rec.last_error = 0, False, ""
        self._logged_error = ""

    def _failed(self, reason: str, forced: bool) -> None:
        rec = self.record
        rec.failures += 1
        rec.consecutive_failures += 1
        rec.last_error = reason
        rec.retry_forced = rec.retry_forced or forced
        retry = retry_delay(rec.consecutive_failures, self.retry_first, self.retry_max)
        # One line per distinct reason; repeats of the same reason are counted, not logged again.
        if reason != self._logged_error:
            log.error(
                "TLS certificate renewal failed: %s; the current certificate stays in service; retrying in %.0f s",
                reason, retry,
            )
            self._logged_error = reason
        else:
            log.debug("TLS certificate renewal failed again (%d in a row): %s", rec.consecutive_failures, reason)

    # --- external certificates ------------------------------------------------
    def external_changed(self, config: "Config") -> str | None:
        """Why nginx should reload for the external pair on disk now (its digest), or None if it has it."""
        digest = external_digest(config)
        return digest if digest != self.external_loaded else None

    def check_external(self, config: "Config") -> dict[str, Any]:
        """Look at the external pair: valid, expiring soon, changed since nginx loaded it?"""
        assert config.tls.cert_file and config.tls.key_file
        try:
            chain, _ = certs.load_pair(config.tls.cert_file, config.tls.key_file)
        except CertError as exc:
            # Perhaps caught mid-flip; a reload refuses such a pair and nginx keeps the old one.
            if str(exc) != self._logged_error:
                log.warning("the external TLS certificate on disk is unusable: %s; nginx keeps serving the one it has", exc)
                self._logged_error = str(exc)
            return {"error": str(exc), "changed": False}
        self._logged_error = ""
        now = self._wall()
        left = (chain[0].not_valid_after_utc - now).total_seconds() / 86400
        if left < EXTERNAL_WARN_DAYS and self._warned_external_day != now.date():
            log.warning(
                "the external TLS certificate %s expires in %.1f days (%s); jrd does not renew it, its owner must "
                "(for certbot: `certbot renew`)", config.tls.cert_file, left, f"{chain[0].not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            )
            self._warned_external_day = now.date()
        return {"days_left": round(left, 1), "changed": self.external_changed(config) is not None}

    # --- reporting ---------------------------------------------------------------
    def status(self, config: "Config", layout: "Layout", served: Path | None = None) -> dict[str, Any]:
        """The certificates nginx serves (leaf, and the CA if it is jrd's), and the renewal counts."""
        now = self._wall()
        leaf_path = served or (config.tls.cert_file if config.external_tls else layout.leaf_cert)
        paths: dict[str, Path] = {"leaf": leaf_path}  # type: ignore[dict-item]
        if not config.external_tls:
            paths["ca"] = layout.ca_cert
        out: dict[str, Any] = {}
        for role, path in paths.items():
            try:
                out[role] = self._describe(path, now)
            except JrdError as exc:
                out[role] = {"error": str(exc)}
            out[role]["file"] = str(path)
        rec = self.record
        out["renewals"] = {"success": rec.successes, "failure": rec.failures}
        out["last_renewal_success"] = rec.last_success
        out["last_renewal_error"] = rec.last_error or None
        out["mode"] = "external" if config.external_tls else "own"
        out["next_check"] = self.next_check_at
        return out


    def _describe(self, path: Path, now: dt.datetime) -> dict[str, Any]:
        """certs.describe of the file, parsed again only when the file changed.

        Every scrape and `jrdctl status` asks; a stat (through symlinks, so a
        certbot flip or an os.replace is a change) is much cheaper than parsing.
        """
        try:
            st = path.stat()
        except OSError:
            return certs.describe(certs.load_cert(path), now)  # raises the CertError that says why
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._described.get(path)
        if cached is None or cached[0] != key:
            cached = (key, certs.describe(certs.load_cert(path), now))
            self._described[path] = cached
        info = dict(cached[1])
        info["days_left"] = round((float(info["not_after"]) - now.timestamp()) / 86400, 1)
        return info


def external_digest(config: "Config") -> str:
    """A digest of the external certificate and key as they are now (through their symlinks)."""
    assert config.tls.cert_file and config.tls.key_file
    h = hashlib.sha256()
    for path in (config.tls.cert_file, config.tls.key_file):
        try:
            h.update(path.read_bytes())
        except OSError as exc:
            raise CertError(f"{path}: cannot read ({exc.strerror})") from None
        h.update(b"\0")
    return h.hexdigest()


def _ca_or_none(path: Path) -> Any:
    try:
        return certs.load_cert(path)
    except CertError:
        return None

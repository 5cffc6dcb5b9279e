"""The certificate manager the daemon holds: when to check, how to renew, what to report.

`jrd.tls.certs.leaf_state` decides whether jrd's leaf must be renewed.  This
module turns that decision into a schedule (the exact due time, rechecked
at least every `RECHECK_SECONDS` so that clock jumps and suspends are
caught), carries a renewal out as a transaction (new pair written
atomically by `certs.issue_leaf`, `nginx -t`, graceful nginx reload; the old
pair put back if any step fails), retries a failure with `jrd.backoff`, and
keeps the counts that `status()` and the metrics report.  For external
certificates (certbot's) it only reads: it reports their expiry and notices
when the files nginx loaded changed.

Jupyter is never touched: TLS ends at nginx.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from jrd.backoff import backoff_delay
from jrd.errors import CertError, JrdError
from jrd.tls import certs
from jrd.tls.bootstrap import PairSnapshot

if TYPE_CHECKING:
    from jrd.config import Config
    from jrd.layout import Layout

log = logging.getLogger("jrd")

# Check the certificate at least this often, even when the next renewal is
# months away, so that clock jumps and suspends are caught.  The daemon's
# certificate timer uses this too.
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
    """Renews jrd's own leaf on schedule and reports on every certificate nginx serves.

    The main loop calls everything except `status()`, which any thread may
    call (the metrics scrape, control connections): the record and the
    description cache it reads are changed only under `_lock`, which is
    never held across I/O.
    """

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
        self._lock = threading.Lock()
        self.record = RenewalRecord()
        self.next_check_at: float | None = None  # Unix time, for status
        self._issued_serial: int | None = None
        self._described: dict[Path, tuple[tuple[int, int, int, int], dict[str, Any]]] = {}
        self._logged_error = ""
        self._warned_policy = False
        self._warned_external_day: dt.date | None = None
        self.external_loaded: str | None = None  # digest of the external pair nginx loaded
        # [tls] mode = "acme": the ACME certificate's part of `status()` (jrd.tls.acme_service), thread-safe.
        self.acme_status: Callable[[], dict[str, Any] | None] = lambda: None

    # --- scheduling --------------------------------------------------------------
    def next_check(self, config: "Config", layout: "Layout") -> float:
        """Seconds until the next check: the backoff after a failure, else the due time capped at `recheck`.

        For jrd's own CA this reads the CA and leaf through `certs.leaf_state`
        (which creates the CA only if neither of its files exists).  It never
        raises: if the CA is unusable it answers 0, so that `renew` meets the
        same error and counts, logs and backs off through the one failure path.
        """
        now = self._wall()
        delay = self._next_delay(config, layout, now)
        with self._lock:
            self.next_check_at = now.timestamp() + delay
        return delay

    def _next_delay(self, config: "Config", layout: "Layout", now: dt.datetime) -> float:
        if self.record.consecutive_failures:
            return self._retry_in()
        if config.external_tls:
            return self.recheck
        try:
            state = certs.leaf_state(config, layout, now)
        except (CertError, OSError):
            return 0.0
        decision = state.decision
        if decision.due and state.leaf is not None and state.leaf.serial_number == self._issued_serial:
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

    def _retry_in(self) -> float:
        """The wait before retrying after the current run of failures (`jrd.backoff.backoff_delay`)."""
        return backoff_delay(self.record.consecutive_failures, self.retry_first, self.retry_max)

    # --- renewing -----------------------------------------------------------------
    def renew(
        self, config: "Config", layout: "Layout", *, force: bool, reload_nginx: Callable[[], None]
    ) -> dict[str, Any]:
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
            where = exc.filename or "no file"
            err = CertError(f"renewing the TLS certificate failed: {exc.strerror or exc} ({where})")
            self._failed(str(err), force)
            raise err from None
        if result["renewed"]:
            self.note_issued(int(result["serial"], 16))
            log.info("renewed the TLS certificate (%s); new serial %s; nginx reloaded gracefully",
                     result["reason"], result["serial"])
        elif self.record.consecutive_failures:
            self._recovered()
        return result

    def _renew(
        self, config: "Config", layout: "Layout", force: bool, reload_nginx: Callable[[], None]
    ) -> dict[str, Any]:
        now = self._wall()
        state = certs.leaf_state(config, layout, now)
        decision = state.decision
        if not (decision.due or force):
            return {"renewed": False, "reason": f"not due until {decision.due_at:%Y-%m-%d %H:%M} UTC"}
        reason = "forced" if force and not decision.due else decision.reason
        before = PairSnapshot.take(config, layout)
        cert = certs.issue_leaf(state.ca, state.ca_key, state.policy, layout.leaf_cert, layout.leaf_key, now)
        try:
            reload_nginx()
        except BaseException:
            before.restore()
            raise
        return {"renewed": True, "reason": reason, "serial": format(cert.serial_number, "x")}

    def note_issued(self, serial: int) -> None:
        """Count a leaf that is now in service (by a renewal, a reload or at start)."""
        with self._lock:
            rec = self.record
            failed_before = rec.consecutive_failures
            rec.successes += 1
            rec.last_success = self._wall().timestamp()
            rec.consecutive_failures, rec.retry_forced, rec.last_error = 0, False, ""
        if failed_before:
            log.info("TLS certificate renewal succeeded after %d failed attempts", failed_before)
        self._logged_error = ""
        self._issued_serial = serial

    def _recovered(self) -> None:
        with self._lock:
            rec = self.record
            failed_before = rec.consecutive_failures
            rec.consecutive_failures, rec.retry_forced, rec.last_error = 0, False, ""
        log.info("the TLS certificate check succeeds again after %d failed attempts", failed_before)
        self._logged_error = ""

    def _failed(self, reason: str, forced: bool) -> None:
        with self._lock:
            rec = self.record
            rec.failures += 1
            rec.consecutive_failures += 1
            rec.last_error = reason
            rec.retry_forced = rec.retry_forced or forced
            in_a_row = rec.consecutive_failures
        retry = self._retry_in()
        # One line per distinct reason; repeats of the same reason are counted, not logged again.
        if reason != self._logged_error:
            log.error(
                "TLS certificate renewal failed: %s; the current certificate stays in service; retrying in %.0f s",
                reason, retry,
            )
            self._logged_error = reason
        else:
            log.debug("TLS certificate renewal failed again (%d in a row): %s", in_a_row, reason)

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
                log.warning(
                    "the external TLS certificate on disk is unusable: %s; nginx keeps serving the one it has", exc
                )
                self._logged_error = str(exc)
            return {"error": str(exc), "changed": False}
        self._logged_error = ""
        now = self._wall()
        not_after = chain[0].not_valid_after_utc
        left = (not_after - now).total_seconds() / 86400
        if left < EXTERNAL_WARN_DAYS and self._warned_external_day != now.date():
            log.warning(
                "the external TLS certificate %s expires in %.1f days (%s); jrd does not renew it, its owner must "
                "(for certbot: `certbot renew`)", config.tls.cert_file, left, f"{not_after:%Y-%m-%d %H:%M} UTC",
            )
            self._warned_external_day = now.date()
        return {"days_left": round(left, 1), "changed": self.external_changed(config) is not None}

    # --- reporting ---------------------------------------------------------------
    def status(self, config: "Config", layout: "Layout", served: Path | None = None) -> dict[str, Any]:
        """The certificates nginx serves (leaf, and the CA if it is jrd's), and the renewal counts.

        Safe from any thread: it reads the files (parsing one again only when
        it changed on disk) and copies the record under the manager's lock.
        """
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
        with self._lock:
            rec = replace(self.record)
            next_check_at = self.next_check_at
        out["renewals"] = {"success": rec.successes, "failure": rec.failures}
        out["last_renewal_success"] = rec.last_success
        out["last_renewal_error"] = rec.last_error or None
        out["mode"] = "external" if config.external_tls else "acme" if config.acme_tls else "own"
        acme = self.acme_status()
        if acme is not None:
            out["acme"] = acme
        out["next_check"] = next_check_at
        return out

    def _describe(self, path: Path, now: dt.datetime) -> dict[str, Any]:
        """certs.describe of the file, parsed again only when the file changed.

        Every scrape and `jrdctl status` asks; a stat (through symlinks, so a
        certbot flip or an os.replace is a change) is much cheaper than parsing.
        Two threads may parse the same new file at once; both results are equal.
        """
        try:
            st = path.stat()
        except OSError:
            return certs.describe(certs.load_cert(path), now)  # raises the CertError that says why
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._described.get(path)
        if cached is None or cached[0] != key:
            cached = (key, certs.describe(certs.load_cert(path), now))
            with self._lock:
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

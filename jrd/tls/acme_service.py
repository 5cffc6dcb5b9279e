"""[tls] mode = "acme" in the running daemon: order at start if nothing may be served, renew on time, back off.

An extension (see jrd.extension):

- `prepare`, before nginx starts: if there is no ACME certificate that may be
  served (none, expired, other names) and the backoff allows, order one now,
  answering http-01 with `ChallengeResponder` on `[acme] http_port`, so that
  jrd reports ready only with it.  If that fails (the CA cannot be reached,
  validation fails), jrd starts anyway on its own CA's certificate and says so.
- `contribute`, at every build: the ACME pair in service, if it may be
  served, for nginx (`RenderInputs.acme`); the http-01 server block always.
- a timer on the main loop checks `acme_policy.renewal_due` and the backoff
  every `CHECK_SECONDS`, and at once after a clock jump (a wake from a
  suspend or a stopped VM: `check_certificates`, which the daemon's
  certificate check calls), and runs an order in a thread when one is due;
  `jrdctl cert renew --force` orders at once within the backoff and the
  weekly count (`acme_policy.forced_order_refused`); the thread only submits
  `acme_result`, whose handler installs the pair and asks for a reload (the
  new pair's file name changes nginx.conf: a tested, graceful nginx reload).

Failures and orders are persisted (`AcmeStore`), so restarts neither reset
the backoff nor order again while a valid certificate is on disk.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from jrd.errors import JrdError
from jrd.extension import Context, Extension
from jrd.fsutil import ensure_dir
from jrd.render.base import AcmeServing
from jrd.tls import certs
from jrd.tls.acme import (
    AcmeError,
    AcmeRecord,
    AcmeStore,
    ChallengeFiles,
    ChallengeResponder,
    Issued,
    OrderRequest,
    facts,
    order_certificate,
    read_verify,
)
from jrd.tls.acme_policy import WEEK, Due, Timing, forced_order_refused, next_attempt, renewal_due

if TYPE_CHECKING:
    from jrd.config import Config
    from jrd.loop import Command
    from jrd.render import RenderInputs

log = logging.getLogger("jrd")

# Look at the certificate at least this often (cheap: no network unless an order is due).
CHECK_SECONDS = 60.0


class AcmeService(Extension):
    def __init__(self, *, timing: Timing | None = None, wall: Callable[[], dt.datetime] = certs.utcnow,
                 check_seconds: float = CHECK_SECONDS):
        self.timing = timing or Timing()
        self._wall = wall
        self.check_seconds = check_seconds
        self._lock = threading.Lock()
        self.record = AcmeRecord()
        self.store: AcmeStore | None = None
        self.ctx: Context | None = None
        self._thread: threading.Thread | None = None
        self._logged_error = ""
        self._next_at: dt.datetime | None = None
        self._due: Due | None = None
        # Whether the last build gave nginx the ACME pair.
        self._contributed = False

    # --- hooks --------------------------------------------------------------------------
    def prepare(self, ctx: Context) -> None:
        self.ctx = ctx
        ctx.add_handler("acme_result", self._on_result)
        self.store = AcmeStore(ctx.layout.acme_dir)
        self.record = self.store.load_record()
        cfg = ctx.config
        if not cfg.acme_tls:
            return
        ensure_dir(ctx.layout.nginx_dir, 0o755)
        ensure_dir(ctx.layout.acme_challenge_dir, 0o755)
        due, at = self._plan(cfg)
        if not (due.due and due.urgent):
            return
        if self._wall() < at:
            log.warning("no ACME certificate may be served (%s), and the last order failed: the next try is at %s; "
                        "serving with jrd's own CA's certificate until then", due.reason, _when(at))
            return
        log.info("ordering a certificate from %s before starting (%s)", cfg.acme.directory_url, due.reason)
        try:
            responder = ChallengeResponder(cfg.nginx.listen, cfg.acme.http_port, ctx.layout.acme_challenge_dir)
        except AcmeError as exc:
            self._failed(str(exc))
            return
        try:
            issued = order_certificate(self._request(cfg), self.store, ChallengeFiles(ctx.layout.acme_challenge_dir),
                                       cfg.tls.key_type)
        except AcmeError as exc:
            self._failed(str(exc))
            return
        finally:
            responder.close()
        self._installed(issued)

    def contribute(self, inputs: "RenderInputs") -> "RenderInputs":
        cfg = inputs.config
        if not cfg.acme_tls or self.store is None:
            return inputs
        layout = inputs.layout
        serving = AcmeServing(challenge_dir=layout.acme_challenge_dir, http_port=cfg.acme.http_port)
        pair = self._servable(cfg)
        if pair is not None:
            names, ips = cfg.acme_identifiers
            serving = replace(serving, cert=pair[0], key=pair[1], hosts=(*names, *ips))
        self._contributed = pair is not None
        return replace(inputs, acme=serving)

    def start(self, ctx: Context) -> None:
        if ctx.config.acme_tls:
            self._schedule(0.0)

    def config_changed(self, old: "Config", new: "Config") -> None:
        if new.acme_tls and (old.tls != new.tls or old.acme != new.acme):
            self._schedule(0.0)

    def check_certificates(self, force: bool) -> dict[str, Any] | None:
        """`jrdctl cert renew [--force]` and a clock jump: look now; forced, order now unless refused."""
        if self.ctx is None or not self.ctx.config.acme_tls:
            return None
        if not force:
            self._check()
            return {"acme": {"ordered": self._thread is not None, "reason": self._due.reason if self._due else ""}}
        if self._thread is not None:
            return {"acme": {"ordered": True, "reason": "an order is already running"}}
        with self._lock:
            rec = self.record
            last = dt.datetime.fromtimestamp(rec.last_failure, dt.timezone.utc) if rec.last_failure else None
            issued = [dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in rec.issued]
        refused = forced_order_refused(issued, rec.consecutive_failures, last, self._wall(), self.timing)
        if refused:
            log.warning("not ordering a new ACME certificate now: %s", refused)
            return {"acme": {"ordered": False, "reason": refused}}
        self._start_order(self.ctx.config, "forced (jrdctl cert renew --force)")
        return {"acme": {"ordered": True, "reason": "forced"}}

    def stop(self) -> None:
        # An order in flight is abandoned: its thread is a daemon thread and submits to a bus nobody reads.
        pass

    # --- the schedule (main loop) ------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        assert self.ctx is not None
        self.ctx.schedule("acme", max(0.0, delay), self._check)

    def _plan(self, cfg: "Config") -> tuple[Due, dt.datetime]:
        assert self.store is not None
        names, ips = cfg.acme_identifiers
        pair = self.store.current_pair(self.record)
        cert = facts(pair[2], self.record.ari_renew_at) if pair else None
        due = renewal_due(cert, names, ips, self._wall())
        last_failure = (dt.datetime.fromtimestamp(self.record.last_failure, dt.timezone.utc)
                        if self.record.last_failure else None)
        at = next_attempt(due, self.record.consecutive_failures, last_failure, self.timing)
        with self._lock:
            self._due, self._next_at = due, at
        return due, at

    def _check(self) -> None:
        assert self.ctx is not None
        cfg = self.ctx.config
        if not cfg.acme_tls:
            return
        due, at = self._plan(cfg)
        now = self._wall()
        if due.due and now >= at and self._thread is None:
            self._start_order(cfg, due.reason)
        if due.urgent and self._servable(cfg) is None and self._contributed:
            # The one nginx serves expired (a suspend, a clock jump): fall back to jrd's own CA now.
            self.ctx.submit("reload", "the ACME certificate expired")
        wait = (at - now).total_seconds() if now < at else self.check_seconds
        self._schedule(min(self.check_seconds, max(1.0, wait)))

    def _start_order(self, cfg: "Config", reason: str) -> None:
        log.info("ordering a new certificate from %s (%s)", cfg.acme.directory_url, reason)
        self._thread = threading.Thread(target=self._order, args=(cfg,), name="acme-order", daemon=True)
        self._thread.start()

    def _order(self, cfg: "Config") -> None:
        """In its own thread: one order; the result goes back to the main loop."""
        assert self.ctx is not None and self.store is not None
        try:
            issued = order_certificate(self._request(cfg), self.store,
                                       ChallengeFiles(self.ctx.layout.acme_challenge_dir), cfg.tls.key_type)
            self.ctx.submit("acme_result", "ACME order", issued=issued)
        except AcmeError as exc:
            self.ctx.submit("acme_result", "ACME order", error=str(exc))
        except Exception as exc:  # a bug or a surprise from the library: counted and retried like a failure
            log.exception("the ACME order failed unexpectedly")
            self.ctx.submit("acme_result", "ACME order", error=f"internal error: {exc}")

    def _on_result(self, cmd: "Command") -> dict[str, Any]:
        assert self.ctx is not None
        self._thread = None
        if "error" in cmd.args:
            self._failed(cmd.args["error"])
            result: dict[str, Any] = {"ok": False, "error": cmd.args["error"]}
        else:
            serial = self._installed(cmd.args["issued"])
            # The new pair has a new file name, so nginx.conf changes: the reload tests it and
            # reloads nginx gracefully.
            self.ctx.submit("reload", "a new ACME certificate")
            result = {"ok": True, "serial": serial}
        self._schedule(0.0)
        return result

    # --- results ------------------------------------------------------------------------
    def _installed(self, issued: Issued) -> str:
        assert self.store is not None
        serial, leaf = self.store.install(issued.chain_pem, issued.key_pem)
        now = self._wall().timestamp()
        with self._lock:
            rec = self.record
            previous = rec.current
            failed_before = rec.consecutive_failures
            rec.current, rec.profile, rec.ari_renew_at = serial, issued.profile, issued.ari_renew_at
            rec.consecutive_failures, rec.last_error, rec.last_failure, rec.last_success = 0, "", None, now
            rec.orders["success"] = rec.orders.get("success", 0) + 1
            rec.issued = [t for t in rec.issued if t > now - WEEK.total_seconds()] + [now]
        self.store.save_record(rec)
        self.store.prune({serial, previous})
        self._logged_error = ""
        log.info("obtained a certificate from %s (serial %s, profile %s, valid until %s)%s",
                 leaf.issuer.rfc4514_string(), serial, issued.profile or "the CA's default",
                 _when(leaf.not_valid_after_utc),
                 f" after {failed_before} failed orders" if failed_before else "")
        return serial

    def _failed(self, error: str) -> None:
        assert self.store is not None and self.ctx is not None
        with self._lock:
            rec = self.record
            rec.consecutive_failures += 1
            rec.last_failure = self._wall().timestamp()
            rec.last_error = error
            rec.orders["failure"] = rec.orders.get("failure", 0) + 1
        self.store.save_record(rec)
        cfg = self.ctx.config
        _, at = self._plan(cfg)
        served = "the ACME certificate it has" if self._servable(cfg) else "jrd's own CA's certificate"
        if error != self._logged_error:
            log.error("ACME order failed: %s; serving with %s; next try at %s", error, served, _when(at))
            self._logged_error = error
        else:
            log.warning("ACME order failed again (%d in a row); next try at %s", rec.consecutive_failures, _when(at))

    def _servable(self, cfg: "Config") -> tuple[Any, Any, Any] | None:
        """The pair in service if nginx may serve it now: on disk, for these identifiers, not expired."""
        if self.store is None:
            return None
        pair = self.store.current_pair(self.record)
        if pair is None:
            return None
        names, ips = cfg.acme_identifiers
        due = renewal_due(facts(pair[2]), names, ips, self._wall())
        return None if due.urgent else pair

    def _request(self, cfg: "Config") -> OrderRequest:
        from jrd.config import eab_hmac_key

        names, ips = cfg.acme_identifiers
        acme = cfg.acme
        try:
            hmac = eab_hmac_key(str(cfg.source or "the config"), acme) if acme.eab_hmac_key_file else ""
        except JrdError as exc:  # the file changed since the config was checked
            raise AcmeError(str(exc)) from None
        return OrderRequest(acme.directory_url, names, ips, acme.profile, acme.email, acme.eab_kid, hmac,
                            read_verify(acme.directory_ca_file))

    # --- reporting (any thread) ------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        """The ACME part of `jrdctl cert show`, `status` and the metrics; None when the mode is not ACME."""
        if self.ctx is None or not self.ctx.config.acme_tls:
            return None
        cfg = self.ctx.config
        with self._lock:
            rec = replace(self.record, orders=dict(self.record.orders))
            due, at = self._due, self._next_at
        pair = self._servable(cfg)
        out: dict[str, Any] = {
            "directory": cfg.acme.directory_url,
            "serving": "acme" if pair is not None else "local CA",
            "profile": rec.profile or None,
            "orders": rec.orders,
            "consecutive_failures": rec.consecutive_failures,
            "last_error": rec.last_error or None,
            "last_success": rec.last_success,
            "next_order_at": at.timestamp() if at else None,
            "next_order_reason": due.reason if due else None,
            "ordering": self._thread is not None,
        }
        if pair is not None:
            out["certificate"] = {**certs.describe(pair[2], self._wall()), "file": str(pair[0])}
        else:
            out["why_local"] = rec.last_error or (due.reason if due else "no ACME certificate yet")
        return out


def _when(at: dt.datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S} UTC"

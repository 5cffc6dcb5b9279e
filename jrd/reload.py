"""A reload is a transaction: load, build, plan, install, apply; on any refusal nothing changes.

The phases, in order (`Reloader.transaction`):

1. load     read the config again; keys that only a restart of jrd applies keep their values
2. build    certificate (issued if the names changed), password, render, `nginx -t` on a staged
            copy (`jrd.build.build_to_run`, the same build that start and `jrd check` use)
3. plan     the least disruptive actions (`jrd.reload_plan.plan_reload`, pure)
4. install  write the changed files atomically
5. apply    log level, supervisord update, graceful nginx reload, Jupyter restart under its policy
6. commit   the new config is in force; extensions follow it

A failure in phases 1–3 leaves every file as it was (a leaf issued for the
refused config is put back) and the running config in force.  A failure in
phase 5 keeps the old file set as "what runs", so the next reload sees the
difference and tries again.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Callable

from jrd import preflight, states
from jrd.build import Build, Contribute, build_to_run, install
from jrd.config import Config
from jrd.errors import JrdError, ReloadApplyError
from jrd.layout import Layout
from jrd.ledger import Ledger
from jrd.programs import Jupyter, Nginx
from jrd.reload_plan import ReloadPlan, effective_config, jupyter_baseline, plan_reload
from jrd.render import RenderedFile, RenderInputs
from jrd.tls import certs
from jrd.tls.bootstrap import PairSnapshot
from jrd.tls.renewal import CertManager
from jrd.supervisor import Supervisor

log = logging.getLogger("jrd")


@dataclass
class Running:
    """What the stack runs now: written by the main loop only."""

    config: Config
    inputs: RenderInputs | None = None
    files: dict[str, RenderedFile] | None = None

    def adopt(self, config: Config, built: Build) -> None:
        self.config, self.inputs, self.files = config, built.inputs, built.files


class Reloader:
    def __init__(self, running: Running, load: Callable[[], Config], *, layout: Layout, supervisor: Supervisor,
                 ledger: Ledger, nginx: Nginx, jupyter: Jupyter, certificates: CertManager,
                 contribute: Contribute, config_changed: Callable[[Config, Config], None],
                 tls_changed: Callable[[], None], wall: Callable[[], dt.datetime] = certs.utcnow):
        self.running = running
        self._load = load
        self.layout = layout
        self.supervisor = supervisor
        self.ledger = ledger
        self.nginx = nginx
        self.jupyter = jupyter
        self.certificates = certificates
        self._contribute = contribute
        self._config_changed = config_changed
        self._tls_changed = tls_changed
        self._wall = wall

    def run(self, source: str, reply_expected: bool) -> dict[str, Any]:
        """Carry out one reload and record it; a refusal is logged once and changes nothing.

        Raises the refusal when someone waits for the answer (`reply_expected`),
        else returns it: a signal or a file event has nobody else to tell.
        """
        try:
            result = self.transaction(source)
        except JrdError as exc:
            message = str(exc)
            where = str(self.running.config.source) if self.running.config.source else ""
            applying = isinstance(exc, ReloadApplyError)
            if where and not message.startswith(where) and not applying:
                message = f"{where}: {message}"
            self.ledger.record_reload(False, message)
            if applying:
                log.error("reload (%s) failed while applying, the next reload tries again: %s", source, message)
            else:
                log.error("reload (%s) refused, the running config stays: %s", source, message)
            if not reply_expected:
                return {"ok": False, "error": message}
            raise type(exc)(message) from None
        except Exception as exc:  # a bug: the daemon keeps serving on the config it has
            self.ledger.record_reload(False, f"internal error: {exc}")
            log.exception("reload (%s) failed unexpectedly, the running config stays", source)
            if not reply_expected:
                return {"ok": False, "error": str(exc)}
            raise JrdError(f"reload failed unexpectedly ({exc}); see jrd's log") from None
        self.ledger.record_reload(True)
        return result

    def transaction(self, source: str) -> dict[str, Any]:
        running = self.running
        old = running.config
        # 1. load
        new, notes = effective_config(old, self._load())
        preflight.jupyter_account(new)  # needs the machine but writes nothing
        # 2. build
        built = self._build(new)
        # An external pair that changed on disk (a certbot symlink flip) needs an nginx reload
        # even though no rendered file changed.
        external_changed = self.certificates.external_changed(new) if new.external_tls else None
        # 3. plan
        pending = self.jupyter.pending.baseline if self.jupyter.pending else None
        plan = plan_reload(old, new, running.files or {}, built.files,
                           tls_changed=bool(built.issued or external_changed), pending=pending)
        for note in notes:
            log.warning("%s", note)
        # 4. install
        install(built.files)
        old_inputs = running.inputs
        password_changed = old_inputs is not None and old_inputs.hashed_password != built.inputs.hashed_password
        running.config, running.inputs = plan.config, built.inputs
        # 5. apply
        try:
            actions = self.apply(plan, "the login password changed" if password_changed else "its config changed")
        except JrdError as exc:
            # running.files stays the old set, so the next reload sees the difference and retries.
            raise ReloadApplyError(f"the new files are installed but applying them failed: {exc}") from None
        # 6. commit
        running.files = built.files
        if external_changed:
            self.certificates.external_loaded = external_changed
            actions.append("external certificate changed")
        if built.issued:
            leaf = certs.current_leaf(self.layout.leaf_cert, self.layout.leaf_key)
            self.certificates.note_issued(leaf.serial_number if leaf else 0)
            actions.append(f"new TLS certificate ({built.issued})")
        self._tls_changed()
        if old != plan.config:
            self._config_changed(old, plan.config)
        log.info("reload (%s) applied: %s", source, "; ".join(actions) or "nothing changed")
        if plan.log_level:
            logging.getLogger().setLevel(plan.log_level.upper())
        return {"changed": plan.changed, "actions": actions}

    def _build(self, new: Config) -> Build:
        """The new config built; a leaf issued for it is put back if a later check refuses it."""
        before = PairSnapshot.take(new, self.layout)
        try:
            return build_to_run(new, self.layout, self._wall(), self._contribute)
        except BaseException:
            before.restore()
            raise

    def apply(self, plan: ReloadPlan, jupyter_reason: str) -> list[str]:
        """Carry out a plan, least disruptive first; the names of what was done."""
        actions: list[str] = []
        if plan.log_level:
            # The more verbose of the two levels until this reload is logged, so that
            # its own line shows whichever way the level went.
            root = logging.getLogger()
            root.setLevel(min(root.level, logging.getLevelName(plan.log_level.upper())))
            actions.append(f"log level is now {plan.log_level}")
        changed_groups: list[str] = []
        if plan.supervisord_update:
            added, changed_groups, removed = self.supervisor.update()
            if added or changed_groups or removed:
                actions.append(f"supervisord update (added {added}, changed {changed_groups}, removed {removed})")
            for name in changed_groups:
                self.ledger.count_restart(name, states.REASON_RELOAD)
        if plan.reload_nginx and self.nginx.name not in changed_groups:
            # The build has just run `nginx -t` on these very bytes (staged).
            self.nginx.reload(tested=True)
            actions.append("nginx reloaded gracefully")
        if plan.cancel_jupyter_restart and self.jupyter.cancel_pending():
            actions.append("pending jupyter restart cancelled (its config is back to what it runs)")
        if plan.restart_jupyter and self.jupyter.name not in changed_groups:
            baseline = jupyter_baseline(self.running.files or {})
            self.jupyter.schedule_restart(jupyter_reason, update=plan.jupyter_needs_update, baseline=baseline)
            if self.jupyter.pending:
                actions.append(f"jupyter restart pending until no kernel is busy ({jupyter_reason})")
            else:
                actions.append(f"jupyter restarted ({jupyter_reason})")
        return actions

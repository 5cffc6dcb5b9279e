"""The daemon: start the stack, run the main loop, stop the stack, assemble its status.

Everything that asks jrd to act becomes a command on one queue
(`jrd.loop.CommandBus`), carried out by the main loop one at a time; signal
handlers only post.  The parts, each in its own module:

    loop.py         the command bus and timers
    programs.py     nginx and Jupyter: how each is restarted, reloaded, held back
    operations.py   what jrdctl asks for (jrd.control.commands declares it)
    reload.py       a config reload as a transaction
    supervision.py  what jrd does when a program dies, loops or hangs
    serving.py      whether Jupyter answers through nginx
    preflight.py    lock, ports, accounts, binaries, an earlier jrd's leftovers
    extension.py    what an extension (control, events, health, metrics, watch) may touch
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any, Callable

from jrd import __version__, nginx, passwords, preflight, processes, serving
from jrd.build import build_to_run, install
from jrd.config import Config, load_config
from jrd.control.commands import handlers as control_handlers
from jrd.errors import Interrupted, SupervisorError
from jrd.extension import Context, Extension
from jrd.fsutil import ensure_dir
from jrd.idle import IdleGuard
from jrd.jupyter import JupyterClient
from jrd.layout import Layout
from jrd.ledger import Ledger
from jrd.loop import ClockJump, Command, CommandBus, Timers
from jrd.programs import Jupyter, Nginx, Program
from jrd.operations import Operations
from jrd.reload import Reloader, Running
from jrd.render import RenderInputs
from jrd.sdnotify import notify, watchdog_interval
from jrd.supervision import SUPERVISE_INTERVAL, CrashLoop, DeathWatch, Supervision
from jrd.supervisor import Supervisor, become_subreaper, launch_supervisord, stop_supervisord
from jrd.tls import certs
from jrd.tls.bootstrap import pair_signature
from jrd.tls.renewal import CertManager
from jrd.watch import Debouncer

log = logging.getLogger("jrd")

# `jrdctl status` asks through nginx at once; a hung nginx costs it this long.
STATUS_PROBE_TIMEOUT = 2.0
# SIGHUPs closer together than this are one burst, answered by one reload (at most this much later).
SIGHUP_QUIET = 0.2
SIGHUP_MAX_DELAY = 3.0


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_loader: Callable[[], Config] | None = None,
        announce: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = certs.utcnow,
        show_password: bool = False,
        extensions: list[Extension] | None = None,
    ):
        self._show_password = show_password
        self.layout = Layout.of(config)
        self.running = Running(config)
        load = config_loader or (lambda: load_config(config.source) if config.source else config)
        self._announce = announce or (lambda msg: log.info("%s", msg))
        self._clock = clock
        self._wall = wall
        self.extensions: list[Extension] = list(extensions or [])
        self.bus = CommandBus()
        self.timers = Timers(clock)
        self.ledger = Ledger()
        self.supervisor = Supervisor(self.layout.supervisor_socket)
        self.supervision = Supervision(self.supervisor, self.layout, self.ledger, self._launch_supervisord, clock,
                                       CrashLoop.from_config(config.health))
        self.certificates = CertManager(wall=wall)
        self.lock = preflight.InstanceLock(self.layout.lock_file)
        self.jupyter_api = JupyterClient(lambda: self.running.config)
        self.nginx = Nginx(self.supervisor, self.ledger, self._test_nginx_config)
        self.jupyter = Jupyter(self.supervisor, self.ledger, self.jupyter_api, lambda: self.running.config.jupyter,
                               self.timers.schedule, self.timers.cancel, clock)
        self.programs: dict[str, Program] = {p.name: p for p in (self.jupyter, self.nginx)}
        self.reloader = Reloader(
            self.running, load, layout=self.layout, supervisor=self.supervisor, ledger=self.ledger,
            nginx=self.nginx, jupyter=self.jupyter, certificates=self.certificates, contribute=self._contribute,
            config_changed=self._config_changed, tls_changed=self._schedule_cert_check, wall=wall,
        )
        self.operations = Operations(
            programs=self.programs, ledger=self.ledger, reloader=self.reloader, certificates=self.certificates,
            layout=self.layout, jupyter_api=self.jupyter_api, config=lambda: self.running.config,
            status=self.status, reload_later=self._reload_later, after_cert_check=self._schedule_cert_check,
            idle=next((e for e in self.extensions if isinstance(e, IdleGuard)), None), extensions=self.extensions,
        )
        self.serving = serving.ServingCheck(lambda: self.running.config, self.ledger, self.bus.post,
                                            self.timers.schedule, self.supervision.crash_loops)
        # Set by SIGTERM/SIGINT too, so that a start still waiting can give up at once.
        self.stop_requested = threading.Event()
        self.context = Context(
            layout=self.layout, supervisor=self.supervisor, ledger=self.ledger, jupyter=self.jupyter_api,
            submit=self.bus.submit, add_handler=self.bus.add_handler, schedule=self.timers.schedule,
            cancel=self.timers.cancel, current_config=lambda: self.running.config,
            wait_serving=self.wait_serving_answer, certificate_status=self.certificate_status,
        )
        self.bus.add_handler("shutdown", self._on_shutdown)
        self.bus.add_handler("supervise", lambda cmd: self._supervise())
        self.bus.add_handler("sighup", self._on_sighup)
        self._hups = Debouncer(quiet=SIGHUP_QUIET, write_grace=SIGHUP_QUIET, max_delay=SIGHUP_MAX_DELAY)
        self._leaf_seen: tuple[tuple[int, int, int], ...] | None = None
        self._clock_jump = ClockJump()
        self.bus.add_handler("serving_result", lambda cmd: self.serving.record(cmd.args["serving"]))
        for name, handler in control_handlers(self.operations).items():
            self.bus.add_handler(name, handler)

    @property
    def config(self) -> Config:
        return self.running.config

    # --- run ---------------------------------------------------------------------
    def run(self) -> int:
        """Start everything, serve commands until shutdown, stop everything; the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self.start()
        except Interrupted as exc:
            log.info("%s; stopping", exc)
            self.stop()
            return 0
        except BaseException:
            self.stop()
            raise
        try:
            self.loop()
        finally:
            notify("STOPPING=1")
            self.stop()
        log.info("jrd stopped")
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only enqueue: SimpleQueue.put is safe to call from a signal handler.
        source = f"signal {signal.Signals(signum).name}"
        if signum == signal.SIGHUP:
            self.bus.post("sighup", source)
        else:
            self.stop_requested.set()
            self.bus.post("shutdown", source)

    def _on_sighup(self, cmd: Command) -> None:
        """A storm of SIGHUPs is one reload: once they stop for a moment, or at most a few seconds after the first."""
        self._hups.note(self._clock())
        deadline = self._hups.deadline() or self._clock()
        self.timers.schedule("sighup", deadline - self._clock(), lambda: self._reload_after_sighup(cmd.source))

    def _reload_later(self, source: str) -> None:
        """A reload after the command that asks for it; a refusal is logged once, by the reload."""
        self.timers.schedule("reload-later", 0, lambda: self.operations.reload(source, reply_expected=False))

    def _reload_after_sighup(self, source: str) -> None:
        if self._hups.due(self._clock()):
            self.operations.reload(source, reply_expected=False)

    def start(self) -> None:
        cfg, layout = self.config, self.layout
        ensure_dir(layout.runtime_dir, 0o755, force=False)
        self.lock.acquire()
        preflight.clear_previous_run(layout)
        preflight.check_ports(cfg)
        password_note = passwords.ensure_initial_password(layout.password_file, layout.initial_password_file,
                                                          self._show_password)
        for ext in self.extensions:
            ext.prepare(self.context)
        if cfg.external_tls:
            self.certificates.external_loaded = self.certificates.external_changed(cfg)
        built = build_to_run(cfg, layout, self._wall(), self._contribute)
        if built.issued:
            log.info("issued a new TLS certificate (%s)", built.issued)
        install(built.files)
        self.running.adopt(cfg, built)
        self.jupyter_api.token = built.inputs.internal_token
        if os.geteuid() != 0 and not cfg.external_tls:
            log.warning("jrd and Jupyter run as the same account, so notebooks can read the CA key in %s; "
                        "run jrd as root to keep it apart (see README, Trusting the CA)", layout.tls_dir)
        become_subreaper()
        self.supervision.supervisord = self._launch_supervisord()
        self.supervision.deathwatch = DeathWatch(
            lambda pid: self.supervision.on_death(pid) and self.bus.post("supervise", "supervisord died"))
        self.supervision.deathwatch.start()
        self.supervision.tick()
        for ext in self.extensions:
            ext.start(self.context)
        self.wait_serving(self._clock() + serving.STARTUP_TIMEOUT)
        self._schedule_cert_check()
        self.timers.schedule("supervise", SUPERVISE_INTERVAL, self._supervise)
        self._clock_jump.jumped(self._wall().timestamp(), self._clock())  # the first look
        self.serving.start()
        host = cfg.local_probe_host if ":" not in cfg.local_probe_host else f"[{cfg.local_probe_host}]"
        local = cfg.url.replace(cfg.url.split("/")[2], f"{host}:{cfg.nginx.port}")
        self._announce(f"jrd {__version__} is serving JupyterLab at {cfg.url} (from this machine: {local})")
        self._announce(password_note)
        notify(f"READY=1\nSTATUS=serving {cfg.url}\nMAINPID={os.getpid()}")

    def loop(self) -> None:
        watchdog = watchdog_interval()
        if watchdog:
            self._keepalive(watchdog)
        while True:
            cmd = self.bus.next(self.timers.next_wait())
            if cmd is not None:
                self.bus.execute(cmd)
                if cmd.name == "shutdown":
                    return
            self.timers.run_due()

    def _keepalive(self, interval: float) -> None:
        notify("WATCHDOG=1")
        self.timers.schedule("watchdog", interval, lambda: self._keepalive(interval))

    def _on_shutdown(self, cmd: Command) -> str:
        log.info("shutting down (%s)", cmd.source)
        return "stopping"

    def stop(self) -> None:
        """Stop the extensions, then supervisord (it stops Jupyter and nginx gracefully), then anything left."""
        for ext in reversed(self.extensions):
            try:
                ext.stop()
            except Exception:
                log.exception("stopping %s failed", type(ext).__name__)
        if self.supervision.deathwatch is not None:
            self.supervision.deathwatch.stop()
        proc = self.supervision.supervisord
        if proc is not None:
            # Frozen (SIGSTOP), supervisord would answer nothing and a program could not act on its
            # SIGTERM: both are woken first, so that everything stops gracefully and at once.
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
            self.supervisor.wake_all()
            status = stop_supervisord(proc, timeout=45)
            if status not in (0, -signal.SIGTERM):
                log.warning("supervisord exited with status %s", status)
            self.supervision.supervisord = None
        processes.reap_all()
        self.lock.release()

    # --- parts of start -------------------------------------------------------------
    def _launch_supervisord(self) -> subprocess.Popen[bytes]:
        proc = launch_supervisord(self.layout.supervisord_conf)
        try:
            self.supervisor.wait_ready(self._clock() + 30, alive=proc, cancelled=self.stop_requested)
        except BaseException:
            self.supervision.supervisord = proc  # so that stop() ends it
            raise
        return proc

    def _contribute(self, inputs: RenderInputs) -> RenderInputs:
        for ext in self.extensions:
            inputs = ext.contribute(inputs)
        return inputs

    def _config_changed(self, old: Config, new: Config) -> None:
        self.supervision.policy.follow(new.health)
        for ext in self.extensions:
            try:
                ext.config_changed(old, new)
            except Exception:
                log.exception("%s could not follow the new config", type(ext).__name__)

    def _test_nginx_config(self) -> None:
        inputs = self.running.inputs
        if inputs is not None:
            nginx.test_config(inputs.nginx_executable, self.layout.nginx_conf)

    def _supervise(self) -> None:
        try:
            self.supervision.tick()
            if jump := self._clock_jump.jumped(self._wall().timestamp(), self._clock()):
                log.warning("the clock moved %+.0f s beyond jrd's own (a suspend, a stopped VM or a clock step); "
                            "checking the certificate now", jump)
                self.timers.schedule("cert", 0, lambda: self.operations.renew_cert(False, reply_expected=False))
            if pair_signature(self.config, self.layout) != self._leaf_seen:
                # Deleted, corrupted or replaced outside jrd: nginx still serves the pair it loaded;
                # the renewal path checks the files and issues a new pair if they are unusable.
                log.warning("the TLS certificate or key changed on disk outside jrd; checking it now")
                self._leaf_seen = pair_signature(self.config, self.layout)
                self.timers.schedule("cert", 0, lambda: self.operations.renew_cert(False, reply_expected=False))
        finally:
            hold = self.supervision.next_due(self._clock())
            self.timers.schedule("supervise", min(SUPERVISE_INTERVAL, hold if hold is not None else 1e9),
                                 self._supervise)

    # --- serving ---------------------------------------------------------------
    def wait_serving(self, deadline: float) -> None:
        serving.wait_serving(self.config, self.supervisor, self.layout, deadline, self.stop_requested, self._clock)

    def wait_serving_answer(self, deadline: float) -> dict[str, Any]:
        return serving.wait_serving_answer(self.config, self.supervisor, self.layout, deadline, self.stop_requested,
                                           self._clock)

    # --- certificates ------------------------------------------------------------
    def _schedule_cert_check(self) -> None:
        self._leaf_seen = pair_signature(self.config, self.layout)
        delay = self.certificates.next_check(self.config, self.layout)
        self.timers.schedule("cert", delay, lambda: self.operations.renew_cert(False, reply_expected=False))

    def certificate_status(self) -> dict[str, Any]:
        """The served leaf (and jrd's CA), renewal counts and the last success; safe from any thread."""
        inputs = self.running.inputs
        return self.certificates.status(self.config, self.layout, inputs.cert_file if inputs else None)

    # --- status -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Everything `jrdctl status` shows; whether jrd serves is asked now, through nginx."""
        self.serving.now(STATUS_PROBE_TIMEOUT)
        snap = self.ledger.snapshot()
        loops = self.supervision.crash_loops()
        procs: dict[str, Any] = {}
        try:
            for name, info in self.supervisor.processes().items():
                procs[name] = {
                    "state": info.state, "pid": info.pid or None, "uptime_seconds": round(info.uptime, 1),
                    "restarts": snap.restarts_of(name),
                }
                if name in loops:
                    procs[name]["crash_loop"] = loops[name]
            supervisor_ok = True
        except SupervisorError as exc:
            supervisor_ok = False
            procs = {"error": str(exc)}
        rec = snap.reloads
        return {
            "version": __version__,
            "pid": os.getpid(),
            "url": self.config.url,
            "config": str(self.config.source) if self.config.source else None,
            "supervisor": supervisor_ok,
            "serving": dataclasses.asdict(snap.serving) if snap.serving else None,
            "programs": procs,
            "certificates": self.certificate_status(),
            "reload": {
                "last_ok": rec.ok, "last_at": rec.at, "last_success_at": rec.last_success_at, "error": rec.error,
                "successes": rec.successes, "failures": rec.failures,
            },
            "pending": [f"restart jupyter ({p.reason}) when no kernel is busy"] if (p := self.jupyter.pending) else [],
            "idle": self.operations.idle_summary(),
        }

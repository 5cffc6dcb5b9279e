"""The daemon: one queue of commands, timers, and the supervised stack.

Everything that asks jrd to act (a signal, a file event, a `jrdctl`
request, a timer) becomes a `Command` on one queue, and only the main loop
carries commands out, one at a time.  Signal handlers only enqueue.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jrd import __version__, logs, nginx, passwords, prepare, probe, processes, states
from jrd.config import Config, load_config
from jrd.errors import Interrupted, JrdError, PreflightError, ReloadApplyError, StartupError, SupervisorError
from jrd.fsutil import atomic_write, ensure_dir
from jrd.layout import Layout
from jrd.render import RenderedFile, RenderInputs
from jrd.reload_plan import ReloadPlan, effective_config, jupyter_baseline, plan_reload
from jrd.sdnotify import notify, watchdog_interval
from jrd.supervisor import Supervisor, become_subreaper, launch_supervisord, stop_supervisord
from jrd.tls import bootstrap, certs, renewal

log = logging.getLogger("jrd")

STARTUP_TIMEOUT = 120.0
# How often a pending Jupyter restart asks whether a kernel is still busy.
IDLE_POLL = 1.0
# Recheck the certificate at least this often, so that clock jumps and
# suspends are caught even when the next renewal is months away.
CERT_RECHECK = 3600.0
# Backoff for programs that supervisord gave up on (FATAL).
FATAL_RETRY_FIRST = 30.0
FATAL_RETRY_MAX = 600.0


@dataclass
class Command:
    """One request to the main loop; `reply` receives the result or the error."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    source: str = "internal"
    reply: Future[Any] | None = None


@dataclass
class ReloadRecord:
    ok: bool | None = None
    at: float | None = None
    last_success_at: float | None = None
    error: str = ""
    successes: int = 0
    failures: int = 0


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
    ):
        self._show_password = show_password
        self.config = config
        self.layout = Layout.of(config)
        self._load = config_loader or (lambda: load_config(config.source) if config.source else config)
        self._announce = announce or (lambda msg: log.info("%s", msg))
        self._clock = clock
        self._wall = wall
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.supervisor = Supervisor(self.layout.supervisor_socket)
        self.supervisord: subprocess.Popen[bytes] | None = None
        self.inputs: RenderInputs | None = None
        self.files: dict[str, RenderedFile] = {}
        self.reloads = ReloadRecord()
        self.restarts: dict[tuple[str, str], int] = {}
        self.certificates = renewal.CertManager(wall=wall)
        self.pending_restart: dict[str, Any] | None = None
        self.started_at = time.time()
        self.timers: dict[str, float] = {}
        self._lock_fd: int | None = None
        self._stopping = False
        self._handlers: dict[str, Callable[[Command], Any]] = {
            "shutdown": self._do_shutdown,
            "reload": self._do_reload,
            "restart": self._do_restart,
            "start": self._do_start,
            "stop": self._do_stop,
            "status": self._do_status,
            "renew_cert": self._do_renew_cert,
            "passwd": self._do_passwd,
            "kernels": self._do_kernels,
            "logs": self._do_logs,
        }
        self.extensions: list[Any] = []
        self._fatal_retry: dict[str, tuple[float, float]] = {}
        self._strays = processes.StrayReaper()
        # Set by SIGTERM/SIGINT too, so that a start still waiting can give up at once.
        self.stop_requested = threading.Event()

    # --- the one command path ---------------------------------------------
    def submit(self, name: str, source: str, **args: Any) -> Future[Any]:
        """Queue a command from any thread; the Future resolves when it is done."""
        fut: Future[Any] = Future()
        self.commands.put(Command(name, args, source, fut))
        return fut

    def add_handler(self, name: str, handler: Callable[[Command], Any]) -> None:
        """Let an extension carry out its own command on the main loop (the one command path)."""
        if name in self._handlers:
            raise ValueError(f"a handler for {name!r} exists already")
        self._handlers[name] = handler

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only enqueue: SimpleQueue.put is safe to call from a signal handler.
        name = "reload" if signum == signal.SIGHUP else "shutdown"
        if name == "shutdown":
            self.stop_requested.set()
        self.commands.put(Command(name, {}, f"signal {signal.Signals(signum).name}"))

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    # --- start ---------------------------------------------------------------
    def run(self) -> int:
        """Start everything, serve commands until shutdown, stop everything; the exit code."""
        self.install_signal_handlers()
        try:
            self.start()
        except Interrupted as exc:
            log.info("%s; stopping", exc)
            self.stop_stack()
            self._release_lock()
            return 0
        except BaseException:
            self.stop_stack()
            self._release_lock()
            raise
        try:
            self.loop()
        finally:
            notify("STOPPING=1")
            self.stop_stack()
            self._release_lock()
        log.info("jrd stopped")
        return 0

    def start(self) -> None:
        cfg, layout = self.config, self.layout
        ensure_dir(layout.runtime_dir, 0o755, force=False)
        self._acquire_lock()
        preflight_ports(cfg)
        password_note = self._ensure_password()
        self.prepare_and_install(cfg)
        if os.geteuid() != 0 and not cfg.external_tls:
            log.warning("jrd and Jupyter run as the same account, so notebooks can read the CA key in %s; "
                        "run jrd as root to keep it apart (see README, Trusting the CA)", layout.tls_dir)
        become_subreaper()
        self.supervisord = launch_supervisord(layout.supervisord_conf)
        self.supervisor.wait_ready(self._clock() + 30, alive=self.supervisord, cancelled=self.stop_requested)
        for ext in self.extensions:
            ext.start(self)
        self.wait_serving(self._clock() + STARTUP_TIMEOUT)
        self.timers["cert"] = self._clock() + self._next_cert_check()
        self.timers["supervise"] = self._clock() + 5
        host = cfg.local_probe_host if ":" not in cfg.local_probe_host else f"[{cfg.local_probe_host}]"
        local = cfg.url.replace(cfg.url.split("/")[2], f"{host}:{cfg.nginx.port}")
        self._announce(f"jrd {__version__} is serving JupyterLab at {cfg.url} (from this machine: {local})")
        if password_note:
            self._announce(password_note)
        notify(f"READY=1\nSTATUS=serving {cfg.url}\nMAINPID={os.getpid()}")

    def _acquire_lock(self) -> None:
        fd = os.open(self.layout.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            other = os.read(fd, 32).decode().strip() or "?"
            os.close(fd)
            raise PreflightError(
                f"jrd is already running with runtime dir {self.layout.runtime_dir} (pid {other}); "
                "stop it first (`systemctl stop jrd`) or give this one another [paths] runtime_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _ensure_password(self) -> str | None:
        """Make a random first password if none is set; say where it is, never log it."""
        layout = self.layout
        if passwords.read_password_hash(layout.password_file) is not None:
            if layout.initial_password_file.exists():
                return f"Log in with the password in {layout.initial_password_file} (change it with `jrd passwd`)."
            return "Log in with the password you set (change it with `jrd passwd`)."
        password = passwords.random_password()
        passwords.write_password_hash(layout.password_file, passwords.hash_password(password))
        atomic_write(layout.initial_password_file, password + "\n", 0o600)
        if self._show_password:
            return (
                f"Log in with the password  {password}  (shown this once; also in "
                f"{layout.initial_password_file}, readable by root only). Change it with `jrd passwd`."
            )
        return (
            f"A login password was generated and saved in {layout.initial_password_file} "
            "(readable by root only); change it with `jrd passwd`."
        )

    # --- rendering and installing -----------------------------------------
    def build(self, cfg: Config) -> tuple[RenderInputs, dict[str, RenderedFile], str | None]:
        """Everything a config needs, rendered and tested, but nothing installed."""
        layout = Layout.of(cfg)
        tls, issued = self._own_tls(cfg, layout)
        hashed = passwords.read_password_hash(layout.password_file)
        if hashed is None:
            raise JrdError(f"no login password is set ({layout.password_file} is missing); set one with `jrd passwd`")
        token = passwords.ensure_internal_token(layout.internal_token_file)
        inputs = prepare.gather_inputs(cfg, layout, tls, hashed, token)
        inputs = self._with_extensions(inputs)
        files = prepare.render_checked(inputs, ensure_dir(layout.runtime_dir / "staging", 0o700))
        return inputs, files, issued

    def _own_tls(self, cfg: Config, layout: Layout) -> tuple[bootstrap.TlsFiles, str | None]:
        return bootstrap.ensure_tls(cfg, layout, self._wall())

    def _with_extensions(self, inputs: RenderInputs) -> RenderInputs:
        for ext in self.extensions:
            inputs = ext.adjust_inputs(self, inputs) if hasattr(ext, "adjust_inputs") else inputs
        return inputs

    def prepare_and_install(self, cfg: Config) -> None:
        if cfg.external_tls:
            self.certificates.external_loaded = renewal.external_digest(cfg)
        inputs, files, issued = self.build(cfg)
        if issued:
            log.info("issued a new TLS certificate (%s)", issued)
        prepare.install(files)
        self.inputs, self.files = inputs, files

    def wait_serving(self, deadline: float) -> None:
        """Wait until Jupyter answers through nginx, or fail with the reason."""
        last = ""
        while self._clock() < deadline:
            result = self.probe_through_nginx(timeout=5)
            if result.ok:
                return
            last = result.error or f"HTTP {result.status}"
            for name, info in self.supervisor.processes().items():
                if info.state in (states.FATAL, states.BACKOFF) and name in states.PROGRAMS:
                    if info.state == states.FATAL or self._clock() + 1 > deadline:
                        raise StartupError(f"{name} failed to start: {self.log_tail(name)}")
            if self.stop_requested.wait(0.1):
                raise Interrupted("stopped while waiting for Jupyter to answer")
        raise StartupError(f"Jupyter did not answer through nginx within {STARTUP_TIMEOUT:.0f} s ({last}); see {self.layout.log_dir}")

    def probe_through_nginx(self, timeout: float) -> probe.ProbeResult:
        cfg = self.config
        return probe.get(cfg.local_probe_host, cfg.nginx.port, cfg.jupyter.base_url + "api", tls=True, timeout=timeout)

    def log_tail(self, name: str, lines: int = 3) -> str:
        path = self.layout.log_file(name)
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            text = []
        tail = " | ".join(l.strip() for l in text[-lines:]) or "no output"
        return f"{tail} (full log: {path})"

    # --- the loop ----------------------------------------------------------------
    def loop(self) -> None:
        watchdog = watchdog_interval()
        if watchdog:
            self.timers["watchdog"] = self._clock()
        while True:
            now = self._clock()
            timeout = max(0.0, min(self.timers.values(), default=now + 60) - now)
            try:
                cmd = self.commands.get(timeout=timeout)
            except queue.Empty:
                self._run_timers(watchdog)
                continue
            if self._execute(cmd) == "stop":
                return
            self._run_timers(watchdog)

    def _execute(self, cmd: Command) -> str | None:
        handler = self._handlers.get(cmd.name)
        if handler is None:
            err = JrdError(f"unknown command {cmd.name!r}")
            if cmd.reply:
                cmd.reply.set_exception(err)
            return None
        try:
            result = handler(cmd)
        except JrdError as exc:
            if cmd.reply:
                cmd.reply.set_exception(exc)
            else:
                log.error("%s (%s) failed: %s", cmd.name, cmd.source, exc)
            return None
        except Exception as exc:  # a bug: keep serving, but say so with the traceback
            log.exception("%s (%s) failed unexpectedly", cmd.name, cmd.source)
            if cmd.reply:
                cmd.reply.set_exception(JrdError(f"internal error: {exc}"))
            return None
        if cmd.reply:
            cmd.reply.set_result(result)
        return "stop" if cmd.name == "shutdown" else None

    def _run_timers(self, watchdog: float | None) -> None:
        now = self._clock()
        for name, due in list(self.timers.items()):
            if due > now:
                continue
            if name == "watchdog" and watchdog:
                notify("WATCHDOG=1")
                self.timers[name] = now + watchdog
            elif name == "cert":
                self.commands.put(Command("renew_cert", {"force": False}, "timer"))
                self.timers[name] = now + CERT_RECHECK
            elif name == "supervise":
                self._supervise()
                self.timers[name] = now + 5
            elif name == "jupyter-restart":
                self._maybe_restart_jupyter()
            else:
                for ext in self.extensions:
                    if hasattr(ext, "on_timer") and ext.on_timer(self, name):
                        break
                else:
                    del self.timers[name]

    def _supervise(self) -> None:
        """Notice a dead supervisord, and programs that supervisord gave up on."""
        if self.supervisord is not None and self.supervisord.poll() is not None:
            raise SystemExit(
                f"jrd: supervisord exited unexpectedly (status {self.supervisord.returncode}); "
                f"see {self.layout.log_dir}/supervisord.log"
            )
        try:
            procs = self.supervisor.processes()
        except SupervisorError as exc:
            log.warning("%s", exc)
            return
        now = self._clock()
        for name in states.PROGRAMS:
            info = procs.get(name)
            if info is None or info.state != states.FATAL:
                if info is not None and info.state == states.RUNNING:
                    self._fatal_retry.pop(name, None)
                continue
            # supervisord never retries FATAL by itself; jrd does, backing off
            # (30 s, doubling, at most 10 min) so a broken program cannot spin.
            due, delay = self._fatal_retry.get(name, (now, FATAL_RETRY_FIRST / 2))
            if now < due:
                continue
            delay = min(delay * 2, FATAL_RETRY_MAX)
            self._fatal_retry[name] = (now + delay, delay)
            log.error("%s gave up starting (FATAL): %s; trying again now, then in %.0f s", name, self.log_tail(name), delay)
            try:
                self.supervisor.start(name, wait=False)
            except SupervisorError as exc:
                log.error("%s", exc)
        exclude = {self.supervisord.pid} if self.supervisord is not None else set()
        for pid in self._strays.sweep(exclude):
            log.info("ended orphaned process %d (a kernel whose Jupyter is gone)", pid)

    # --- handlers ----------------------------------------------------------------
    def _do_shutdown(self, cmd: Command) -> str:
        log.info("shutting down (%s)", cmd.source)
        self._stopping = True
        return "stopping"

    def _do_status(self, cmd: Command) -> dict[str, Any]:
        return self.status()

    def status(self) -> dict[str, Any]:
        procs: dict[str, Any] = {}
        try:
            for name, info in self.supervisor.processes().items():
                procs[name] = {
                    "state": info.state, "pid": info.pid or None, "uptime_seconds": round(info.uptime, 1),
                    "restarts": sum(n for (p, _), n in self.restarts.items() if p == name),
                }
            supervisor_ok = True
        except SupervisorError as exc:
            supervisor_ok = False
            procs = {"error": str(exc)}
        return {
            "version": __version__,
            "pid": os.getpid(),
            "url": self.config.url,
            "config": str(self.config.source) if self.config.source else None,
            "supervisor": supervisor_ok,
            "programs": procs,
            "certificates": self.certificate_status(),
            "reload": {
                "last_ok": self.reloads.ok,
                "last_at": self.reloads.at,
                "last_success_at": self.reloads.last_success_at,
                "error": self.reloads.error,
                "successes": self.reloads.successes,
                "failures": self.reloads.failures,
            },
            "pending": self.pending(),
        }

    def pending(self) -> list[str]:
        out = []
        if self.pending_restart:
            out.append(f"restart jupyter ({self.pending_restart['reason']}) when no kernel is busy")
        return out

    def certificate_status(self) -> dict[str, Any]:
        """The served leaf (and jrd's CA), renewal counts and the last success; see jrd.renewal."""
        return self.certificates.status(self.config, self.layout, self.inputs.cert_file if self.inputs else None)

    def _program(self, cmd: Command) -> list[str]:
        name = cmd.args.get("program", "all")
        valid = states.PROGRAMS
        if name == "all":
            return list(valid)
        if name not in valid:
            raise JrdError(f"unknown program {name!r}; valid names are: {', '.join(valid)}, all")
        return [name]

    def count_restart(self, program: str, reason: str) -> None:
        self.restarts[(program, reason)] = self.restarts.get((program, reason), 0) + 1

    def restart_program(self, name: str, reason: str) -> None:
        """Restart one program the least disruptive way that works.

        nginx reloads gracefully (open websockets live on in its old workers),
        except when it failed its health probes: a hung master would not act on
        the HUP, so it is stopped and started.
        """
        if name == "nginx" and reason != states.REASON_UNHEALTHY and self.supervisor.process("nginx").running:
            self.reload_nginx()
        else:
            info = self.supervisor.process(name)
            if info.state in (states.RUNNING, states.STARTING, states.BACKOFF):
                self.supervisor.stop(name)
            self.supervisor.start(name)
        self.count_restart(name, reason)
        log.info("restarted %s (%s)", name, reason)

    def reload_nginx(self) -> None:
        """A graceful reload: new workers take new connections, old ones finish theirs."""
        nginx.test_config(self.inputs.nginx_executable, self.layout.nginx_conf)
        self.supervisor.signal("nginx", "HUP")

    def _do_restart(self, cmd: Command) -> dict[str, Any]:
        reason = cmd.args.get("reason", states.REASON_REQUESTED)
        if reason not in states.RESTART_REASONS:
            raise JrdError(f"unknown restart reason {reason!r}; valid reasons are: {', '.join(states.RESTART_REASONS)}")
        for name in self._program(cmd):
            if name == "jupyter" and self.pending_restart:
                # The restart a reload was waiting for: it applies what that reload deferred.
                self._maybe_restart_jupyter(now=True, reason=reason)
            else:
                self.restart_program(name, reason)
        return {"restarted": self._program(cmd)}

    def _do_start(self, cmd: Command) -> dict[str, Any]:
        for name in self._program(cmd):
            if not self.supervisor.process(name).running:
                self.supervisor.start(name)
        return {"started": self._program(cmd)}

    def _do_stop(self, cmd: Command) -> dict[str, Any]:
        for name in self._program(cmd):
            if self.supervisor.process(name).state in (states.RUNNING, states.STARTING, states.BACKOFF):
                self.supervisor.stop(name)
        return {"stopped": self._program(cmd)}

    def _do_passwd(self, cmd: Command) -> dict[str, Any]:
        """Store a new login password hash (made by the client), then apply it through the reload path."""
        hashed = cmd.args.get("hashed")
        if not isinstance(hashed, str) or not hashed.startswith("argon2:") or len(hashed) > 1024 or not hashed.isprintable():
            raise JrdError("passwd needs an argon2 hash from jupyter_server.auth.passwd; nothing was changed")
        passwords.write_password_hash(self.layout.password_file, hashed)
        self.layout.initial_password_file.unlink(missing_ok=True)
        log.info("login password changed (%s)", cmd.source)
        try:
            return self._do_reload(cmd)
        except JrdError as exc:
            raise JrdError(f"the new password is saved in {self.layout.password_file} but not applied yet: {exc}") from None

    def _do_kernels(self, cmd: Command) -> dict[str, int]:
        """How many kernels Jupyter has, and how many are executing."""
        counts = self.kernel_counts()
        if counts is None:
            raise JrdError("Jupyter did not list its kernels; see `jrdctl logs jupyter`")
        return counts

    def kernel_counts(self) -> dict[str, int] | None:
        """{"running": n, "busy": n} from Jupyter's API with the internal token; None if it cannot say.

        `no_track_activity` keeps jrd's own questions out of Jupyter's idea of user activity.
        """
        if not self.inputs:
            return {"running": 0, "busy": 0}
        try:
            kernels = probe.jupyter_api(self.config, self.inputs.internal_token, "api/kernels?no_track_activity=1", 5)
            return {"running": len(kernels), "busy": probe.busy(kernels)}
        except (JrdError, AttributeError, TypeError) as exc:
            log.debug("could not list kernels (%s)", exc)
            return None

    def _do_logs(self, cmd: Command) -> dict[str, Any]:
        """A program's log: the last `lines` lines, or what was appended after `offset`."""
        names = self._program(cmd)
        if len(names) != 1:
            raise JrdError("logs needs one program: jupyter or nginx")
        return logs.read_log(self.layout.log_file(names[0]), cmd.args.get("offset"), cmd.args.get("lines", 50))

    # --- reload: a transaction -------------------------------------------------
    def _do_reload(self, cmd: Command) -> dict[str, Any]:
        """Carry out one reload and record it; a refusal is logged once and changes nothing."""
        try:
            result = self.reload(cmd.source)
        except JrdError as exc:
            message = str(exc)
            where = str(self.config.source) if self.config.source else ""
            if where and not message.startswith(where) and not isinstance(exc, ReloadApplyError):
                message = f"{where}: {message}"
                exc.args = (message,)
            self._record_reload(False, message)
            if isinstance(exc, ReloadApplyError):
                log.error("reload (%s) failed while applying, the next reload tries again: %s", cmd.source, message)
            else:
                log.error("reload (%s) refused, the running config stays: %s", cmd.source, message)
            if cmd.reply is None:
                return {"ok": False, "error": message}  # logged above; a signal has nobody else to tell
            raise
        except Exception as exc:  # a bug: the daemon keeps serving on the config it has
            self._record_reload(False, f"internal error: {exc}")
            log.exception("reload (%s) failed unexpectedly, the running config stays", cmd.source)
            if cmd.reply is None:
                return {"ok": False, "error": str(exc)}
            raise JrdError(f"reload failed unexpectedly ({exc}); see jrd's log") from None
        self._record_reload(True, "")
        return result

    def _record_reload(self, ok: bool, error: str) -> None:
        rec = self.reloads
        rec.ok, rec.at, rec.error = ok, time.time(), error
        if ok:
            rec.last_success_at = rec.at
            rec.successes += 1
        else:
            rec.failures += 1

    def reload(self, source: str) -> dict[str, Any]:
        """Load, render and test the new config; only then switch to it, disturbing as little as possible."""
        old = self.config
        new, notes = effective_config(old, self._load())
        # Checks that need the machine but no writes, before build() may issue a certificate.
        prepare.jupyter_account(new)
        tls_before = _snapshot([] if new.external_tls else [self.layout.leaf_cert, self.layout.leaf_key])
        try:
            inputs, files, issued = self.build(new)
        except BaseException:
            # build() may have issued a leaf for new names before a later check refused the
            # config; put the old pair back so that a refused reload leaves no trace.
            _restore(tls_before)
            raise
        # An external pair that changed on disk (a certbot symlink flip) needs an nginx reload
        # even though no rendered file changed.
        external_changed = self.certificates.external_changed(new) if new.external_tls else None
        pending = self.pending_restart["baseline"] if self.pending_restart else None
        plan = plan_reload(old, new, self.files, files, tls_changed=bool(issued or external_changed), pending=pending)
        for note in notes:
            log.warning("%s", note)
        prepare.install(files)
        password_changed = self.inputs is not None and self.inputs.hashed_password != inputs.hashed_password
        self.config, self.inputs = plan.config, inputs
        try:
            actions = self._apply_reload(plan, "the login password changed" if password_changed else "its config changed")
        except JrdError as exc:
            # self.files stays the old set, so the next reload sees the difference and retries.
            raise ReloadApplyError(f"the new files are installed but applying them failed: {exc}") from None
        self.files = files
        if external_changed:
            self.certificates.external_loaded = external_changed
            actions.append("external certificate changed")
        if issued:
            leaf = certs.current_leaf(self.layout.leaf_cert, self.layout.leaf_key)
            self.certificates.note_issued(leaf.serial_number if leaf else 0)
            actions.append(f"new TLS certificate ({issued})")
        self.timers["cert"] = self._clock() + self._next_cert_check()
        if old != plan.config:
            for ext in self.extensions:
                hook = getattr(ext, "config_changed", None)
                if hook is not None:
                    try:
                        hook(self, old, plan.config)
                    except Exception:
                        log.exception("%s could not follow the new config", type(ext).__name__)
        log.info("reload (%s) applied: %s", source, "; ".join(actions) or "nothing changed")
        if plan.log_level:
            logging.getLogger().setLevel(plan.log_level.upper())
        return {"changed": plan.changed, "actions": actions}

    def _apply_reload(self, plan: ReloadPlan, jupyter_reason: str) -> list[str]:
        """Carry out a reload plan, least disruptive first; the names of what was done."""
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
                self.count_restart(name, states.REASON_RELOAD)
        if plan.reload_nginx and "nginx" not in changed_groups:
            # build() has just run `nginx -t` on these very bytes (staged); no need to wait for a second run.
            self.supervisor.signal("nginx", "HUP")
            actions.append("nginx reloaded gracefully")
        if plan.cancel_jupyter_restart and self.pending_restart:
            self.pending_restart = None
            self.timers.pop("jupyter-restart", None)
            actions.append("pending jupyter restart cancelled (its config is back to what it runs)")
        if plan.restart_jupyter and "jupyter" not in changed_groups:
            self.schedule_jupyter_restart(jupyter_reason, update=plan.jupyter_needs_update)
            if self.pending_restart:
                actions.append(f"jupyter restart pending until no kernel is busy ({jupyter_reason})")
            else:
                actions.append(f"jupyter restarted ({jupyter_reason})")
        return actions

    def schedule_jupyter_restart(self, reason: str, update: bool = False) -> None:
        """Restart Jupyter now or when no kernel is busy, as [jupyter] restart_policy says.

        `update` means its supervisord program changed, which only a supervisord
        update applies.  A restart already pending keeps its start time, so the
        upper bound on waiting counts from the first change.
        """
        pending = self.pending_restart
        if pending:
            pending["reason"], pending["update"] = reason, update
        else:
            self.pending_restart = {"reason": reason, "since": self._clock(), "update": update,
                                    "baseline": jupyter_baseline(self.files), "busy_logged": False}
        if self.config.jupyter.restart_policy == "immediate":
            self._maybe_restart_jupyter()
        else:
            self.timers["jupyter-restart"] = self._clock()

    def _maybe_restart_jupyter(self, now: bool = False, reason: str = states.REASON_RELOAD) -> None:
        """The pending Jupyter restart, if its policy allows it (or `now`); never raises."""
        pending = self.pending_restart
        if not pending:
            self.timers.pop("jupyter-restart", None)
            return
        policy = self.config.jupyter
        waited = self._clock() - pending["since"]
        if not now and policy.restart_policy == "idle" and waited < policy.restart_max_wait_seconds:
            busy = self.busy_kernels()
            if busy:
                if not pending["busy_logged"]:
                    log.info("jupyter restart (%s) waits until no kernel is busy (%d busy now, at most %.0f s)",
                             pending["reason"], busy, policy.restart_max_wait_seconds)
                    pending["busy_logged"] = True
                self.timers["jupyter-restart"] = self._clock() + IDLE_POLL
                return
        self.pending_restart = None
        self.timers.pop("jupyter-restart", None)
        why = pending["reason"] + (f", after waiting {waited:.0f} s" if waited >= 1 else "")
        try:
            if pending["update"]:
                _, changed, _ = self.supervisor.update()
                for name in changed:
                    self.count_restart(name, reason)
                if "jupyter" in changed:
                    log.info("restarted jupyter with its new program definition (%s)", why)
                    return
            self.restart_program("jupyter", reason)
        except JrdError as exc:
            log.error("restarting jupyter (%s) failed: %s", why, exc)
            if now:
                raise  # someone asked for this restart and is waiting for the answer
        except Exception:
            log.exception("restarting jupyter (%s) failed unexpectedly", why)

    def busy_kernels(self) -> int:
        """How many kernels are executing now (0 if Jupyter cannot say: then nothing waits)."""
        counts = self.kernel_counts()
        return counts["busy"] if counts else 0

    # --- certificates ----------------------------------------------------------
    def _next_cert_check(self) -> float:
        """Seconds until the next certificate check (see jrd.renewal.CertManager.next_check)."""
        return self.certificates.next_check(self.config, self.layout)

    def _do_renew_cert(self, cmd: Command) -> dict[str, Any]:
        """Renew the leaf if due (or forced) through jrd.renewal; only nginx reloads, never Jupyter."""
        try:
            if self.config.external_tls:
                state = self.certificates.check_external(self.config)
                if state.get("changed"):
                    # The file watcher normally reloads on a change; this catches a missed event.
                    self.submit("reload", "certificate check")
                return {"renewed": False, "reason": "certificates are external; their owner renews them", **state}
            return self.certificates.renew(
                self.config, self.layout, force=bool(cmd.args.get("force")), reload_nginx=self.reload_nginx
            )
        except JrdError:
            if cmd.reply is not None:
                raise
            # The manager has counted and logged the failure once; a timer has no one to tell.
            return {"renewed": False, "error": self.certificates.record.last_error}
        finally:
            self.timers["cert"] = self._clock() + self._next_cert_check()

    # --- stop --------------------------------------------------------------------
    def stop_stack(self) -> None:
        """Stop supervisord (it stops Jupyter and nginx gracefully), then anything left."""
        for ext in reversed(self.extensions):
            try:
                ext.stop(self)
            except Exception:
                log.exception("stopping %s failed", type(ext).__name__)
        if self.supervisord is not None:
            status = stop_supervisord(self.supervisord, timeout=45)
            if status not in (0, -signal.SIGTERM):
                log.warning("supervisord exited with status %s", status)
            self.supervisord = None
        processes.reap_all()


def _snapshot(paths: list[Path]) -> dict[Path, tuple[bytes, os.stat_result]]:
    """The bytes and stat of each existing file, to put back if a reload is refused."""
    out = {}
    for path in paths:
        try:
            out[path] = (path.read_bytes(), path.stat())
        except FileNotFoundError:
            pass
    return out


def _restore(snapshot: dict[Path, tuple[bytes, os.stat_result]]) -> None:
    """Put back files that changed since `snapshot`, with their old mode and times."""
    for path, (data, st) in snapshot.items():
        if atomic_write(path, data, st.st_mode & 0o7777):
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def preflight_ports(config: Config) -> None:
    """Fail with a clear sentence if a port that jrd needs is taken."""
    wanted = [(addr, config.nginx.port, "[nginx] port") for addr in config.nginx.listen]
    wanted.append(("127.0.0.1", config.jupyter.port, "[jupyter] port"))
    if config.metrics.listen:
        host, _, port = config.metrics.listen.rpartition(":")
        wanted.append((host, int(port), "[metrics] listen"))
    for addr, port, key in wanted:
        host = {"*": "0.0.0.0"}.get(addr, addr).strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                where = config.source or "the config"
                if exc.errno == errno.EADDRINUSE:
                    raise PreflightError(
                        f"port {port} on {addr} is already in use by another program; stop that program "
                        f"(`ss -ltnp 'sport = :{port}'` shows it) or change {key} in {where}"
                    ) from None
                raise PreflightError(f"cannot listen on {addr}:{port} ({exc.strerror}); check {key} in {where}") from None

"""Stop the idle machine by itself: the policy, the activity signals, and the extension that acts.

Who pays for a cloud VM by the hour wants it to stop when nobody uses it,
and never while a silent computation runs.  jrd judges "idle" from signals
that a person or a computation moves and that an open, untouched browser tab
does not (`[idle]` in jrd.toml; README, Idle stop):

    kernel_busy    a kernel executing (`execution_state == "busy"`), even one that prints nothing
    kernel         the newest kernel `last_activity`: Jupyter bumps it for execute/iopub traffic,
                   not for the kernel_info and comm_info requests of a tab that (re)connects
    cpu            CPU of Jupyter and every process under it (kernels), % of one core, above a threshold
    gpu            GPU utilisation from nvidia-smi, above a threshold (no nvidia-smi: no signal)
    files          the newest modification time of a file under Jupyter's root dir (a save)
    terminal       the last input on a Jupyter terminal's pty (typing; not output, not jrd's own warning)
    login          the last input on an interactive login's tty (utmp), as `who -u` shows it
    hold           `jrdctl hold 3h`

Jupyter's own `/api/status` `last_activity` is not used: the lists that an
open JupyterLab tab polls every few seconds bump it.  jrd's own requests
carry `no_track_activity=1`, and Prometheus scrapes and health probes touch
none of these signals.

`judge` is the policy, a pure function of the state, the signals and the
clock.  `IdleGuard` samples the signals in a thread every few seconds,
judges on the main loop, warns `warn_minutes` before the deadline (log,
`wall`, the ptys of Jupyter's terminals, `jrdctl status`, metrics), and at
the deadline stops Jupyter through supervisord (kernels shut down
gracefully), then runs `[idle] command`.  A failing command is logged,
counted, and Jupyter starts again.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from jrd import states
from jrd.config import Config, IdleConfig
from jrd.errors import JrdError
from jrd.extension import Context, Extension
from jrd.metrics import ProcReader
from jrd.supervisor import Supervisor

log = logging.getLogger("jrd")

# --- the policy (pure) ------------------------------------------------------------------------

# What `judge` asks the guard to do.
NOTHING = "nothing"
WARN = "warn"
CANCEL = "cancel"  # a warning was out and activity came: say that the stop is off
STOP = "stop"

# Results of a stop command, for the metrics label.
STOP_RESULTS = (states.RESULT_SUCCESS, states.RESULT_FAILURE)

SIGNAL_NAMES = ("kernel_busy", "kernel", "cpu", "gpu", "files", "terminal", "login", "hold")


@dataclass(frozen=True)
class Signal:
    """One activity signal at one sample: what it read, and when it last saw activity (Unix time)."""

    name: str
    value: str  # for people: "1 busy", "3.2 %", "absent"
    active_at: float | None = None  # now, if active now; None: never seen active
    error: str = ""


@dataclass(frozen=True)
class IdlePolicy:
    after: float  # seconds of idleness before the stop
    warn: float  # seconds before the stop that the warning goes out

    @classmethod
    def of(cls, cfg: IdleConfig) -> "IdlePolicy":
        return cls(cfg.shutdown_after_minutes * 60, cfg.warn_minutes * 60)


@dataclass(frozen=True)
class IdleState:
    idle_since: float  # Unix time of the last activity (or of the start of watching)
    warned: bool = False


@dataclass(frozen=True)
class Verdict:
    state: IdleState
    action: str
    deadline: float
    cause: str = ""  # the signal that reset the clock, if one did


def judge(state: IdleState, signals: Mapping[str, Signal], now: float, policy: IdlePolicy) -> Verdict:
    """Fold one sample into the state: warn `policy.warn` before the deadline, stop at it, cancel on activity."""
    idle_since, cause = state.idle_since, ""
    for sig in signals.values():
        # A clock a little ahead (Jupyter's, a file's) must not push the deadline past now + after.
        at = min(sig.active_at, now) if sig.active_at is not None else None
        if at is not None and at > idle_since:
            idle_since, cause = at, sig.name
    deadline = idle_since + policy.after
    if now >= deadline:
        return Verdict(IdleState(idle_since, state.warned), STOP, deadline, cause)
    if now >= deadline - policy.warn:
        return Verdict(IdleState(idle_since, True), NOTHING if state.warned else WARN, deadline, cause)
    return Verdict(IdleState(idle_since, False), CANCEL if state.warned else NOTHING, deadline, cause)


def sample_interval(policy: IdlePolicy) -> float:
    """How often the signals are read: every 30 s, more often for short timeouts (tests), never below 1 s."""
    return max(1.0, min(30.0, policy.after / 20, policy.warn / 4 if policy.warn else 30.0))


def parse_duration(text: str) -> float:
    """'3h', '90m', '45s', '2d', '1h30m' or a bare number of seconds -> seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    try:
        return float(text)
    except ValueError:
        pass
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise ValueError(f"not a duration: {text!r} (use e.g. 3h, 90m, 1h30m)")
    if number:
        raise ValueError(f"not a duration: {text!r} (a number needs a unit: s, m, h or d)")
    return total


# --- the signals (I/O) -------------------------------------------------------------------------

# utmp records (glibc, x86_64 and aarch64): type, pid, line, id, user, host, exit, session, tv, addr, unused.
UTMP_FORMAT = "hi32s4s32s256shhiii16s20x"
UTMP_RECORD = struct.calcsize(UTMP_FORMAT)
USER_PROCESS = 7


def read_logins(utmp: Path, dev: Path = Path("/dev")) -> list[tuple[str, str, float]]:
    """Interactive logins in utmp as (user, tty, last input on the tty as Unix time)."""
    try:
        data = utmp.read_bytes()
    except OSError:
        return []
    out = []
    for offset in range(0, len(data) - UTMP_RECORD + 1, UTMP_RECORD):
        fields = struct.unpack_from(UTMP_FORMAT, data, offset)
        if fields[0] != USER_PROCESS or fields[1] <= 0 or not os.path.exists(f"/proc/{fields[1]}"):
            continue
        line = fields[2].split(b"\0", 1)[0].decode(errors="replace")
        user = fields[4].split(b"\0", 1)[0].decode(errors="replace")
        try:
            # A tty's atime moves when someone types on it (what `who -u` calls idle time).
            last_input = (dev / line).stat().st_atime
        except OSError:
            continue
        out.append((user, line, last_input))
    return out


def gpu_utilisation(nvidia_smi: str | None, timeout: float = 10.0) -> float | None:
    """The busiest GPU's utilisation in %, or None without nvidia-smi; JrdError if it fails."""
    if nvidia_smi is None:
        return None
    try:
        out = subprocess.run([nvidia_smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JrdError(f"nvidia-smi: {exc}") from None
    if out.returncode != 0:
        raise JrdError(f"nvidia-smi exited with {out.returncode}: {out.stderr.strip()[:200]}")
    values = [float(v) for v in out.stdout.split() if v.replace(".", "", 1).isdigit()]
    return max(values) if values else None


def newest_mtime(root: Path, max_entries: int = 20000, max_depth: int = 8) -> float | None:
    """The newest mtime of a file or directory under `root`, hidden ones and checkpoints skipped; bounded."""
    newest: float | None = None
    seen = 0
    todo: list[tuple[Path, int]] = [(root, 0)]
    while todo and seen < max_entries:
        path, depth = todo.pop()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    seen += 1
                    if entry.name.startswith(".") or entry.name == "__pycache__":
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
                    if entry.is_dir(follow_symlinks=False) and depth < max_depth:
                        todo.append((Path(entry.path), depth + 1))
        except OSError:
            continue
    return newest


def jupyter_ptys(procs: ProcReader, pid: int) -> list[Path]:
    """The terminals (ptys) that processes under Jupyter have open: its terminals' shells."""
    ptys: set[Path] = set()
    for p in procs.tree(pid)[1:]:
        try:
            target = os.readlink(procs.root / str(p) / "fd" / "0")
        except OSError:
            continue
        if target.startswith("/dev/pts/"):
            ptys.add(Path(target))
    return sorted(ptys)


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Sampler:
    """Reads every signal once; keeps the CPU reading between samples.  Runs in the guard's thread."""

    def __init__(self, ctx: Context, *, procs: ProcReader | None = None, utmp: Path = Path("/run/utmp"),
                 nvidia_smi: str | None = None, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic):
        self.ctx = ctx
        self.supervisor = Supervisor(ctx.layout.supervisor_socket, timeout=5.0)
        self.procs = procs or ProcReader()
        self.utmp = utmp
        self.nvidia_smi = nvidia_smi if nvidia_smi is not None else shutil.which("nvidia-smi")
        self._wall = wall
        self._clock = clock
        self._cpu: tuple[int, float, float] | None = None  # (pid, cpu seconds, monotonic time)

    def sample(self, config: Config) -> dict[str, Signal]:
        now = self._wall()
        out: dict[str, Signal] = {}
        for name, read in (("kernel", self._kernels), ("cpu", self._cpu_signal), ("gpu", self._gpu),
                           ("files", self._files), ("terminal", self._terminals), ("login", self._logins)):
            try:
                for sig in read(config, now):
                    out[sig.name] = sig
            except (JrdError, OSError, ValueError, KeyError, TypeError) as exc:
                out[name] = Signal(name, "unknown", None, str(exc))
        return out

    def _kernels(self, config: Config, now: float) -> list[Signal]:
        kernels = self.ctx.jupyter.get("api/kernels?no_track_activity=1", 5.0)
        busy = sum(1 for k in kernels if k.get("execution_state") == "busy")
        last = max((_iso(k["last_activity"]) for k in kernels if k.get("last_activity")), default=None)
        return [Signal("kernel_busy", f"{busy} of {len(kernels)} busy", now if busy else None),
                Signal("kernel", f"{len(kernels)} kernel(s)", last)]

    def _cpu_signal(self, config: Config, now: float) -> list[Signal]:
        pid = self.supervisor.process("jupyter").pid
        if not pid:
            self._cpu = None
            return [Signal("cpu", "Jupyter not running")]
        seconds, at = self.procs.usage(pid).cpu_seconds, self._clock()
        prev, self._cpu = self._cpu, (pid, seconds, at)
        if prev is None or prev[0] != pid or at <= prev[2]:
            return [Signal("cpu", "measuring")]
        percent = max(0.0, seconds - prev[1]) / (at - prev[2]) * 100
        busy = percent >= config.idle.cpu_busy_percent
        return [Signal("cpu", f"{percent:.1f} %", now if busy else None)]

    def _gpu(self, config: Config, now: float) -> list[Signal]:
        percent = gpu_utilisation(self.nvidia_smi)
        if percent is None:
            return [Signal("gpu", "absent")]
        return [Signal("gpu", f"{percent:.0f} %", now if percent >= config.idle.gpu_busy_percent else None)]

    def _files(self, config: Config, now: float) -> list[Signal]:
        root = config.jupyter.root_dir or Path(pwd.getpwnam(config.jupyter.user).pw_dir if config.jupyter.user
                                               else Path.home())
        newest = newest_mtime(root)
        return [Signal("files", f"newest change under {root}", newest)]

    def _terminals(self, config: Config, now: float) -> list[Signal]:
        # Not the API's last_activity: Jupyter bumps it for output too, jrd's own warning included.
        # A tty's atime moves when its reader takes input, that is when someone types.
        pid = self.supervisor.process("jupyter").pid
        ptys = jupyter_ptys(self.procs, pid) if pid else []
        last = None
        for pty in ptys:
            try:
                at = pty.stat().st_atime
            except OSError:
                continue
            last = at if last is None else max(last, at)
        return [Signal("terminal", f"{len(ptys)} terminal(s)", last)]

    def _logins(self, config: Config, now: float) -> list[Signal]:
        logins = read_logins(self.utmp)
        last = max((at for _, _, at in logins), default=None)
        who = ", ".join(f"{user} on {tty}" for user, tty, _ in logins)
        return [Signal("login", who or "none", last)]


# --- the extension ----------------------------------------------------------------------------

SAMPLE_TIMER = "idle-sample"
STOP_TIMER = "idle-stop"
RESTORE_TIMER = "idle-restore"
# A command that succeeded but left the machine up (a delayed `shutdown +5`, a test): serve again after this.
RESTORE_AFTER = 600.0
COMMAND_TIMEOUT = 300.0


@dataclass(frozen=True)
class IdleRecord:
    """What the guard knows, as a frozen value for `jrdctl idle`, status and the metrics."""

    enabled: bool
    idle_since: float | None = None
    deadline: float | None = None
    warned: bool = False
    stopping: bool = False
    hold_until: float | None = None
    hold_reason: str = ""
    signals: Mapping[str, Signal] | None = None
    sampled_at: float | None = None
    stops: Mapping[str, int] | None = None
    last_error: str = ""

    def as_dict(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.enabled, "warned": self.warned, "stopping": self.stopping,
                               "stops": dict(self.stops or {})}
        if self.enabled and self.idle_since is not None:
            out["idle_seconds"] = round(max(0.0, now - self.idle_since), 1)
            out["idle_since"] = self.idle_since
        if self.enabled and self.deadline is not None:
            out["stop_at"] = self.deadline
            out["stop_in_seconds"] = round(self.deadline - now, 1)
        if self.hold_until is not None and self.hold_until > now:
            out["hold"] = {"until": self.hold_until, "reason": self.hold_reason}
        if self.last_error:
            out["last_error"] = self.last_error
        out["signals"] = {name: {"value": s.value, "last_active": s.active_at,
                                 **({"error": s.error} if s.error else {})}
                          for name, s in (self.signals or {}).items()}
        out["sampled_at"] = self.sampled_at
        return out


class IdleGuard(Extension):
    """Sample in a thread, judge on the main loop, warn, then stop Jupyter and run `[idle] command`."""

    def __init__(self, *, sampler: Callable[[Context], Sampler] | None = None,
                 wall: Callable[[], float] = time.time, warn_terminals: bool = True):
        self._make_sampler = sampler or (lambda ctx: Sampler(ctx))
        self._wall = wall
        self._warn_terminals = warn_terminals
        self._ctx: Context | None = None
        self._sampler: Sampler | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Main loop only, published as `record` for other threads.
        self.state: IdleState | None = None
        self._record = IdleRecord(False, stops={r: 0 for r in STOP_RESULTS})

    # --- hooks -----------------------------------------------------------------------
    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        self._sampler = self._make_sampler(ctx)
        ctx.add_handler("idle_sample", lambda cmd: self.on_sample(cmd.args["signals"]))
        ctx.add_handler("idle_command_done", lambda cmd: self.on_command_done(cmd.args["ok"], cmd.args["detail"]))
        self._follow(ctx.config.idle)
        self._thread = threading.Thread(target=self._run, name="jrd-idle", daemon=True)
        self._thread.start()

    def config_changed(self, old: Config, new: Config) -> None:
        if old.idle != new.idle:
            self._follow(new.idle)

    def stop(self) -> None:
        self._stop_event.set()
        if self._ctx is not None:
            for timer in (STOP_TIMER, RESTORE_TIMER):
                self._ctx.cancel(timer)

    def _follow(self, cfg: IdleConfig) -> None:
        """(Re)start the clock under a new `[idle]`: idle time counts from now."""
        now = self._wall()
        self.state = IdleState(now) if cfg.enabled else None
        self._publish(enabled=cfg.enabled, idle_since=now if cfg.enabled else None,
                      deadline=now + cfg.shutdown_after_minutes * 60 if cfg.enabled else None, warned=False)
        if cfg.enabled:
            log.info("idle stop: on; the machine stops after %s min without activity (warning %s min before): %s",
                     f"{cfg.shutdown_after_minutes:g}", f"{cfg.warn_minutes:g}", " ".join(cfg.command))

    def _publish(self, **changes: Any) -> None:
        with self._lock:
            self._record = replace(self._record, **changes)

    @property
    def record(self) -> IdleRecord:
        """A frozen copy of what the guard knows; safe from any thread."""
        with self._lock:
            return self._record

    # --- sampling (thread) -----------------------------------------------------------------
    def _run(self) -> None:
        ctx, sampler = self._ctx, self._sampler
        assert ctx is not None and sampler is not None
        while True:
            cfg = ctx.config
            interval = sample_interval(IdlePolicy.of(cfg.idle)) if cfg.idle.enabled else 30.0
            if cfg.idle.enabled:
                try:
                    ctx.submit("idle_sample", "idle", signals=sampler.sample(cfg))
                except Exception:  # a bug in a signal must not end the watching
                    log.exception("idle stop: sampling failed unexpectedly")
            if self._stop_event.wait(interval):
                return

    # --- judging (main loop) ----------------------------------------------------------------
    def on_sample(self, signals: dict[str, Signal]) -> str:
        """On the main loop: fold a sample in and act on the verdict; the action taken."""
        ctx = self._ctx
        assert ctx is not None
        now = self._wall()
        cfg = ctx.config.idle
        signals = dict(signals)
        rec = self.record
        if rec.hold_until is not None and rec.hold_until > now:
            signals["hold"] = Signal("hold", f"until {time.strftime('%H:%M:%S', time.localtime(rec.hold_until))}"
                                     + (f" ({rec.hold_reason})" if rec.hold_reason else ""), now)
        else:
            signals["hold"] = Signal("hold", "none", rec.hold_until if rec.hold_until else None)
        self._publish(signals=signals, sampled_at=now)
        if self.state is None or not cfg.enabled or rec.stopping:
            return NOTHING
        verdict = judge(self.state, signals, now, IdlePolicy.of(cfg))
        self.state = verdict.state
        self._publish(idle_since=verdict.state.idle_since, deadline=verdict.deadline, warned=verdict.state.warned)
        if verdict.action == WARN:
            minutes = (verdict.deadline - now) / 60
            self._announce(f"jrd: this machine has been idle since "
                           f"{time.strftime('%H:%M:%S', time.localtime(verdict.state.idle_since))} and will stop "
                           f"in {minutes:.1f} min ({' '.join(cfg.command)}). Any activity, or "
                           "`jrdctl hold 3h`, keeps it up.")
        elif verdict.action == CANCEL:
            self._announce(f"jrd: idle stop cancelled: activity ({verdict.cause}); the idle clock starts again.")
        elif verdict.action == STOP:
            self.stop_machine(now - verdict.state.idle_since)
        return verdict.action

    def _announce(self, message: str) -> None:
        log.warning("idle stop: %s", message.removeprefix("jrd: "))
        if self._warn_terminals and self._ctx is not None:
            threading.Thread(target=write_to_terminals, args=(self._ctx, message), name="jrd-idle-wall",
                             daemon=True).start()

    def stop_machine(self, idle_for: float) -> None:
        """Stop Jupyter gracefully (its kernels shut down), then run the command in a thread."""
        ctx = self._ctx
        assert ctx is not None
        command = list(ctx.config.idle.command)
        self._publish(stopping=True)
        log.warning("idle stop: no activity for %.1f min; stopping Jupyter, then running %s", idle_for / 60,
                    " ".join(command))
        try:
            if ctx.supervisor.process("jupyter").state in states.STOPPABLE_STATES:
                ctx.supervisor.stop("jupyter")
        except JrdError as exc:
            log.error("idle stop: could not stop Jupyter (%s); running the command anyway", exc)

        def run() -> None:
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                      stdin=subprocess.DEVNULL)
                ok = done.returncode == 0
                detail = f"exit status {done.returncode}" + (
                    f": {(done.stderr or done.stdout).strip()[-300:]}" if not ok and (done.stderr or done.stdout)
                    else "")
            except (OSError, subprocess.TimeoutExpired) as exc:
                ok, detail = False, f"{exc.__class__.__name__}: {exc}"
            ctx.submit("idle_command_done", "idle", ok=ok, detail=detail)

        threading.Thread(target=run, name="jrd-idle-command", daemon=True).start()

    def on_command_done(self, ok: bool, detail: str) -> None:
        ctx = self._ctx
        assert ctx is not None
        rec = self.record
        result = states.RESULT_SUCCESS if ok else states.RESULT_FAILURE
        stops = {**(rec.stops or {}), result: (rec.stops or {}).get(result, 0) + 1}
        if ok:
            self._publish(stops=stops)
            log.warning("idle stop: the stop command succeeded; the machine is going down")
            ctx.schedule(RESTORE_TIMER, RESTORE_AFTER, lambda: self._serve_again(
                f"the machine is still up {RESTORE_AFTER:.0f} s after the stop command succeeded"))
            return
        self._publish(stops=stops, last_error=detail)
        log.error("idle stop: the stop command %s failed (%s); starting Jupyter again and serving on",
                  " ".join(ctx.config.idle.command), detail)
        self._serve_again("")

    def _serve_again(self, why: str) -> None:
        ctx = self._ctx
        assert ctx is not None
        if why:
            log.warning("idle stop: %s; starting Jupyter again", why)
        try:
            ctx.supervisor.start("jupyter")
        except JrdError as exc:
            log.error("idle stop: could not start Jupyter again: %s", exc)
        now = self._wall()
        if self.state is not None:
            self.state = IdleState(now)
        self._publish(stopping=False, warned=False, idle_since=now,
                      deadline=now + ctx.config.idle.shutdown_after_minutes * 60)

    # --- holds (main loop, from jrdctl) ----------------------------------------------------------
    def hold(self, seconds: float, reason: str) -> dict[str, Any]:
        now = self._wall()
        until = now + seconds
        self._publish(hold_until=until, hold_reason=reason)
        log.info("idle stop: held until %s%s", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until)),
                 f" ({reason})" if reason else "")
        if self.state is not None:
            self.on_sample(dict(self.record.signals or {}))
        return self.status()

    def release(self) -> dict[str, Any]:
        had = self.record.hold_until is not None and self.record.hold_until > self._wall()
        self._publish(hold_until=None, hold_reason="")
        log.info("idle stop: hold released" if had else "idle stop: no hold to release")
        return {"released": had, **self.status()}

    def status(self) -> dict[str, Any]:
        rec = self.record
        out = rec.as_dict(self._wall())
        if self._ctx is not None:
            out["command"] = list(self._ctx.config.idle.command)
            out["shutdown_after_minutes"] = self._ctx.config.idle.shutdown_after_minutes
        return out


def write_to_terminals(ctx: Context, message: str) -> None:
    """`wall` to logged-in terminals, and the same line to the ptys of Jupyter's terminals."""
    wall = shutil.which("wall")
    if wall:
        try:
            subprocess.run([wall], input=message + "\n", text=True, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("wall: %s", exc)
    try:
        pid = Supervisor(ctx.layout.supervisor_socket, timeout=5.0).process("jupyter").pid
    except JrdError:
        return
    if not pid:
        return
    for pty in jupyter_ptys(ProcReader(), pid):
        try:
            fd = os.open(pty, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                os.write(fd, f"\r\n*** {message} ***\r\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("could not write to %s: %s", pty, exc)

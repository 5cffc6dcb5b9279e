"""Health probing beyond "the process exists": policy, and the probes themselves.

supervisord only knows that a process exists.  A Jupyter stopped with
SIGSTOP, or stuck in a loop, stays RUNNING for ever while serving nothing.
jrd therefore probes each program on `[health] interval_seconds`:

* Jupyter directly, `GET /api` on its loopback port: no authentication,
  and Jupyter does not count it as activity, so probing never keeps an
  idle server "active";
* nginx by its own `stub_status` on the private unix socket, which nginx
  answers without Jupyter, so a Jupyter failure is never blamed on nginx.

`judge` is the policy, a pure function: `failure_threshold` failures in a
row while supervisord says RUNNING make a program unhealthy, and jrd
restarts it through the daemon's one command path with reason="unhealthy".
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from jrd import leftovers, nginx, probe, states
from jrd.config import Config
from jrd.errors import SupervisorError
from jrd.extension import Context, Extension
from jrd.ledger import ProbeOutcome
from jrd.layout import Layout

log = logging.getLogger("jrd")

# A program that has not answered once since it started gets this long before
# its failures count: Jupyter takes seconds to answer after supervisord
# calls it RUNNING, and a slow VM takes longer.
STARTUP_GRACE_SECONDS = 120.0
TIMER = "health"


@dataclass(frozen=True)
class Tracker:
    """What the policy remembers about one program between probes."""

    start: float = 0.0  # supervisord's start time of the instance being watched
    answered: bool = False  # has this instance passed a probe yet?
    failures: int = 0  # consecutive failures that count


@dataclass(frozen=True)
class Verdict:
    tracker: Tracker
    restart: bool = False


def judge(prev: Tracker, *, state: str, start: float, uptime: float, ok: bool, threshold: int,
          probed_at: float | None = None, grace: float = STARTUP_GRACE_SECONDS) -> Verdict:
    """Fold one probe into the tracker; restart when `threshold` failures in a row count."""
    if state != states.RUNNING:
        # Not claiming to run: supervisord's own business (it restarts crashes).
        return Verdict(Tracker(start))
    if start != prev.start:
        prev = Tracker(start)  # a new instance starts with a clean slate
    if probed_at is not None and probed_at < start + 1:
        # The probe began before this instance started (supervisord's start
        # has whole seconds): it judged the previous one.  A stopped Jupyter
        # that is continued to shut down may still answer such a probe.
        return Verdict(prev)
    if ok:
        return Verdict(Tracker(start, True, 0))
    if not prev.answered and uptime < grace:
        return Verdict(prev)  # still starting up; not a failure yet
    failures = prev.failures + 1
    if failures >= threshold:
        return Verdict(Tracker(start, prev.answered, 0), restart=True)
    return Verdict(Tracker(start, prev.answered, failures))


# --- the probes (I/O) -------------------------------------------------------------


def probe_jupyter(config: Config, layout: Layout, timeout: float) -> ProbeOutcome:
    at = time.time()
    cfg = config.jupyter
    result = probe.get("127.0.0.1", cfg.port, cfg.base_url + "api", tls=False, timeout=timeout)
    error = "" if result.ok else (result.error or f"HTTP {result.status}")
    return ProbeOutcome("jupyter", result.ok, result.latency, error, at)


def probe_nginx(config: Config, layout: Layout, timeout: float) -> ProbeOutcome:
    """stub_status, which the workers answer, and the master's own state, which they cannot vouch for."""
    at = time.time()
    start = time.monotonic()
    try:
        nginx.read_stub_status(layout.nginx_status_socket, timeout=timeout)
    except (OSError, ValueError, IndexError) as exc:
        return ProbeOutcome("nginx", False, time.monotonic() - start, f"{exc.__class__.__name__}: {exc}", at)
    master = leftovers.read_pid(layout.nginx_pid_file)
    if master is not None and leftovers.state(master) in ("T", "t"):
        # A stopped master still has serving workers, but would never reload or replace one.
        return ProbeOutcome("nginx", False, time.monotonic() - start, f"nginx's master {master} is stopped", at)
    return ProbeOutcome("nginx", True, time.monotonic() - start, "", at)


Probe = Callable[[Config, Layout, float], ProbeOutcome]
PROBES: dict[str, Probe] = {"jupyter": probe_jupyter, "nginx": probe_nginx}


# --- the extension -------------------------------------------------------------------


class HealthMonitor(Extension):
    """Probe on a timer, judge on the main loop, restart through the command path.

    Probes run in short-lived threads so that a hung program delays no
    command; their outcomes come back to the main loop as `health_result`
    commands, and the latest one per program goes to the ledger for the metrics.
    """

    def __init__(self, probes: dict[str, Probe] | None = None):
        self.probes = dict(PROBES if probes is None else probes)
        self.trackers: dict[str, Tracker] = {}  # main loop only
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._ctx: Context | None = None

    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        ctx.add_handler("health_result", lambda cmd: self.on_result(cmd.args["outcome"]))
        ctx.schedule(TIMER, ctx.config.health.interval_seconds, self.on_timer)

    def stop(self) -> None:
        if self._ctx is not None:
            self._ctx.cancel(TIMER)

    def on_timer(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        config = ctx.config
        for program, run in self.probes.items():
            with self._lock:
                if program in self._in_flight:
                    continue  # the last probe is still waiting on its timeout
                self._in_flight.add(program)
            threading.Thread(target=self._probe, args=(ctx, config, program, run), name=f"jrd-probe-{program}",
                             daemon=True).start()
        ctx.schedule(TIMER, config.health.interval_seconds, self.on_timer)

    def _probe(self, ctx: Context, config: Config, program: str, run: Probe) -> None:
        try:
            outcome = run(config, ctx.layout, config.health.timeout_seconds)
        except Exception as exc:  # a bug in a probe must not kill probing
            log.exception("probing %s failed unexpectedly", program)
            outcome = ProbeOutcome(program, False, 0.0, f"internal error: {exc}", time.time())
        finally:
            with self._lock:
                self._in_flight.discard(program)
        ctx.submit("health_result", "health", outcome=outcome)

    def on_result(self, outcome: ProbeOutcome) -> bool:
        """On the main loop: judge one outcome; ask for a restart if the program is unhealthy."""
        ctx = self._ctx
        assert ctx is not None
        try:
            info = ctx.supervisor.process(outcome.program)
        except SupervisorError as exc:
            log.warning("health: %s", exc)
            ctx.ledger.record_probe(outcome, self.failures(outcome.program))
            return False
        prev = self.trackers.get(outcome.program, Tracker())
        threshold = ctx.config.health.failure_threshold
        verdict = judge(prev, state=info.state, start=info.start, uptime=info.uptime, ok=outcome.ok,
                        threshold=threshold, probed_at=outcome.at)
        self.trackers[outcome.program] = verdict.tracker
        ctx.ledger.record_probe(outcome, verdict.tracker.failures)
        if not outcome.ok and verdict.tracker.failures:
            log.warning("health: %s failed its probe (%d of %d in a row): %s", outcome.program,
                        verdict.tracker.failures, threshold, outcome.error)
        if not verdict.restart:
            return False
        log.error("health: %s failed %d probes in a row while supervisord says RUNNING (last: %s); "
                  "restarting it as unhealthy", outcome.program, threshold, outcome.error)
        # The restart wakes a SIGSTOPped process first (Supervisor.stop), so that it shuts down gracefully.
        done = ctx.submit("restart", "health", program=outcome.program, reason=states.REASON_UNHEALTHY)
        done.add_done_callback(lambda f: f.exception() and log.error(
            "health: restarting %s as unhealthy failed: %s", outcome.program, f.exception()))
        return True

    def failures(self, program: str) -> int:
        tracker = self.trackers.get(program)
        return tracker.failures if tracker else 0

"""Is jrd serving?  Jupyter answering through nginx, the way a browser reaches it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from jrd import logs, probe, states
from jrd.config import Config
from jrd.errors import Interrupted, StartupError
from jrd.ledger import Ledger, Serving
from jrd.sdnotify import notify
from jrd.layout import Layout
from jrd.supervisor import Supervisor

log = logging.getLogger("jrd")

STARTUP_TIMEOUT = 120.0


def probe_through_nginx(config: Config, timeout: float) -> probe.ProbeResult:
    """GET Jupyter's /api through nginx over HTTPS on this machine."""
    return probe.get(config.local_probe_host, config.nginx.port, config.jupyter.base_url + "api", tls=True,
                     timeout=timeout)


def check(config: Config, timeout: float) -> Serving:
    """Ask once, now: does Jupyter answer through nginx?"""
    at = time.time()
    result = probe_through_nginx(config, timeout)
    return Serving(result.ok, at, "" if result.ok else (result.error or f"HTTP {result.status} through nginx"))


def status_line(config: Config, serving: Serving, crash_loops: dict[str, dict[str, Any]]) -> str:
    """systemd's STATUS= line: serving or not, and any crash loop."""
    if serving.ok:
        return f"serving {config.url}"
    loops = "; ".join(f"{name}: crash loop, next try in {loop['next_try_in']:.0f} s"
                      for name, loop in crash_loops.items())
    return f"NOT serving {config.url}: {serving.error}" + (f" ({loops})" if loops else "")


def wait_serving(config: Config, supervisor: Supervisor, layout: Layout, deadline: float,
                 cancelled: threading.Event, clock: Callable[[], float]) -> None:
    """Wait until Jupyter answers through nginx, or fail with the reason; safe from any thread."""
    last = ""
    while clock() < deadline:
        result = probe_through_nginx(config, timeout=5)
        if result.ok:
            return
        last = result.error or f"HTTP {result.status}"
        for name, info in supervisor.processes().items():
            if info.state in (states.FATAL, states.BACKOFF) and name in states.PROGRAMS:
                if info.state == states.FATAL or clock() + 1 > deadline:
                    raise StartupError(f"{name} failed to start: {logs.tail(layout.log_file(name))}")
        if cancelled.wait(0.1):
            raise Interrupted("stopped while waiting for Jupyter to answer")
    raise StartupError(f"Jupyter did not answer through nginx within {STARTUP_TIMEOUT:.0f} s ({last}); "
                       f"see {layout.log_dir}")


def wait_serving_answer(config: Config, supervisor: Supervisor, layout: Layout, deadline: float,
                        cancelled: threading.Event, clock: Callable[[], float]) -> dict[str, Any]:
    """For a control connection: wait to serve again, unless a program is stopped on purpose."""
    procs = supervisor.processes()
    down = [n for n in states.PROGRAMS if n in procs and procs[n].state in states.STOPPED_STATES]
    if down:
        return {"serving": False, "note": f"not waiting for Jupyter through nginx: {', '.join(down)} is stopped"}
    wait_serving(config, supervisor, layout, deadline, cancelled, clock)
    return {"serving": True}


class ServingCheck:
    """Asks on a timer, in a thread, whether Jupyter answers through nginx; records it and tells systemd.

    A hung nginx must not hold the main loop, so the timed check runs in a
    thread and its result comes back as a queued `serving_result` command.
    """

    def __init__(self, config: Callable[[], Config], ledger: Ledger, post: Callable[..., None],
                 schedule: Callable[[str, float, Callable[[], None]], None],
                 crash_loops: Callable[[], dict[str, dict[str, Any]]]):
        self._config = config
        self._ledger = ledger
        self._post = post
        self._schedule = schedule
        self._crash_loops = crash_loops

    def start(self) -> None:
        self.record(Serving(True, time.time()), announce=False)
        self._schedule("serving", self._config().health.interval_seconds, self._in_thread)

    def _in_thread(self) -> None:
        config = self._config()

        def run() -> None:
            self._post("serving_result", "probe", serving=check(config, config.health.timeout_seconds))

        threading.Thread(target=run, name="jrd-probe-serving", daemon=True).start()
        self._schedule("serving", config.health.interval_seconds, self._in_thread)

    def now(self, timeout: float) -> Serving:
        """Ask at once (on the main loop, bounded by `timeout`) and record it."""
        result = check(self._config(), timeout)
        self.record(result)
        return result

    def record(self, result: Serving, announce: bool = True) -> None:
        if self._ledger.record_serving(result) and announce:
            if result.ok:
                log.info("serving again: Jupyter answers through nginx")
            else:
                log.error("NOT serving: Jupyter does not answer through nginx (%s)", result.error)
        notify("STATUS=" + status_line(self._config(), result, self._crash_loops()))

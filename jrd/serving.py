"""Is jrd serving?  Jupyter answering through nginx, the way a browser reaches it."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from jrd import logs, probe, states
from jrd.config import Config
from jrd.errors import Interrupted, StartupError
from jrd.ledger import Serving
from jrd.layout import Layout
from jrd.supervisor import Supervisor

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

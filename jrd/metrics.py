"""Prometheus metrics, read from live state at scrape time.

`JrdCollector` asks each source when Prometheus scrapes: supervisord over
XML-RPC, /proc for the program trees, the certificate files, nginx's
`stub_status` on its private unix socket, Jupyter's `/api/status` and
`/api/kernels` with the internal token (and, with server-side execution,
jrd.execution_counter's counts inside Jupyter), and the daemon's own counters.
The sources are asked in parallel, each call has a short timeout, and
failures are contained per source: a hung child costs a scrape at most
`timeout` and shows up as
`jrd_scrape_collector_success{collector=...} 0` (and, for supervisord,
as `jrd_supervisord_up 0` with every program UNKNOWN), never as a hang.

`MetricsServer` is the daemon extension that serves `/metrics` on
`[metrics] listen` from a private registry.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jrd import __version__, nginx, states
from jrd.config import split_host_port
from jrd.errors import JrdError
from jrd.extension import Context, Extension
from jrd.jupyter import JupyterActivity, ServerSideExecutions
from jrd.ledger import Snapshot
from jrd.supervisor import ProcessInfo, Supervisor

log = logging.getLogger("jrd")

# Per source; a scrape that meets hung children takes at most a few of these.
SCRAPE_CALL_TIMEOUT = 2.0
# Failures that a source may raise and that mean "this source is down".
SOURCE_ERRORS = (JrdError, OSError, ValueError, KeyError, TypeError, IndexError, http.client.HTTPException)


# --- program trees in /proc ------------------------------------------------------------


@dataclass(frozen=True)
class TreeUsage:
    """Resources of a process and all of its descendants."""

    processes: int
    rss_bytes: int
    cpu_seconds: float


class ProcReader:
    """Reads process trees from /proc (injected root, for tests)."""

    def __init__(self, root: Path = Path("/proc")):
        self.root = root
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def children(self, pid: int) -> list[int]:
        out: list[int] = []
        try:
            tasks = os.listdir(self.root / str(pid) / "task")
        except OSError:
            return out
        for tid in tasks:
            try:
                out.extend(int(c) for c in (self.root / str(pid) / "task" / tid / "children").read_text().split())
            except OSError:
                continue
        return out

    def tree(self, pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(self.children(p))
        return out

    def usage(self, pid: int) -> TreeUsage:
        """RSS and CPU of `pid` and its descendants (kernels are children of Jupyter).

        CPU counts each process's own time plus its reaped children's
        (cutime/cstime), so a kernel that exits keeps its share and the
        counter only resets when the program itself restarts.
        """
        count, rss, ticks = 0, 0, 0
        for p in self.tree(pid):
            try:
                stat = (self.root / str(p) / "stat").read_text()
                statm = (self.root / str(p) / "statm").read_text()
            except OSError:
                continue  # it exited meanwhile
            fields = stat.rsplit(")", 1)[1].split()
            # fields[0] is field 3 of proc(5): utime is 14, stime 15, cutime 16, cstime 17
            ticks += sum(int(f) for f in fields[11:15])
            rss += int(statm.split()[1]) * self.page
            count += 1
        return TreeUsage(count, rss, ticks / self.ticks)


# --- the collector ----------------------------------------------------------------------------


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


class JrdCollector:
    """Reads jrd's state when scraped; every source bounded and failing on its own."""

    def __init__(
        self,
        ctx: Context,
        *,
        supervisor: Supervisor | None = None,
        procs: ProcReader | None = None,
        jupyter: Callable[[float], JupyterActivity] | None = None,
        executions: Callable[[float], ServerSideExecutions] | None = None,
        stub_status: Callable[[Path, float], dict[str, int]] = nginx.read_stub_status,
        timeout: float = SCRAPE_CALL_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        idle: Callable[[], Any] | None = None,
        wall: Callable[[], float] = time.time,
    ):
        self.ctx = ctx
        self._idle = idle  # the idle guard's record (jrd.idle.IdleRecord), read at scrape time
        self._wall = wall
        # Its own client with a short timeout: a scrape must not wait as long as a command may.
        self.supervisor = supervisor or Supervisor(ctx.layout.supervisor_socket, timeout=timeout)
        self.procs = procs or ProcReader()
        self._jupyter = jupyter or ctx.jupyter.activity
        self._executions = executions or ctx.jupyter.server_side_executions
        self._stub_status = stub_status
        self.timeout = timeout
        self._clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[str, tuple[Future[tuple[Any, float]], float]] = {}
        self._lock = threading.Lock()

    def _read(self, name: str, call: Callable[[], Any]) -> tuple[Any, float]:
        start = self._clock()
        try:
            value = call()
        except SOURCE_ERRORS as exc:
            log.debug("metrics: %s unavailable: %s", name, exc)
            value = None
        return value, self._clock() - start

    def _gather(self, calls: dict[str, Callable[[], Any]]) -> dict[str, tuple[Any, float]]:
        """Ask every source at once; whatever has not answered by the deadline counts as failed.

        A source still stuck from an earlier scrape is not asked again, so
        hung children never pile up threads.
        """
        start = self._clock()
        deadline = start + self.timeout + 0.5
        futures: dict[str, Future[tuple[Any, float]]] = {}
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2 * len(calls), thread_name_prefix="jrd-scrape")
            for name, call in calls.items():
                running = self._running.get(name)
                if running is not None and not running[0].done() and start - running[1] > self.timeout:
                    continue
                futures[name] = self._pool.submit(self._read, name, call)
                self._running[name] = (futures[name], start)
        out: dict[str, tuple[Any, float]] = {}
        for name in calls:
            fut = futures.get(name)
            try:
                out[name] = fut.result(timeout=max(0.0, deadline - self._clock())) if fut else (None, 0.0)
            except FutureTimeout:
                out[name] = (None, self._clock() - start)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def collect(self) -> Iterator[Metric]:
        sources: dict[str, Callable[[], Any]] = {
            "supervisord": self.supervisor.processes,
            "certificates": self.ctx.certificate_status,
            "jupyter": lambda: self._jupyter(self.timeout),
            "nginx": lambda: self._stub_status(self.ctx.layout.nginx_status_socket, self.timeout),
        }
        server_side = self.ctx.config.jupyter.server_side_execution
        if server_side:
            sources["server_side_executions"] = lambda: self._executions(self.timeout)
        got = self._gather(sources)
        ledger = self.ctx.ledger.snapshot()
        procs = got["supervisord"][0]
        if procs is not None:
            # After supervisord, which names the PIDs; /proc does not hang.
            got["proc"] = self._read("proc", lambda: {n: self.procs.usage(i.pid) for n, i in procs.items()
                                                      if n in states.PROGRAMS and i.pid})
        yield from _programs(procs)
        yield from _restarts(ledger)
        yield from _trees((got["proc"][0] if "proc" in got else None) or {})
        yield from _certificates(got["certificates"][0] or {})
        yield from _reloads(ledger)
        yield from _jupyter_metrics(got["jupyter"][0])
        if server_side:
            yield from _server_side_executions(got["server_side_executions"][0])
        yield from _nginx(got["nginx"][0])
        yield from _probes(ledger)
        yield from _serving(ledger)
        if self._idle is not None:
            yield from _idle_metrics(self._idle(), self._wall())
        info = _gauge("jrd_build_info", "jrd's version; always 1.", ["version"])
        info.add_metric([__version__], 1)
        yield info
        ok = _gauge("jrd_scrape_collector_success", "Whether a source answered this scrape (1) or failed (0).",
                    ["collector"])
        took = _gauge("jrd_scrape_collector_duration_seconds", "How long a source took to answer this scrape.",
                      ["collector"])
        for name, (value, seconds) in got.items():
            ok.add_metric([name], 0 if value is None else 1)
            took.add_metric([name], seconds)
        yield ok
        yield took


# --- the families, each from what the scrape read: supervised programs ----------------------


def _programs(procs: dict[str, ProcessInfo] | None) -> Iterator[Metric]:
    sup = _gauge("jrd_supervisord_up", "Whether supervisord answered this scrape over XML-RPC.")
    sup.add_metric([], 0 if procs is None else 1)
    yield sup
    up = _gauge("jrd_program_up",
                "Whether supervisord reports the program RUNNING (0 if supervisord is unresponsive).",
                ["program"])
    state = _gauge("jrd_program_state", "The program's supervisord state: 1 for the current one, 0 for the others.",
                   ["program", "state"])
    started = _gauge("jrd_program_start_timestamp_seconds", "When the running program started, as a Unix time.",
                     ["program"])
    for name in states.PROGRAMS:
        info = procs.get(name) if procs is not None else None
        current = info.state if info is not None else states.UNKNOWN
        up.add_metric([name], 1 if current == states.RUNNING else 0)
        for s in states.PROGRAM_STATES:
            state.add_metric([name, s], 1 if s == current else 0)
        if info is not None and info.running:
            started.add_metric([name], info.start)
    yield up
    yield state
    yield started


def _restarts(ledger: Snapshot) -> Iterator[Metric]:
    restarts = ledger.restarts
    m = _counter("jrd_program_restarts", "Restarts of a program, by why (counted from supervisord's events).",
                 ["program", "reason"])
    for name in states.PROGRAMS:
        for reason in states.RESTART_REASONS:
            m.add_metric([name, reason], restarts.get((name, reason), 0))
    yield m


def _trees(trees: dict[str, TreeUsage]) -> Iterator[Metric]:
    rss = _gauge("jrd_program_resident_memory_bytes",
                 "Resident memory of the program and all its child processes (Jupyter's kernels included).",
                 ["program"])
    cpu = _counter("jrd_program_cpu_seconds",
                   "CPU time of the program and all its child processes, user and system.", ["program"])
    count = _gauge("jrd_program_processes", "Processes in the program's tree.", ["program"])
    for name, usage in sorted(trees.items()):
        rss.add_metric([name], usage.rss_bytes)
        cpu.add_metric([name], usage.cpu_seconds)
        count.add_metric([name], usage.processes)
    yield rss
    yield cpu
    yield count


# --- certificates and config --------------------------------------------------


def _certificates(status: dict[str, Any]) -> Iterator[Metric]:
    not_after = _gauge("jrd_certificate_not_after_timestamp_seconds",
                       "When the certificate expires (its notAfter), as a Unix time.", ["cert"])
    for role in ("leaf", "ca"):
        entry = status.get(role)
        if isinstance(entry, dict) and isinstance(entry.get("not_after"), (int, float)):
            not_after.add_metric([role], entry["not_after"])
    yield not_after
    renewals = status.get("renewals") if isinstance(status.get("renewals"), dict) else {}
    m = _counter("jrd_certificate_renewals", "Certificate renewals since jrd started, by result.", ["result"])
    for result in (states.RESULT_SUCCESS, states.RESULT_FAILURE):
        value = renewals.get(result, 0)
        m.add_metric([result], value if isinstance(value, (int, float)) else 0)
    yield m
    last = status.get("last_renewal_success")
    if isinstance(last, (int, float)):
        g = _gauge("jrd_certificate_last_renewal_success_timestamp_seconds",
                   "When jrd last renewed the certificate successfully, as a Unix time.")
        g.add_metric([], last)
        yield g
    acme = status.get("acme")
    if isinstance(acme, dict):
        yield from _acme_metrics(acme)


def _reloads(ledger: Snapshot) -> Iterator[Metric]:
    rec = ledger.reloads
    m = _counter("jrd_config_reloads", "Config reloads since jrd started, by result.", ["result"])
    m.add_metric([states.RESULT_SUCCESS], rec.successes)
    m.add_metric([states.RESULT_FAILURE], rec.failures)
    yield m
    ok = _gauge("jrd_config_last_reload_successful", "Whether the last config reload succeeded (the start counts).")
    ok.add_metric([], 0 if rec.ok is False else 1)
    yield ok
    at = _gauge("jrd_config_last_reload_success_timestamp_seconds",
                "When the config was last loaded successfully (at start or by a reload), as a Unix time.")
    at.add_metric([], rec.last_success_at or ledger.started_at)
    yield at


# --- Jupyter and nginx -----------------------------------------------------------


def _jupyter_metrics(activity: JupyterActivity | None) -> Iterator[Metric]:
    up = _gauge("jrd_jupyter_api_up", "Whether Jupyter's /api/status answered this scrape.")
    up.add_metric([], 0 if activity is None else 1)
    yield up
    if activity is None:
        return
    for name, doc, value in (
        ("jrd_jupyter_kernels", "Kernels running in Jupyter.", activity.kernels),
        ("jrd_jupyter_kernels_busy", "Kernels executing code now.", activity.busy_kernels),
        ("jrd_jupyter_connections", "Open kernel connections (websockets) to Jupyter.", activity.connections),
        ("jrd_jupyter_last_activity_timestamp_seconds", "Jupyter's last user activity, as a Unix time.",
         activity.last_activity),
        ("jrd_jupyter_start_timestamp_seconds", "When the Jupyter server started, as a Unix time.",
         activity.started),
    ):
        g = _gauge(name, doc)
        g.add_metric([], value)
        yield g


def _server_side_executions(counts: ServerSideExecutions | None) -> Iterator[Metric]:
    if counts is None:
        return
    started = _counter("jrd_jupyter_server_side_executions_started",
                       "Cells begun on the server ([jupyter] server_side_execution) since Jupyter started.")
    started.add_metric([], counts.started)
    yield started
    ended = _counter("jrd_jupyter_server_side_executions",
                     "Cells run on the server ([jupyter] server_side_execution) since Jupyter started, "
                     "by result (error: an exception or an interrupt).", ["result"])
    ended.add_metric(["ok"], counts.ok)
    ended.add_metric(["error"], counts.error)
    yield ended


def _nginx(stub: dict[str, int] | None) -> Iterator[Metric]:
    up = _gauge("jrd_nginx_stub_status_up", "Whether nginx's stub_status answered this scrape.")
    up.add_metric([], 0 if stub is None else 1)
    yield up
    if stub is None:
        return
    for key in ("active", "reading", "writing", "waiting"):
        g = _gauge(f"jrd_nginx_connections_{key}", f"nginx client connections: {key}.")
        g.add_metric([], stub[key])
        yield g
    for name, key, doc in (
        ("jrd_nginx_connections_accepted", "accepts", "Client connections nginx accepted."),
        ("jrd_nginx_connections_handled", "handled", "Client connections nginx handled."),
        ("jrd_nginx_http_requests", "requests", "HTTP requests nginx served."),
    ):
        c = _counter(name, doc)
        c.add_metric([], stub[key])
        yield c


def _probes(ledger: Snapshot) -> Iterator[Metric]:
    last = ledger.probes
    ok = _gauge("jrd_probe_success", "Whether jrd's last health probe of the program succeeded.", ["program"])
    took = _gauge("jrd_probe_duration_seconds", "How long jrd's last health probe of the program took.",
                  ["program"])
    at = _gauge("jrd_probe_timestamp_seconds", "When jrd last probed the program, as a Unix time.", ["program"])
    failures = _gauge("jrd_probe_consecutive_failures",
                      "Failed health probes in a row that count towards an unhealthy restart.", ["program"])
    for name in states.PROGRAMS:
        outcome = last.get(name)
        if outcome is None:
            continue
        ok.add_metric([name], 1 if outcome.ok else 0)
        took.add_metric([name], outcome.latency)
        at.add_metric([name], outcome.at)
        failures.add_metric([name], ledger.probe_failures.get(name, 0))
    yield ok
    yield took
    yield at
    yield failures


def _serving(ledger: Snapshot) -> Iterator[Metric]:
    serving = ledger.serving
    if serving is None:
        return
    up = _gauge("jrd_serving", "Whether Jupyter answered through nginx at jrd's last check (1) or not (0).")
    up.add_metric([], 1 if serving.ok else 0)
    yield up
    at = _gauge("jrd_serving_checked_timestamp_seconds", "When jrd last checked that it serves, as a Unix time.")
    at.add_metric([], serving.checked_at)
    yield at


def _idle_metrics(rec: Any, now: float) -> Iterator[Metric]:
    on = _gauge("jrd_idle_stop_enabled", "Whether jrd stops the machine when it is idle ([idle]).")
    on.add_metric([], 1 if rec.enabled else 0)
    yield on
    stops = _counter("jrd_idle_stops", "Idle stops since jrd started, by the stop command's result.", ["result"])
    for result in (states.RESULT_SUCCESS, states.RESULT_FAILURE):
        stops.add_metric([result], (rec.stops or {}).get(result, 0))
    yield stops
    holds = _gauge("jrd_idle_holds_active", "Holds (jrdctl hold) keeping the machine up now.")
    holds.add_metric([], 1 if rec.hold_until is not None and rec.hold_until > now else 0)
    yield holds
    if not rec.enabled or rec.idle_since is None:
        return
    idle = _gauge("jrd_idle_seconds", "How long no activity signal has moved.")
    idle.add_metric([], max(0.0, now - rec.idle_since))
    yield idle
    warned = _gauge("jrd_idle_stop_warning", "Whether the warning that the machine will stop is out.")
    warned.add_metric([], 1 if rec.warned else 0)
    yield warned
    if rec.deadline is not None:
        at = _gauge("jrd_idle_stop_timestamp_seconds", "When jrd will stop the idle machine, as a Unix time.")
        at.add_metric([], rec.deadline)
        yield at


def build_registry(collector: JrdCollector) -> CollectorRegistry:
    """A private registry: jrd's collector plus the standard process and Python ones."""
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsServer(Extension):
    """Serve /metrics on [metrics] listen (nothing if it is empty), from a private registry."""

    def __init__(self, idle: Callable[[], Any] | None = None) -> None:
        self._idle = idle
        self.registry: CollectorRegistry | None = None
        self.collector: JrdCollector | None = None
        self._server: Any = None
        self._thread: Any = None
        self.address: tuple[str, int] | None = None

    def start(self, ctx: Context) -> None:
        from prometheus_client import start_http_server

        listen = ctx.config.metrics.listen
        if not listen:
            return
        self.collector = JrdCollector(ctx, idle=self._idle)
        self.registry = build_registry(self.collector)
        host, port = split_host_port(listen)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.address = (host, self._server.server_port)
        log.info("serving Prometheus metrics at http://%s/metrics", listen)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.collector is not None:
            self.collector.close()


def _acme_metrics(acme: dict[str, Any]) -> Iterator[Metric]:
    """[tls] mode = "acme": whether the CA's certificate is served, its expiry and issuer, orders by result."""
    cert = acme.get("certificate") or {}
    serving = _gauge("jrd_acme_certificate_served",
                     "1 if nginx serves the ACME CA's certificate for the public names, 0 if jrd's own CA's.")
    serving.add_metric([], 1.0 if acme.get("serving") == "acme" else 0.0)
    yield serving
    info = _gauge("jrd_acme_certificate_info", "The ACME certificate in service: its issuer and profile.",
                  ["issuer", "profile"])
    if cert:
        info.add_metric([str(cert.get("issuer", "")), str(acme.get("profile") or "")], 1.0)
        not_after = _gauge("jrd_acme_certificate_not_after_timestamp_seconds",
                           "When the ACME certificate in service expires, as a Unix time.")
        not_after.add_metric([], float(cert.get("not_after", 0)))
        yield not_after
    yield info
    orders = _counter("jrd_acme_orders", "ACME orders by result (kept across restarts).", ["result"])
    counts = acme.get("orders") or {}
    for result in (states.RESULT_SUCCESS, states.RESULT_FAILURE):
        orders.add_metric([result], float(counts.get(result, 0)))
    yield orders

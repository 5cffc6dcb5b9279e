"""Unit tests of the metrics collector, the event listener protocol and the health policy.

The collector runs against a private CollectorRegistry and a fake XML-RPC
namespace; nothing here starts supervisord, nginx or Jupyter.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from jrd import event_listener, events, health, metrics, states
from jrd.config import Config, JupyterConfig, PathsConfig, split_host_port
from jrd.daemon import Daemon
from jrd.errors import JrdError
from jrd.extension import Context
from jrd.jupyter import JupyterActivity, ServerSideExecutions
from jrd.ledger import Ledger
from jrd.supervisor import Supervisor

from conftest import parse_exposition

NOW = 1_800_000_000.0


class FakeRpc:
    """Stands in for supervisord's XML-RPC namespace."""

    def __init__(self, infos: list[dict[str, Any]] | None = None, fail: Exception | None = None):
        self.infos = infos or []
        self.fail = fail
        self.calls: list[str] = []

    def getAllProcessInfo(self) -> list[dict[str, Any]]:  # noqa: N802 - supervisord's name
        self.calls.append("getAllProcessInfo")
        if self.fail:
            raise self.fail
        return self.infos

    def getProcessInfo(self, name: str) -> dict[str, Any]:  # noqa: N802
        return next(i for i in self.infos if i["name"] == name)


class FakeSupervisor(Supervisor):
    def __init__(self, rpc: FakeRpc):
        super().__init__(Path("/nonexistent.sock"), timeout=0.1)
        self.rpc = rpc

    def _rpc(self, timeout: float | None = None) -> Any:
        return SimpleNamespace(supervisor=self.rpc)


def info(name: str, state: str, pid: int = 0, start: float = NOW - 100) -> dict[str, Any]:
    return {"name": name, "statename": state, "pid": pid, "start": start, "now": NOW, "exitstatus": 0, "spawnerr": ""}


class FakeProcs(metrics.ProcReader):
    def usage(self, pid: int) -> metrics.TreeUsage:
        return metrics.TreeUsage(3, pid * 1000, pid / 10)


def activity(timeout: float) -> JupyterActivity:
    return JupyterActivity(kernels=2, busy_kernels=1, connections=3, last_activity=NOW - 5, started=NOW - 100)


def stub(path: Path, timeout: float) -> dict[str, int]:
    return {"active": 4, "accepts": 10, "handled": 10, "requests": 42, "reading": 0, "writing": 1, "waiting": 3}


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    cfg = Config(paths=PathsConfig(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run",
                                   log_dir=tmp_path / "log"))
    return Daemon(cfg)


class RecordingRpc:
    """Each call's method name and arguments, answered with nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, method: str) -> Any:
        return lambda *args: self.calls.append((method, *args))


def test_every_stop_wakes_the_program_first_so_a_frozen_one_can_act_on_its_sigterm() -> None:
    rpc = RecordingRpc()
    sup = FakeSupervisor(rpc)  # type: ignore[arg-type]
    sup.stop("jupyter")
    sup.wake_all()
    assert rpc.calls == [("signalProcess", "jupyter", "CONT"), ("stopProcess", "jupyter", True),
                         ("signalAllProcesses", "CONT")]


def scrape(collector: metrics.JrdCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return parse_exposition(generate_latest(registry).decode())


def make(daemon: Daemon, rpc: FakeRpc, **kw: Any) -> metrics.JrdCollector:
    kw.setdefault("jupyter", activity)
    kw.setdefault("stub_status", stub)
    ctx = kw.pop("ctx", daemon.context)
    return metrics.JrdCollector(ctx, supervisor=FakeSupervisor(rpc), procs=FakeProcs(), **kw)


def count(ledger: Ledger, program: str, reason: str, times: int) -> None:
    for _ in range(times):
        ledger.count_restart(program, reason)


def test_programs_states_and_trees(daemon: Daemon) -> None:
    rpc = FakeRpc([info("jupyter", "RUNNING", 100), info("nginx", "BACKOFF"), info("jrd-events", "RUNNING", 7)])
    m = scrape(make(daemon, rpc))
    assert m['jrd_supervisord_up'] == 1
    assert m['jrd_program_up{program="jupyter"}'] == 1
    assert m['jrd_program_up{program="nginx"}'] == 0
    assert m['jrd_program_state{program="nginx",state="BACKOFF"}'] == 1
    assert sum(v for k, v in m.items() if k.startswith('jrd_program_state{program="jupyter"')) == 1
    assert m['jrd_program_start_timestamp_seconds{program="jupyter"}'] == NOW - 100
    assert 'jrd_program_start_timestamp_seconds{program="nginx"}' not in m  # not running
    assert m['jrd_program_resident_memory_bytes{program="jupyter"}'] == 100_000
    assert m['jrd_program_cpu_seconds_total{program="jupyter"}'] == 10.0
    assert not any("jrd-events" in k for k in m)  # only the two programs, bounded labels


def test_restarts_are_exact_and_every_reason_is_present(daemon: Daemon) -> None:
    count(daemon.ledger, "jupyter", "crash", 3)
    count(daemon.ledger, "nginx", "unhealthy", 1)
    m = scrape(make(daemon, FakeRpc([info("jupyter", "RUNNING", 1), info("nginx", "RUNNING", 2)])))
    assert m['jrd_program_restarts_total{program="jupyter",reason="crash"}'] == 3
    assert m['jrd_program_restarts_total{program="nginx",reason="unhealthy"}'] == 1
    for program in ("jupyter", "nginx"):
        for reason in states.RESTART_REASONS:
            assert f'jrd_program_restarts_total{{program="{program}",reason="{reason}"}}' in m


def test_unresponsive_supervisord_gives_up_zero_and_unknown_without_raising(daemon: Daemon) -> None:
    rpc = FakeRpc(fail=OSError("timed out"))
    m = scrape(make(daemon, rpc))
    assert m["jrd_supervisord_up"] == 0
    assert m['jrd_scrape_collector_success{collector="supervisord"}'] == 0
    assert m['jrd_program_up{program="jupyter"}'] == 0
    assert m['jrd_program_state{program="jupyter",state="UNKNOWN"}'] == 1
    assert m['jrd_jupyter_api_up'] == 1  # the other sources still answer


def test_a_hung_source_is_bounded_and_not_asked_again_while_stuck(daemon: Daemon) -> None:
    release = threading.Event()
    rpc = FakeRpc([info("jupyter", "RUNNING", 1)])
    calls = 0

    def hang() -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        release.wait(30)  # like a SIGSTOPped supervisord behind a socket without timeout
        return rpc.infos

    rpc.getAllProcessInfo = hang  # type: ignore[method-assign]
    collector = make(daemon, rpc, timeout=0.2)
    try:
        for _ in range(3):
            start = time.monotonic()
            m = scrape(collector)
            assert time.monotonic() - start < 0.2 + 1.3  # far from the 30 s the source hangs
            assert m["jrd_supervisord_up"] == 0 and m["jrd_jupyter_api_up"] == 1
        assert calls == 1  # still stuck: not asked again, so no threads pile up
    finally:
        release.set()
        collector.close()


def test_rpc_fault_counts_as_an_unresponsive_source(daemon: Daemon) -> None:
    rpc = FakeRpc(fail=xmlrpc.client.Fault(1, "SHUTDOWN_STATE"))
    assert scrape(make(daemon, rpc))["jrd_supervisord_up"] == 0


def test_jupyter_and_nginx_sources(daemon: Daemon) -> None:
    m = scrape(make(daemon, FakeRpc([])))
    assert m["jrd_jupyter_kernels"] == 2 and m["jrd_jupyter_kernels_busy"] == 1
    assert m["jrd_jupyter_connections"] == 3
    assert m["jrd_jupyter_last_activity_timestamp_seconds"] == NOW - 5
    assert m["jrd_nginx_connections_active"] == 4 and m["jrd_nginx_connections_waiting"] == 3
    assert m["jrd_nginx_http_requests_total"] == 42


def test_failing_jupyter_and_nginx_are_explicit(daemon: Daemon) -> None:
    def down(*_: Any) -> Any:
        raise JrdError("Jupyter api/status: TimeoutError: timed out")

    def refused(*_: Any) -> Any:
        raise ConnectionRefusedError("refused")

    m = scrape(make(daemon, FakeRpc([]), jupyter=down, stub_status=refused))
    assert m["jrd_jupyter_api_up"] == 0 and "jrd_jupyter_kernels" not in m
    assert m["jrd_nginx_stub_status_up"] == 0 and "jrd_nginx_http_requests_total" not in m
    assert m['jrd_scrape_collector_success{collector="jupyter"}'] == 0


def test_server_side_executions_are_counted_only_with_the_setting_on(tmp_path: Path) -> None:
    asked: list[float] = []

    def executions(timeout: float) -> ServerSideExecutions:
        asked.append(timeout)
        return ServerSideExecutions(started=7, ok=5, error=1)

    paths = PathsConfig(state_dir=tmp_path / "s", runtime_dir=tmp_path / "r", log_dir=tmp_path / "l")
    off = Daemon(Config(paths=paths))
    m = scrape(make(off, FakeRpc([]), executions=executions))
    assert not asked and not [name for name in m if "server_side" in name]
    on = Daemon(dataclasses.replace(off.config, jupyter=JupyterConfig(server_side_execution=True)))
    m = scrape(make(on, FakeRpc([]), executions=executions))
    assert m["jrd_jupyter_server_side_executions_started_total"] == 7
    assert m['jrd_jupyter_server_side_executions_total{result="ok"}'] == 5
    assert m['jrd_jupyter_server_side_executions_total{result="error"}'] == 1
    assert m['jrd_scrape_collector_success{collector="server_side_executions"}'] == 1

    def down(timeout: float) -> ServerSideExecutions:
        raise JrdError("Jupyter api/jrd/server-side-executions: HTTP 404")

    m = scrape(make(on, FakeRpc([]), executions=down))
    assert "jrd_jupyter_server_side_executions_started_total" not in m and m["jrd_jupyter_api_up"] == 1
    assert m['jrd_scrape_collector_success{collector="server_side_executions"}'] == 0


def test_certificates_and_renewals_read_defensively(daemon: Daemon) -> None:
    ctx = dataclasses.replace(daemon.context, certificate_status=lambda: {
        "leaf": {"not_after": NOW + 86400}, "ca": {"error": "missing"},
        "renewals": {"success": 2, "failure": "?"}, "last_renewal_success": NOW - 60,
    })
    m = scrape(make(daemon, FakeRpc([]), ctx=ctx))
    assert m['jrd_certificate_not_after_timestamp_seconds{cert="leaf"}'] == NOW + 86400
    assert 'jrd_certificate_not_after_timestamp_seconds{cert="ca"}' not in m
    assert m['jrd_certificate_renewals_total{result="success"}'] == 2
    assert m['jrd_certificate_renewals_total{result="failure"}'] == 0
    assert m["jrd_certificate_last_renewal_success_timestamp_seconds"] == NOW - 60


def test_config_reload_metrics(daemon: Daemon) -> None:
    m = scrape(make(daemon, FakeRpc([])))
    assert m["jrd_config_last_reload_successful"] == 1  # the start counts as a successful load
    assert m["jrd_config_last_reload_success_timestamp_seconds"] == daemon.ledger.started_at
    daemon.ledger.wall = lambda: NOW
    daemon.ledger.record_reload(True)
    daemon.ledger.record_reload(True)
    daemon.ledger.record_reload(False, "refused")
    m = scrape(make(daemon, FakeRpc([])))
    assert m["jrd_config_last_reload_successful"] == 0
    assert m['jrd_config_reloads_total{result="failure"}'] == 1
    assert m['jrd_config_reloads_total{result="success"}'] == 2
    assert m["jrd_config_last_reload_success_timestamp_seconds"] == NOW


def test_serving_comes_from_the_last_check_through_nginx(daemon: Daemon) -> None:
    from jrd.ledger import Serving

    assert "jrd_serving" not in scrape(make(daemon, FakeRpc([])))  # not checked yet: no claim either way
    daemon.ledger.record_serving(Serving(False, NOW, "HTTP 502 through nginx"))
    m = scrape(make(daemon, FakeRpc([])))
    assert m["jrd_serving"] == 0 and m["jrd_serving_checked_timestamp_seconds"] == NOW


def test_probe_metrics_come_from_the_ledger(daemon: Daemon) -> None:
    daemon.ledger.record_probe(health.ProbeOutcome("jupyter", False, 1.5, "timed out", NOW), 2)
    m = scrape(make(daemon, FakeRpc([])))
    assert m['jrd_probe_success{program="jupyter"}'] == 0
    assert m['jrd_probe_duration_seconds{program="jupyter"}'] == 1.5
    assert m['jrd_probe_consecutive_failures{program="jupyter"}'] == 2


def test_full_registry_passes_promtool(daemon: Daemon, tmp_path: Path) -> None:
    count(daemon.ledger, "jupyter", "crash", 1)
    rpc = FakeRpc([info("jupyter", "RUNNING", 1), info("nginx", "RUNNING", 2)])
    registry = metrics.build_registry(make(daemon, rpc))
    text = generate_latest(registry).decode()
    assert "process_resident_memory_bytes" in text and "python_info" in text and "jrd_build_info" in text
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr


def test_proc_reader_counts_children(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import subprocess,sys; subprocess.run(['sleep','30'])"])
    try:
        reader = metrics.ProcReader()
        deadline = time.monotonic() + 10
        while len(reader.tree(child.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        usage = reader.usage(child.pid)
        assert usage.processes == 2  # python and its sleep
        assert usage.rss_bytes > 1_000_000
        assert usage.cpu_seconds >= 0
    finally:
        child.kill()
        child.wait()
    assert metrics.ProcReader().usage(child.pid).processes == 0  # gone: nothing, no error


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:9839") == ("127.0.0.1", 9839)
    assert split_host_port("[::1]:9") == ("::1", 9)


# --- events -----------------------------------------------------------------------------


def frame(eventname: str, payload: str, serial: int = 1) -> bytes:
    body = payload.encode()
    header = (f"ver:3.0 server:supervisor serial:{serial} pool:jrd-events poolserial:{serial} "
              f"eventname:{eventname} len:{len(body)}\n")
    return header.encode() + body


def test_listener_speaks_supervisords_protocol() -> None:
    stdin = io.BytesIO(
        frame("PROCESS_STATE_EXITED", "processname:jupyter groupname:jupyter from_state:RUNNING expected:0 pid:42", 1)
        + frame("TICK_5", "when:1", 2)
        + frame("PROCESS_STATE_STARTING", "processname:jupyter groupname:jupyter from_state:EXITED tries:0", 3)
    )
    stdout = io.BytesIO()
    seen: list[dict[str, str]] = []
    event_listener.serve(stdin, stdout, seen.append)
    assert stdout.getvalue() == b"READY\nRESULT 2\nOK" * 3 + b"READY\n"
    assert [e["eventname"] for e in seen] == ["PROCESS_STATE_EXITED", "PROCESS_STATE_STARTING"]
    assert seen[1]["from_state"] == "EXITED" and seen[1]["processname"] == "jupyter"


def test_listener_program_forwards_datagrams(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "ev.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        data = frame("PROCESS_STATE_STARTING", "processname:nginx groupname:nginx from_state:BACKOFF tries:1")
        # Exactly as supervisord runs it: isolated, without site-packages.
        proc = subprocess.run(events.listener_argv(Path(sys.executable), path), input=data, capture_output=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"READY\nRESULT 2\nOKREADY\n"
        event = event_listener.parse_tokens(sock.recv(4096).decode())
    assert events.restart_reason(event) == "crash"
    assert event["processname"] == "nginx" and event["serial"] == "1"


def test_listener_imports_only_builtin_modules() -> None:
    """It runs for as long as jrd does: no site-packages, and none of the stdlib's heavier modules."""
    python, *flags = events.listener_argv(Path(sys.executable), Path("/nonexistent.sock"))
    proc = subprocess.run([python, "-X", "importtime", *flags], input=b"", capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == b"READY\n", proc.stderr
    loaded = {line.rpartition("|")[2].strip() for line in proc.stderr.decode().splitlines()}
    assert not loaded & {"json", "socket", "typing", "re", "enum", "site", "jrd"}, loaded


@pytest.mark.parametrize(
    "event, reason",
    [
        ({"eventname": "PROCESS_STATE_STARTING", "processname": "jupyter", "from_state": "EXITED"}, "crash"),
        ({"eventname": "PROCESS_STATE_STARTING", "processname": "jupyter", "from_state": "BACKOFF"}, "crash"),
        # started by someone (jrd's own restarts, reloads, the first start): counted where it is asked for
        ({"eventname": "PROCESS_STATE_STARTING", "processname": "jupyter", "from_state": "STOPPED"}, None),
        ({"eventname": "PROCESS_STATE_STARTING", "processname": "nginx", "from_state": "FATAL"}, None),
        ({"eventname": "PROCESS_STATE_EXITED", "processname": "jupyter", "from_state": "RUNNING"}, None),
        ({"eventname": "PROCESS_STATE_STARTING", "processname": "jrd-events", "from_state": "EXITED"}, None),
    ],
)
def test_restart_reason(event: dict[str, str], reason: str | None) -> None:
    assert events.restart_reason(event) == reason


def test_three_crashes_count_three(daemon: Daemon) -> None:
    ext = events.ProgramEvents()
    ext.prepare(daemon.context)
    ext.start(daemon.context)
    try:
        for _ in range(3):
            for name, frm in (("PROCESS_STATE_EXITED", "RUNNING"), ("PROCESS_STATE_STARTING", "EXITED"),
                              ("PROCESS_STATE_RUNNING", "STARTING")):
                ext.on_event({"eventname": name, "processname": "jupyter", "from_state": frm})
    finally:
        ext.stop()
    assert dict(daemon.ledger.snapshot().restarts) == {("jupyter", "crash"): 3}


# --- health policy ---------------------------------------------------------------------------


def fold(outcomes: list[bool], *, state: str = states.RUNNING, start: float = 1.0, uptime: float = 1000.0,
         threshold: int = 3, prev: health.Tracker | None = None) -> tuple[health.Tracker, list[bool]]:
    tracker, restarts = prev or health.Tracker(), []
    for ok in outcomes:
        verdict = health.judge(tracker, state=state, start=start, uptime=uptime, ok=ok, threshold=threshold)
        tracker = verdict.tracker
        restarts.append(verdict.restart)
    return tracker, restarts


def test_threshold_failures_in_a_row_restart_once() -> None:
    _, restarts = fold([True, False, False, False, False])
    assert restarts == [False, False, False, True, False]


def test_a_success_resets_the_count() -> None:
    tracker, restarts = fold([True, False, False, True, False, False])
    assert not any(restarts) and tracker.failures == 2


def test_not_running_is_not_judged() -> None:
    tracker, restarts = fold([False] * 10, state=states.BACKOFF)
    assert not any(restarts) and tracker.failures == 0


def test_startup_grace_until_first_answer() -> None:
    # Jupyter answers a few seconds after supervisord calls it RUNNING.
    tracker, restarts = fold([False] * 5, uptime=10)
    assert not any(restarts) and tracker.failures == 0
    _, restarts = fold([False] * 3, uptime=health.STARTUP_GRACE_SECONDS + 1)
    assert restarts[-1]  # but a program that never answers is restarted after the grace


def test_a_new_instance_starts_clean() -> None:
    tracker, _ = fold([True, False, False], start=1.0)
    tracker, restarts = fold([False], start=2.0, uptime=5, prev=tracker)
    assert restarts == [False] and tracker.failures == 0 and tracker.start == 2.0


def test_a_probe_of_the_previous_instance_is_ignored() -> None:
    # A stopped Jupyter, continued so that it shuts down, answers the probe
    # that was waiting on it; that success must not count for its successor.
    tracker, _ = fold([False, False], start=100.0)
    verdict = health.judge(tracker, state=states.RUNNING, start=200.0, uptime=3, ok=True, threshold=3, probed_at=199.5)
    assert verdict.tracker == health.Tracker(200.0, False, 0)
    _, restarts = fold([False] * 5, start=200.0, uptime=3, prev=verdict.tracker)
    assert not any(restarts)  # still in its startup grace


class FakeStack:
    """Enough of a daemon's Context for the health monitor's main-loop half."""

    def __init__(self, state: str = states.RUNNING):
        self.config = Config()
        self.submitted: list[tuple[str, dict[str, Any]]] = []
        self.scheduled: list[tuple[str, float]] = []
        self.state = state
        self.ledger = Ledger()
        stack = self

        class Sup:
            def process(self, name: str) -> Any:
                return SimpleNamespace(state=stack.state, start=1.0, uptime=1000.0)

        def submit(name: str, source: str, **args: Any) -> Any:
            from concurrent.futures import Future

            self.submitted.append((name, args))
            fut: Future[Any] = Future()
            fut.set_result(None)
            return fut

        self.context = Context(
            layout=None, supervisor=Sup(), ledger=self.ledger, jupyter=None,  # type: ignore[arg-type]
            submit=submit, add_handler=lambda name, handler: None,
            schedule=lambda name, delay, fn: self.scheduled.append((name, delay)), cancel=lambda name: None,
            current_config=lambda: self.config, wait_serving=lambda deadline: {}, certificate_status=dict,
        )


def test_monitor_restarts_through_the_command_path() -> None:
    d = FakeStack()
    mon = health.HealthMonitor()
    mon.start(d.context)
    threshold = d.config.health.failure_threshold
    for i in range(threshold):
        restarted = mon.on_result(health.ProbeOutcome("jupyter", False, 10.0, "TimeoutError: timed out", NOW))
    assert restarted
    assert d.submitted == [("restart", {"program": "jupyter", "reason": "unhealthy"})]
    assert d.ledger.snapshot().probes["jupyter"].error == "TimeoutError: timed out"


def test_monitor_timer_probes_in_threads_and_reports_back() -> None:
    d = FakeStack()
    mon = health.HealthMonitor(
        probes={"jupyter": lambda config, layout, timeout: health.ProbeOutcome("jupyter", True, 0.01)})
    mon.start(d.context)
    assert d.scheduled == [("health", d.config.health.interval_seconds)]
    mon.on_timer()
    deadline = time.monotonic() + 5
    while not d.submitted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d.submitted[0][0] == "health_result" and d.submitted[0][1]["outcome"].ok
    assert d.scheduled[-1] == ("health", d.config.health.interval_seconds)  # probes again after the interval


# --- shipped Prometheus files -----------------------------------------------------------------

ETC = Path(__file__).resolve().parent.parent / "etc" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert Path("/usr/bin/promtool").exists(), "promtool is missing: install Debian's prometheus package"
    return subprocess.run(["/usr/bin/promtool", *args], capture_output=True, text=True, timeout=120, cwd=ETC)


def test_alert_rules_pass_promtool_check() -> None:
    res = promtool("check", "rules", "jrd-alerts.yml")
    assert res.returncode == 0 and "SUCCESS: 13 rules found" in res.stdout, res.stdout + res.stderr


def test_alert_rules_unit_tests_pass() -> None:
    res = promtool("test", "rules", "jrd-alerts.test.yml")
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_example_scrape_config_is_valid() -> None:
    res = promtool("check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr

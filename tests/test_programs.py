"""How each program is restarted, when a deferred Jupyter restart happens, and how FATAL retries back off.

Fakes stand in for supervisord, Jupyter's API and the clock; nothing here starts a process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jrd import states
from jrd.config import parse_config
from jrd.errors import JrdError, SupervisorError
from jrd.ledger import Ledger
from jrd.loop import Timers
from jrd.programs import IDLE_POLL, RESTART_TIMER, Jupyter, Nginx
from jrd.reload_plan import JupyterBaseline
from jrd.supervision import HOLD, START, CrashLoop, Supervision


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSupervisor:
    """Records what jrd asks of supervisord; each start gives the program a new pid."""

    def __init__(self, state: str = states.RUNNING):
        self.calls: list[tuple[str, ...]] = []
        self.state = state
        self.pid = 100
        self.updated: list[str] = []

    def process(self, name: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(state=self.state, running=self.state == states.RUNNING, pid=self.pid)

    def stop(self, name: str, wait: bool = True) -> None:
        self.calls.append(("stop", name))
        self.state = states.STOPPED

    def start(self, name: str, wait: bool = True) -> None:
        self.calls.append(("start", name))
        self.state, self.pid = states.RUNNING, self.pid + 1

    def signal(self, name: str, sig: str) -> None:
        self.calls.append(("signal", name, sig))

    def update(self) -> tuple[list[str], list[str], list[str]]:
        self.calls.append(("update",))
        return [], list(self.updated), []


class FakeKernels:
    def __init__(self, busy: int = 0, fail: bool = False):
        self.busy, self.fail = busy, fail

    def kernel_counts(self, timeout: float = 5.0) -> dict[str, int]:
        if self.fail:
            raise JrdError("Jupyter api/kernels: ConnectionRefusedError")
        return {"running": self.busy, "busy": self.busy}


BASELINE = JupyterBaseline(b"c.A = 1", ())


def jupyter_with(policy: str = "idle", max_wait: float = 3600, busy: int = 0, state: str = states.RUNNING):
    clock = Clock()
    timers = Timers(clock)
    sup = FakeSupervisor(state)
    kernels = FakeKernels(busy)
    config = parse_config(f'[jupyter]\nrestart_policy = "{policy}"\nrestart_max_wait_seconds = {max_wait}\n',
                          source=Path("/etc/jrd/jrd.toml"))
    ledger = Ledger()
    program = Jupyter(sup, ledger, kernels, lambda: config.jupyter, timers.schedule, timers.cancel,  # type: ignore
                      clock)
    return program, sup, kernels, timers, clock, ledger


def restarts(ledger: Ledger) -> dict[tuple[str, str], int]:
    return dict(ledger.snapshot().restarts)


# --- nginx ----------------------------------------------------------------------------------


def test_nginx_restart_is_a_tested_graceful_reload_and_counts() -> None:
    sup, ledger, tested = FakeSupervisor(), Ledger(), []
    Nginx(sup, ledger, lambda: tested.append(1)).restart(states.REASON_REQUESTED)  # type: ignore[arg-type]
    assert tested == [1]
    assert sup.calls == [("signal", "nginx", "HUP")]
    assert restarts(ledger) == {("nginx", "requested"): 1}


def test_unhealthy_or_stopped_nginx_is_stopped_and_started() -> None:
    for state, reason, expected in ((states.RUNNING, states.REASON_UNHEALTHY, [("stop", "nginx"), ("start", "nginx")]),
                                    (states.FATAL, states.REASON_REQUESTED, [("start", "nginx")])):
        sup = FakeSupervisor(state)
        Nginx(sup, Ledger(), lambda: None).restart(reason)  # type: ignore[arg-type]
        assert sup.calls == expected


def test_nginx_that_refuses_its_config_is_not_signalled() -> None:
    sup = FakeSupervisor()

    def refuse() -> None:
        raise JrdError("nginx rejected the rendered config")

    with pytest.raises(JrdError):
        Nginx(sup, Ledger(), refuse).restart(states.REASON_REQUESTED)  # type: ignore[arg-type]
    assert sup.calls == []


# --- the deferred Jupyter restart ------------------------------------------------------------


def test_idle_policy_restarts_at_once_when_no_kernel_is_busy() -> None:
    jupyter, sup, _, timers, _, ledger = jupyter_with()
    jupyter.schedule_restart("its config changed", update=False, baseline=BASELINE)
    assert jupyter.pending is not None and sup.calls == []
    timers.run_due()
    assert sup.calls == [("stop", "jupyter"), ("start", "jupyter")]
    assert jupyter.pending is None and restarts(ledger) == {("jupyter", "reload"): 1}


def test_idle_policy_waits_while_a_kernel_is_busy_then_restarts() -> None:
    jupyter, sup, kernels, timers, clock, _ = jupyter_with(busy=1)
    jupyter.schedule_restart("its config changed", update=False, baseline=BASELINE)
    for _ in range(5):
        timers.run_due()
        clock.now += IDLE_POLL
    assert sup.calls == [] and jupyter.pending is not None and timers.pending(RESTART_TIMER)
    kernels.busy = 0
    timers.run_due()
    assert sup.calls == [("stop", "jupyter"), ("start", "jupyter")]


def test_idle_policy_gives_up_waiting_after_max_wait() -> None:
    jupyter, sup, _, timers, clock, _ = jupyter_with(busy=2, max_wait=30)
    jupyter.schedule_restart("its config changed", update=False, baseline=BASELINE)
    timers.run_due()
    assert sup.calls == []
    clock.now += 30
    timers.run_due()
    assert sup.calls == [("stop", "jupyter"), ("start", "jupyter")]


def test_a_second_change_keeps_the_first_start_time() -> None:
    jupyter, sup, _, timers, clock, _ = jupyter_with(busy=1, max_wait=30)
    jupyter.schedule_restart("first", update=False, baseline=BASELINE)
    clock.now += 20
    jupyter.schedule_restart("second", update=False, baseline=JupyterBaseline(b"other", ()))
    assert jupyter.pending is not None and jupyter.pending.reason == "second"
    assert jupyter.pending.baseline == BASELINE  # what runs did not change
    clock.now += 10  # 30 s after the first change
    timers.run_due()
    assert sup.calls == [("stop", "jupyter"), ("start", "jupyter")]


def test_cancelled_by_a_later_edit() -> None:
    jupyter, sup, _, timers, clock, _ = jupyter_with(busy=1)
    jupyter.schedule_restart("its config changed", update=False, baseline=BASELINE)
    assert jupyter.cancel_pending() is True
    clock.now += 7200
    timers.run_due()
    assert sup.calls == [] and jupyter.pending is None and not timers.pending(RESTART_TIMER)
    assert jupyter.cancel_pending() is False


def test_immediate_policy_does_not_wait_for_busy_kernels() -> None:
    jupyter, sup, _, _, _, _ = jupyter_with(policy="immediate", busy=3)
    jupyter.schedule_restart("its config changed", update=False, baseline=BASELINE)
    assert sup.calls == [("stop", "jupyter"), ("start", "jupyter")] and jupyter.pending is None


def test_a_jupyter_that_cannot_list_kernels_does_not_hold_the_restart() -> None:
    jupyter, sup, kernels, timers, _, _ = jupyter_with()
    kernels.fail = True
    jupyter.schedule_restart("its config changed", update=False, baseline=BASELINE)
    timers.run_due()
    assert sup.calls == [("stop", "jupyter"), ("start", "jupyter")]


def test_a_program_change_is_applied_by_a_supervisord_update() -> None:
    jupyter, sup, _, timers, _, ledger = jupyter_with()
    sup.updated = ["jupyter"]
    jupyter.schedule_restart("its config changed", update=True, baseline=BASELINE)
    timers.run_due()
    assert sup.calls == [("update",)]  # the update itself restarts it
    assert restarts(ledger) == {("jupyter", "reload"): 1}


def test_an_asked_restart_applies_the_pending_one_and_reports_failure() -> None:
    jupyter, sup, _, timers, _, ledger = jupyter_with(busy=1)
    jupyter.schedule_restart("its config changed", update=False, baseline=BASELINE)
    jupyter.restart(states.REASON_REQUESTED)
    assert sup.calls == [("stop", "jupyter"), ("start", "jupyter")] and jupyter.pending is None
    assert restarts(ledger) == {("jupyter", "requested"): 1}

    def broken(name: str, wait: bool = True) -> None:
        raise SupervisorError("supervisord did not answer startProcess")

    jupyter.schedule_restart("again", update=False, baseline=BASELINE)
    sup.start = broken  # type: ignore[method-assign]
    with pytest.raises(SupervisorError):
        jupyter.restart(states.REASON_REQUESTED)


# --- crash loops and FATAL ----------------------------------------------------------------------


def run_policy(policy: CrashLoop, timeline: list[tuple[float, str, int]]) -> list[tuple[float, str]]:
    """Feed (time, supervisord state, crashes since the last look) and collect the actions taken."""
    out = []
    for now, state, crashes in timeline:
        policy.note_crashes("nginx", crashes, now)
        action = policy.step("nginx", state, 0.0, now)
        if action:
            out.append((now, action))
    return out


def test_three_quick_crashes_hold_the_program_then_retry() -> None:
    policy = CrashLoop(restarts=3, window=60, cap=300)
    assert run_policy(policy, [(0, states.RUNNING, 1), (1, states.RUNNING, 1), (2, states.STARTING, 1)]) == [
        (2, HOLD)]
    assert policy.held("nginx", 2.5) == {"restarts": 3, "window_seconds": 60, "next_try_in": 0.5}
    assert run_policy(policy, [(2.5, states.STOPPED, 0), (3, states.STOPPED, 0)]) == [(3, START)]  # held for 1 s
    assert policy.held("nginx", 3) is None


def test_crashes_spread_beyond_the_window_are_no_loop() -> None:
    assert run_policy(CrashLoop(restarts=3, window=60), [(0, states.RUNNING, 1), (40, states.RUNNING, 1),
                                                          (80, states.RUNNING, 1), (130, states.RUNNING, 1)]) == []


def test_backoff_doubles_to_the_cap_and_keeps_trying() -> None:
    policy, now, holds = CrashLoop(restarts=2, window=60, cap=10), 0.0, []
    for _ in range(6):
        policy.note_crashes("nginx", 2, now)
        assert policy.step("nginx", states.RUNNING, 0.0, now) == HOLD
        wait = policy.held("nginx", now)["next_try_in"]  # type: ignore[index]
        holds.append(wait)
        now += wait
        assert policy.step("nginx", states.STOPPED, 0.0, now) == START
    assert holds == [1, 2, 4, 8, 10, 10]


def test_fatal_is_retried_for_ever_with_backoff() -> None:
    policy = CrashLoop(cap=600)
    waits = []
    now = 0.0
    for _ in range(4):
        assert policy.step("jupyter", states.FATAL, 0.0, now) == HOLD
        waits.append(policy.held("jupyter", now)["next_try_in"])  # type: ignore[index]
        now += waits[-1]
        assert policy.step("jupyter", states.FATAL, 0.0, now) == START
    assert waits == [1, 2, 4, 8]


def test_a_program_that_runs_stably_starts_its_backoff_over() -> None:
    policy = CrashLoop(restarts=2, window=60, cap=300, stable=60)
    for now in (0.0, 1.0):
        policy.note_crashes("nginx", 2, now * 100)
        policy.step("nginx", states.RUNNING, 0.0, now * 100)
        policy.step("nginx", states.STOPPED, 0.0, now * 100 + 50)
    assert policy.step("nginx", states.RUNNING, 61.0, 200) is None  # ran a minute: well again
    policy.note_crashes("nginx", 2, 300)
    assert policy.step("nginx", states.RUNNING, 0.0, 300) == HOLD
    assert policy.held("nginx", 300)["next_try_in"] == 1  # type: ignore[index]


def test_supervision_holds_a_fatal_program_then_starts_it(tmp_path: Path) -> None:
    from jrd.layout import Layout
    from jrd.supervisor import ProcessInfo

    class Sup(FakeSupervisor):
        def processes(self) -> dict[str, ProcessInfo]:
            return {n: ProcessInfo(n, states.FATAL if n == "nginx" else states.RUNNING, 0, 0, 0, 1, "")
                    for n in states.PROGRAMS}

    sup, clock = Sup(), Clock()
    watch = Supervision(sup, Layout(tmp_path, tmp_path, tmp_path), Ledger(), relaunch=None,  # type: ignore
                        clock=clock)
    watch.strays.sweep = lambda exclude: []  # type: ignore[method-assign]
    watch.tick()
    assert sup.calls == []  # FATAL: held for 1 s (nothing to stop)
    assert watch.status("nginx", clock.now)["next_try_in"] == 1  # type: ignore[index]
    clock.now += 1
    watch.tick()
    assert sup.calls == [("start", "nginx")]


def test_kills_of_a_program_that_served_are_no_crash_loop_but_quick_deaths_are(tmp_path: Path) -> None:
    from jrd.health import ProbeOutcome
    from jrd.layout import Layout
    from jrd.supervisor import ProcessInfo

    class Sup(FakeSupervisor):
        start_time = 100.0

        def processes(self) -> dict[str, ProcessInfo]:
            return {"nginx": ProcessInfo("nginx", self.state, self.pid, self.start_time, self.start_time, 0, "")}

    sup, ledger, clock = Sup(), Ledger(), Clock()
    watch = Supervision(sup, Layout(tmp_path, tmp_path, tmp_path), ledger, relaunch=None,  # type: ignore
                        clock=clock)
    watch.strays.sweep = lambda exclude: []  # type: ignore[method-assign]
    watch.tick()

    def crash(served: bool) -> None:
        if served:
            ledger.record_probe(ProbeOutcome("nginx", True, 0.01, "", Sup.start_time + 0.5), 0)
        Sup.start_time += 2
        clock.now += 2
        ledger.count_restart("nginx", states.REASON_CRASH)
        watch.tick()

    for _ in range(5):
        crash(served=True)
    assert sup.calls == [] and watch.status("nginx", clock.now) is None
    for _ in range(3):
        crash(served=False)
    assert sup.calls == [("stop", "nginx")]  # held: it died three times without ever answering
    assert watch.status("nginx", clock.now)["restarts"] == 3  # type: ignore[index]


def test_clock_jump_is_the_wall_clock_moving_apart_from_the_monotonic_one() -> None:
    from jrd.loop import ClockJump

    jump = ClockJump(threshold=60)
    assert jump.jumped(1000.0, 5.0) == 0.0  # the first look
    assert jump.jumped(1005.0, 10.0) == 0.0  # both moved alike
    assert jump.jumped(1040.0, 15.0) == 0.0  # 30 s apart: below the threshold (NTP slews, slow ticks)
    assert jump.jumped(1040.0 + 5 + 86400, 20.0) == 86400.0  # a suspended or stopped machine woke up
    assert jump.jumped(1000.0, 25.0) == -86450.0  # and a step back is noticed too

"""The idle stop's policy, config and signal readers, without processes: a fake clock and fake files."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from jrd import idle
from jrd.config import parse_config
from jrd.errors import ConfigError
from jrd.idle import CANCEL, NOTHING, STOP, WARN, IdlePolicy, IdleState, Signal, judge

POLICY = IdlePolicy(after=600, warn=120)


def sig(name: str, at: float | None) -> dict[str, Signal]:
    return {name: Signal(name, "x", at)}


def test_nothing_happens_before_the_warning_time() -> None:
    v = judge(IdleState(1000), {}, 1000 + 479, POLICY)
    assert v.action == NOTHING and v.deadline == 1600 and not v.state.warned


def test_warns_once_when_the_deadline_is_warn_seconds_away() -> None:
    v = judge(IdleState(1000), {}, 1481, POLICY)
    assert v.action == WARN and v.state.warned
    assert judge(v.state, {}, 1500, POLICY).action == NOTHING  # not twice


def test_stops_at_the_deadline() -> None:
    v = judge(IdleState(1000, warned=True), {}, 1600, POLICY)
    assert v.action == STOP and v.deadline == 1600


def test_activity_after_the_warning_cancels_it_and_resets_the_clock() -> None:
    warned = IdleState(1000, warned=True)
    v = judge(warned, sig("terminal", 1550), 1551, POLICY)
    assert v.action == CANCEL and v.cause == "terminal" and v.state == IdleState(1550, False) and v.deadline == 2150


def test_a_busy_signal_keeps_the_machine_up_for_as_long_as_it_is_busy() -> None:
    state = IdleState(0)
    for now in range(0, 5000, 30):
        v = judge(state, sig("kernel_busy", now), now, POLICY)
        assert v.action == NOTHING
        state = v.state
    # Once it ends, a whole idle period passes before the stop.
    assert judge(state, sig("kernel_busy", None), 4980 + 599, POLICY).action == WARN
    assert judge(state, sig("kernel_busy", None), 4980 + 600, POLICY).action == STOP


def test_old_activity_and_a_clock_ahead_do_not_move_the_deadline_wrongly() -> None:
    assert judge(IdleState(1000), sig("files", 10), 1100, POLICY).state.idle_since == 1000
    ahead = judge(IdleState(1000), sig("files", 9999), 1100, POLICY)
    assert ahead.state.idle_since == 1100 and ahead.deadline == 1700


def test_sampling_is_frequent_enough_for_short_timeouts_and_rare_for_long_ones() -> None:
    assert idle.sample_interval(IdlePolicy(3600, 600)) == 30
    assert idle.sample_interval(IdlePolicy(30, 10)) == 1.5
    assert idle.sample_interval(IdlePolicy(6, 1)) == 1


@pytest.mark.parametrize("text,seconds", [("3h", 10800), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("2d", 172800),
                                          ("120", 120), ("0.5h", 1800)])
def test_hold_durations_are_read_like_people_write_them(text: str, seconds: float) -> None:
    assert idle.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "h", "3h5"])
def test_a_bad_hold_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        idle.parse_duration(text)


# --- config -----------------------------------------------------------------------------------


def test_idle_is_off_by_default_and_takes_fractions() -> None:
    assert not parse_config("").idle.enabled
    cfg = parse_config("[idle]\nshutdown_after_minutes = 0.5\nwarn_minutes = 0.25\ncommand = ['/bin/true']\n")
    assert cfg.idle.enabled and cfg.idle.shutdown_after_minutes == 0.5 and cfg.idle.command == ("/bin/true",)
    assert parse_config("").idle.command == ("systemctl", "poweroff")


@pytest.mark.parametrize("body,key", [
    ("shutdown_after_minutes = -1", "shutdown_after_minutes"),
    ("warn_minutes = -2", "warn_minutes"),
    ("command = 'systemctl poweroff'", "command"),
    ("command = []", "command"),
    ("command = ['systemctl', 3]", "command"),
    ("cpu_busy_percent = 0", "cpu_busy_percent"),
    ("gpu_busy_percent = 101", "gpu_busy_percent"),
    ("shutdown_after_minutes = 5\nwarn_minutes = 5", "warn_minutes"),
    ("shutdown_after_minutes = 5\nwarn_minutes = 30", "warn_minutes"),
    ("shutdown_after_minutes = true", "shutdown_after_minutes"),
])
def test_wrong_idle_values_are_config_errors_naming_the_key(body: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[idle\] {key}"):
        parse_config(f"[idle]\n{body}\n")


def test_warn_minutes_longer_than_the_timeout_is_fine_while_the_stop_is_off() -> None:
    assert parse_config("[idle]\nwarn_minutes = 30\n").idle.warn_minutes == 30


# --- signal readers ---------------------------------------------------------------------------


def test_logins_come_from_utmp_with_the_last_input_on_their_tty(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "pts").mkdir(parents=True)
    (dev / "pts" / "3").write_text("")
    os.utime(dev / "pts" / "3", (1234.0, 1234.0))

    def record(kind: int, pid: int, line: bytes, user: bytes) -> bytes:
        return struct.pack(idle.UTMP_FORMAT, kind, pid, line, b"ts/3", user, b"203.0.113.9", 0, 0, 0, 0, 0, b"")

    utmp = tmp_path / "utmp"
    utmp.write_bytes(record(idle.USER_PROCESS, os.getpid(), b"pts/3", b"alice")
                     + record(8, os.getpid(), b"pts/4", b"bob")  # DEAD_PROCESS: logged out
                     + record(idle.USER_PROCESS, 2**22 + 7, b"pts/3", b"ghost"))  # its process is gone
    assert idle.read_logins(utmp, dev) == [("alice", "pts/3", 1234.0)]
    assert idle.read_logins(tmp_path / "missing") == []


def test_newest_mtime_sees_a_save_and_skips_hidden_directories(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "a" / "b" / "n.ipynb").write_text("{}")
    (tmp_path / ".ipynb_checkpoints" / "n-checkpoint.ipynb").write_text("{}")
    for p in (tmp_path / "a" / "b" / "n.ipynb", tmp_path / "a" / "b", tmp_path / "a"):
        os.utime(p, (100, 100))
    assert idle.newest_mtime(tmp_path) == 100
    os.utime(tmp_path / "a" / "b" / "n.ipynb", (500, 500))
    assert idle.newest_mtime(tmp_path) == 500


def test_no_nvidia_smi_is_no_gpu_signal_not_an_error(tmp_path: Path) -> None:
    assert idle.gpu_utilisation(None) is None
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 3\necho 87\n")
    fake.chmod(0o755)
    assert idle.gpu_utilisation(str(fake)) == 87


# --- jrdctl's view --------------------------------------------------------------------------


def test_jrdctl_idle_lists_each_signal_with_its_value_and_last_activity() -> None:
    from jrd.control.cli import format_idle, idle_line

    rec = idle.IdleRecord(True, idle_since=1000, deadline=1600, warned=True, hold_until=None,
                          signals={"cpu": Signal("cpu", "2.0 %", None), "files": Signal("files", "x", 900)},
                          stops={"success": 0, "failure": 1}, last_error="exit status 3")
    shown = format_idle({**rec.as_dict(1500), "shutdown_after_minutes": 10, "command": ["systemctl", "poweroff"]},
                        1500)
    assert "after 10 min idle, runs systemctl poweroff" in shown
    assert "WARNING: idle 8m20s" in shown and "in 1m40s" in shown
    assert "\ncpu " in shown and "2.0 %" in shown and "never" in shown and "\nfiles " in shown
    assert "0 succeeded, 1 failed; last error: exit status 3" in shown
    held = idle.IdleRecord(True, idle_since=1000, deadline=1600, hold_until=5000, hold_reason="training")
    assert "held until" in idle_line(held.as_dict(1500), 1500) and "(training)" in idle_line(held.as_dict(1500), 1500)


def test_jrdctl_hold_takes_a_duration_or_release() -> None:
    from jrd.control.cli import build_parser

    args = build_parser().parse_args(["hold", "3h", "--reason", "training run"])
    assert args.duration == "3h" and args.reason == "training run" and not args.release
    assert build_parser().parse_args(["hold", "--release"]).release

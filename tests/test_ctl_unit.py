"""jrdctl's pure parts and the control server with a fake daemon: no supervisord, nginx or Jupyter."""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from jrd import control, ctl, logs
from jrd.errors import JrdError, UsageError

JRDCTL = str(Path(sys.executable).parent / "jrdctl")


class FakeDaemon:
    """Answers submitted commands at once from a table; records what it was asked."""

    def __init__(self, answers: dict[str, Any]):
        self.answers = answers
        self.asked: list[tuple[str, str, dict[str, Any]]] = []

    def submit(self, name: str, source: str, **args: Any) -> Future[Any]:
        self.asked.append((name, source, args))
        fut: Future[Any] = Future()
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            fut.set_exception(answer)
        elif answer is not None:
            fut.set_result(answer)
        return fut  # no answer: never resolves, as a wedged main loop would


def served(tmp_path: Path, daemon: FakeDaemon, **kw: Any) -> control.ControlServer:
    server = control.ControlServer(tmp_path / "control.sock", **kw)
    server.start(daemon)  # type: ignore[arg-type]
    return server


def raw(path: Path, payload: bytes, shut: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
        return bytes(out)


# --- protocol ------------------------------------------------------------------------------


def test_request_goes_through_submit_with_source_control(tmp_path: Path) -> None:
    daemon = FakeDaemon({"status": {"programs": {}}})
    server = served(tmp_path, daemon)
    try:
        assert control.request(server.path, "status") == {"programs": {}}
        assert daemon.asked == [("status", "control", {})]
    finally:
        server.stop(daemon)  # type: ignore[arg-type]
    assert not server.path.exists()


def test_socket_is_0600_and_never_tcp(tmp_path: Path) -> None:
    daemon = FakeDaemon({})
    server = served(tmp_path, daemon)
    try:
        mode = os.stat(server.path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert server._sock is not None and server._sock.family == socket.AF_UNIX
    finally:
        server.stop(daemon)  # type: ignore[arg-type]


def test_group_socket_is_0660_and_chgrped(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getegid()).gr_name
    daemon = FakeDaemon({})
    server = served(tmp_path, daemon, group=group)
    try:
        st = os.stat(server.path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getegid()
    finally:
        server.stop(daemon)  # type: ignore[arg-type]


def test_unknown_group_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(JrdError, match=r"\[control\] group = 'no-such-group-jrd' is not a group"):
        control.bind_private_socket(tmp_path / "c.sock", "no-such-group-jrd")


@pytest.mark.parametrize("payload, expect", [
    (b"\x00\xff\xfegarbage\n", "not valid JSON"),
    (b"[1, 2, 3]\n", "a request is a JSON object"),
    (b'{"command": "status", "args": []}\n', "args must be a JSON object"),
    (b'{"command": "shutdown"}\n', "unknown request 'shutdown'"),
    (b'{"command": "restart", "args": {"program": "apache"}}\n', "valid names are: jupyter, nginx, all"),
    (b'{"command": "restart", "args": {"program": "nginx", "rm": "-rf"}}\n', "takes no argument 'rm'"),
    (b'{"command": "renew_cert", "args": {"force": "yes"}}\n', "force must be true or false"),
    (b'{"command": "logs", "args": {"program": "nginx", "lines": -1}}\n', "lines must be a number"),
    (b"[" * 50000 + b"\n", "not valid JSON"),
    (b'{"command": "sta', "not valid JSON"),  # half-closed mid-request
    (b"x" * (control.MAX_REQUEST_BYTES + 10), "larger than"),
])
def test_malformed_requests_get_an_error_and_the_next_request_works(tmp_path: Path, payload: bytes, expect: str) -> None:
    daemon = FakeDaemon({"status": {"ok": 1}})
    server = served(tmp_path, daemon)
    try:
        answer = json.loads(raw(server.path, payload))
        assert answer["ok"] is False and expect in answer["error"]
        assert not [a for a in daemon.asked if a[0] != "status"]
        assert control.request(server.path, "status") == {"ok": 1}
    finally:
        server.stop(daemon)  # type: ignore[arg-type]


def test_huge_payload_is_cut_off_not_buffered(tmp_path: Path) -> None:
    daemon = FakeDaemon({"status": {"ok": 1}})
    server = served(tmp_path, daemon)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(server.path))
            sent = 0
            try:
                while sent < 50 * 1024 * 1024:
                    s.sendall(b"y" * 65536)
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert sent < 50 * 1024 * 1024, "the server kept reading a 50 MB request"
        assert control.request(server.path, "status") == {"ok": 1}
    finally:
        server.stop(daemon)  # type: ignore[arg-type]


def test_silent_and_excess_connections_do_not_block_others(tmp_path: Path) -> None:
    daemon = FakeDaemon({"status": {"ok": 1}})
    server = served(tmp_path, daemon, read_timeout=0.5, max_connections=3)
    idle = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(server.path))
            idle.append(s)
        busy = json.loads(raw(server.path, b'{"command": "status"}\n'))
        assert busy["ok"] is False and "busy" in busy["error"]
        for s in idle:  # the read timeout closes them
            s.settimeout(5)
            assert s.recv(10) == b""
        assert control.request(server.path, "status") == {"ok": 1}
    finally:
        for s in idle:
            s.close()
        server.stop(daemon)  # type: ignore[arg-type]


def test_daemon_errors_become_one_line_and_exit_codes(tmp_path: Path) -> None:
    daemon = FakeDaemon({"reload": JrdError("/etc/jrd/jrd.toml: [nginx] port = 0 is invalid"), "stop": UsageError("x")})
    server = served(tmp_path, daemon)
    try:
        with pytest.raises(control.ControlError) as err:
            control.request(server.path, "reload")
        assert str(err.value).startswith("/etc/jrd/jrd.toml") and err.value.exit_code == 1
        with pytest.raises(control.ControlError) as err:
            control.request(server.path, "stop", program="nginx")
        assert err.value.exit_code == 2
    finally:
        server.stop(daemon)  # type: ignore[arg-type]


def test_a_wedged_main_loop_gives_a_timeout_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "command_timeout", lambda command, args: 0.2)
    daemon = FakeDaemon({})  # never answers
    server = served(tmp_path, daemon)
    try:
        with pytest.raises(control.ControlError, match="did not finish status within"):
            control.request(server.path, "status", timeout=10)
    finally:
        server.stop(daemon)  # type: ignore[arg-type]


def test_missing_and_stale_socket_say_jrd_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(control.DaemonNotRunning, match=r"no socket at .*systemctl start jrd"):
        control.request(tmp_path / "none.sock", "status")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # bound, never listening: as a crashed daemon leaves it
    with pytest.raises(control.DaemonNotRunning, match="nothing answers"):
        control.request(stale, "status")


# --- logs --------------------------------------------------------------------------------------


def test_read_log_tail_follow_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "jupyter.log"
    assert logs.read_log(log, None, 5)["text"] == ""
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    first = logs.read_log(log, None, 3)
    assert first["text"] == "line 97\nline 98\nline 99\n"
    with open(log, "a") as f:
        f.write("line 100\n")
    nxt = logs.read_log(log, first["offset"], 0)
    assert nxt["text"] == "line 100\n"
    assert logs.read_log(log, nxt["offset"], 0)["text"] == ""
    log.write_text("rotated\n")  # shorter than the offset: a new file
    assert logs.read_log(log, nxt["offset"], 0)["text"] == "rotated\n"


# --- formatting and exit codes -------------------------------------------------------------


STATUS = {
    "version": "0.1.0", "pid": 10, "url": "https://jrd.test:8888/lab", "supervisor": True,
    "programs": {"jupyter": {"state": "RUNNING", "pid": 11, "uptime_seconds": 3725, "restarts": 2},
                 "nginx": {"state": "RUNNING", "pid": 12, "uptime_seconds": 30, "restarts": 0}},
    "certificates": {"leaf": {"days_left": 59.5, "not_after": 1.9e9}, "ca": {"error": "cannot read"}},
    "reload": {"last_ok": False, "last_at": 1000.0, "error": "port 0 is invalid"},
    "pending": ["restart jupyter (its config changed) when no kernel is busy"],
}


def test_status_exit_codes() -> None:
    assert ctl.status_exit_code(STATUS) == 0
    stopped = json.loads(json.dumps(STATUS))
    stopped["programs"]["nginx"]["state"] = "STOPPED"
    assert ctl.status_exit_code(stopped) == 3
    assert ctl.status_exit_code({**STATUS, "supervisor": False, "programs": {"error": "x"}}) == 3


def test_status_table_says_everything_asked_for() -> None:
    text = ctl.format_status(STATUS, now=1000.0 + 125)
    assert "jupyter  RUNNING  11   1h02m   2" in text
    assert "59.5 days left" in text and "PROBLEM: cannot read" in text
    assert "REFUSED" in text and "2m05s ago" in text and "port 0 is invalid" in text
    assert "restart jupyter (its config changed)" in text


def test_durations() -> None:
    assert [ctl.duration(s) for s in (5, 65, 3725, 90000)] == ["5s", "1m05s", "1h02m", "1d01h"]


# --- the command line without a daemon ------------------------------------------------------


def run_ctl(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JRDCTL, *args], capture_output=True, text=True, timeout=30, **kw)


def test_every_verb_has_help_with_examples() -> None:
    for verb in (["status"], ["restart"], ["start"], ["stop"], ["reload"], ["logs"], ["cert"], ["cert", "show"],
                 ["cert", "renew"], ["cert", "ca"], ["passwd"], ["version"], ["completion"]):
        res = run_ctl(*verb, "--help")
        assert res.returncode == 0 and "example" in res.stdout, verb


def test_missing_daemon_exit_code_and_advice(tmp_path: Path) -> None:
    res = run_ctl("--socket", str(tmp_path / "x.sock"), "status")
    assert res.returncode == 7
    assert res.stderr.strip() == f"jrdctl: jrd is not running (no socket at {tmp_path / 'x.sock'}); start it with `systemctl start jrd`"
    res = run_ctl("status", "--json", "--socket", str(tmp_path / "x.sock"))
    assert res.returncode == 7 and json.loads(res.stdout)["exit_code"] == 7
    assert "Traceback" not in res.stderr


def test_version_works_without_a_daemon(tmp_path: Path) -> None:
    res = run_ctl("version", "--socket", str(tmp_path / "x.sock"))
    assert res.returncode == 0 and res.stdout.startswith("jrdctl ") and "not running" in res.stdout
    data = json.loads(run_ctl("version", "--json", "--socket", str(tmp_path / "x.sock")).stdout)
    assert data["daemon"]["running"] is False


def test_unknown_program_lists_valid_ones(tmp_path: Path) -> None:
    res = run_ctl("--socket", str(tmp_path / "x.sock"), "restart", "jupiter")
    assert res.returncode == 2
    assert "unknown program 'jupiter'; valid names are: jupyter, nginx, all" in res.stderr


def test_completion_scripts_parse() -> None:
    for shell in ("bash", "zsh"):
        script = run_ctl("completion", shell).stdout
        assert "complete -F _jrdctl jrdctl" in script
    bash = subprocess.run(["bash", "-c", run_ctl("completion", "bash").stdout +
                           '\nCOMP_WORDS=(jrdctl restart j); COMP_CWORD=2; _jrdctl; echo "${COMPREPLY[@]}"'],
                          capture_output=True, text=True, timeout=30)
    assert bash.stdout.strip() == "jupyter"


def test_socket_is_found_even_while_the_config_on_disk_is_invalid(tmp_path: Path) -> None:
    import argparse

    conf = tmp_path / "jrd.toml"
    conf.write_text(f'[paths]\nruntime_dir = "{tmp_path}/run"\n[nginx]\nport = 0\n')
    args = argparse.Namespace(config=conf)
    assert ctl.find_socket(args) == tmp_path / "run" / "control.sock"
    conf.write_text(f'[paths]\nruntime_dir = "{tmp_path}/run2"\n[nginx]\n[nginx]\n')  # not even TOML
    assert ctl.find_socket(args) == tmp_path / "run2" / "control.sock"
    assert ctl.find_socket(argparse.Namespace(config=conf, socket=tmp_path / "s")) == tmp_path / "s"

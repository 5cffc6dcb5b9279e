"""The control package without a daemon: the command table, the server with a fake main loop, jrdctl's pure parts."""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from jrd import logs, states
from jrd.control import cli, client, commands, protocol
from jrd.control.commands import COMMANDS, Arg, CommandSpec
from jrd.control.server import ControlServer, bind_private_socket
from jrd.errors import ControlError, DaemonNotRunning, JrdError, UsageError
from jrd.extension import Context
from jrd.loop import CommandBus

JRDCTL = str(Path(sys.executable).parent / "jrdctl")
README = Path(__file__).resolve().parent.parent / "README.md"


class FakeLoop:
    """A main loop that answers submitted commands at once from a table; records what it was asked."""

    def __init__(self, answers: dict[str, Any], serving: dict[str, Any] | None = None):
        self.answers = answers
        self.serving = serving or {"serving": True}
        self.asked: list[tuple[str, str, dict[str, Any]]] = []
        self.waited: list[float] = []

    def submit(self, name: str, source: str, **args: Any) -> Future[Any]:
        self.asked.append((name, source, args))
        fut: Future[Any] = Future()
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            fut.set_exception(answer)
        elif answer is not None:
            fut.set_result(answer)
        return fut  # no answer: never resolves, as a wedged main loop would

    def wait_serving(self, deadline: float) -> dict[str, Any]:
        self.waited.append(deadline)
        return self.serving

    def context(self) -> Context:
        """The extension context the daemon gives; the server uses only `submit` and `wait_serving`."""
        unused: Any = None
        return Context(layout=unused, supervisor=unused, ledger=unused, jupyter=unused, submit=self.submit,
                       add_handler=unused, schedule=unused, cancel=unused, current_config=unused,
                       wait_serving=self.wait_serving, certificate_status=unused)


def served(tmp_path: Path, loop: FakeLoop, **kw: Any) -> ControlServer:
    server = ControlServer(tmp_path / "control.sock", **kw)
    server.start(loop.context())
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
    loop = FakeLoop({"status": {"programs": {}}})
    server = served(tmp_path, loop)
    try:
        assert client.request(server.path, "status") == {"programs": {}}
        assert loop.asked == [("status", "control", {})]
    finally:
        server.stop()
    assert not server.path.exists()


def test_socket_is_0600_and_never_tcp(tmp_path: Path) -> None:
    loop = FakeLoop({})
    server = served(tmp_path, loop)
    try:
        mode = os.stat(server.path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert server._sock is not None and server._sock.family == socket.AF_UNIX
    finally:
        server.stop()


def test_group_socket_is_0660_and_chgrped(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getegid()).gr_name
    loop = FakeLoop({})
    server = served(tmp_path, loop, group=group)
    try:
        st = os.stat(server.path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getegid()
    finally:
        server.stop()


def test_unknown_group_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(JrdError, match=r"\[control\] group = 'no-such-group-jrd' is not a group"):
        bind_private_socket(tmp_path / "c.sock", "no-such-group-jrd")


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
    (b"x" * (protocol.MAX_REQUEST_BYTES + 10), "larger than"),
])
def test_malformed_requests_get_an_error_and_the_next_request_works(tmp_path: Path, payload: bytes,
                                                                    expect: str) -> None:
    loop = FakeLoop({"status": {"ok": 1}})
    server = served(tmp_path, loop)
    try:
        answer = json.loads(raw(server.path, payload))
        assert answer["ok"] is False and expect in answer["error"]
        assert not [a for a in loop.asked if a[0] != "status"]
        assert client.request(server.path, "status") == {"ok": 1}
    finally:
        server.stop()


def test_huge_payload_is_cut_off_not_buffered(tmp_path: Path) -> None:
    loop = FakeLoop({"status": {"ok": 1}})
    server = served(tmp_path, loop)
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
        assert client.request(server.path, "status") == {"ok": 1}
    finally:
        server.stop()


def test_silent_and_excess_connections_do_not_block_others(tmp_path: Path) -> None:
    loop = FakeLoop({"status": {"ok": 1}})
    server = served(tmp_path, loop, read_timeout=0.5, max_connections=3)
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
        assert client.request(server.path, "status") == {"ok": 1}
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_daemon_errors_become_one_line_and_exit_codes(tmp_path: Path) -> None:
    loop = FakeLoop({"reload": JrdError("/etc/jrd/jrd.toml: [nginx] port = 0 is invalid"), "stop": UsageError("x")})
    server = served(tmp_path, loop)
    try:
        with pytest.raises(ControlError) as err:
            client.request(server.path, "reload")
        assert str(err.value).startswith("/etc/jrd/jrd.toml") and err.value.exit_code == 1
        with pytest.raises(ControlError) as err:
            client.request(server.path, "stop", {"program": "nginx"})
        assert err.value.exit_code == 2
    finally:
        server.stop()


def test_a_wedged_main_loop_gives_a_timeout_answer(tmp_path: Path) -> None:
    quick = {**COMMANDS, "status": dataclasses.replace(COMMANDS["status"], timeout=0.2)}
    loop = FakeLoop({})  # never answers
    server = served(tmp_path, loop, commands=quick)
    try:
        with pytest.raises(ControlError, match="did not finish status within"):
            client.request(server.path, "status", timeout=10)
    finally:
        server.stop()


def test_missing_and_stale_socket_say_jrd_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match=r"no socket at .*systemctl start jrd"):
        client.request(tmp_path / "none.sock", "status")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # bound, never listening: as a crashed daemon leaves it
    with pytest.raises(DaemonNotRunning, match="nothing answers"):
        client.request(stale, "status")


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
    assert cli.status_exit_code(STATUS) == 0
    stopped = json.loads(json.dumps(STATUS))
    stopped["programs"]["nginx"]["state"] = "STOPPED"
    assert cli.status_exit_code(stopped) == 3
    assert cli.status_exit_code({**STATUS, "supervisor": False, "programs": {"error": "x"}}) == 3


def test_status_table_says_everything_asked_for() -> None:
    text = cli.format_status(STATUS, now=1000.0 + 125)
    assert "jupyter  RUNNING  11   1h02m   2" in text
    assert "59.5 days left" in text and "PROBLEM: cannot read" in text
    assert "REFUSED" in text and "2m05s ago" in text and "port 0 is invalid" in text
    assert "restart jupyter (its config changed)" in text


def test_durations() -> None:
    assert [cli.duration(s) for s in (5, 65, 3725, 90000)] == ["5s", "1m05s", "1h02m", "1d01h"]


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
    assert res.stderr.strip() == (f"jrdctl: jrd is not running (no socket at {tmp_path / 'x.sock'}); "
                                  "start it with `systemctl start jrd`")
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
    conf = tmp_path / "jrd.toml"
    conf.write_text(f'[paths]\nruntime_dir = "{tmp_path}/run"\n[nginx]\nport = 0\n')
    assert client.find_socket(None, conf) == tmp_path / "run" / "control.sock"
    conf.write_text(f'[paths]\nruntime_dir = "{tmp_path}/run2"\n[nginx]\n[nginx]\n')  # not even TOML
    assert client.find_socket(None, conf) == tmp_path / "run2" / "control.sock"
    assert client.find_socket(tmp_path / "s", conf) == tmp_path / "s"


# --- one command table -----------------------------------------------------------------------


class FakeTarget:
    """What the daemon implements for the control commands; records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _acted(self, key: str, program: str) -> dict[str, Any]:
        names = list(states.PROGRAMS) if program == "all" else [program]
        return {key: names, "programs": {n: {"pid_before": 1, "pid": 2, "state": "RUNNING", "restarts": 1}
                                         for n in names}}

    def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return {"programs": {}}

    def restart(self, program: str, reason: str) -> dict[str, Any]:
        self.calls.append(("restart", program, reason))
        return self._acted("restarted", program)

    def start(self, program: str) -> dict[str, Any]:
        self.calls.append(("start", program))
        return self._acted("started", program)

    def stop(self, program: str) -> dict[str, Any]:
        self.calls.append(("stop", program))
        return self._acted("stopped", program)

    def reload(self, source: str) -> dict[str, Any]:
        self.calls.append(("reload", source))
        return {"changed": [], "actions": []}

    def renew_cert(self, force: bool) -> dict[str, Any]:
        self.calls.append(("renew_cert", force))
        return {"renewed": force}

    def passwd(self, hashed: str, source: str) -> dict[str, Any]:
        self.calls.append(("passwd", hashed, source))
        return {"changed": [], "actions": []}

    def kernels(self) -> dict[str, Any]:
        self.calls.append(("kernels",))
        return {"running": 0, "busy": 0}

    def logs(self, program: str, offset: int | None, lines: int) -> dict[str, Any]:
        self.calls.append(("logs", program, offset, lines))
        return {"text": "", "offset": 0}


class BusLoop(FakeLoop):
    """A real command bus with `handlers(target)` registered, run by a thread as the main loop would."""

    def __init__(self, target: FakeTarget, table: Any = COMMANDS):
        super().__init__({})
        self.bus = CommandBus()
        for name, handler in commands.handlers(target, table).items():
            self.bus.add_handler(name, handler)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def submit(self, name: str, source: str, **args: Any) -> Future[Any]:
        self.asked.append((name, source, args))
        return self.bus.submit(name, source, **args)

    def _run(self) -> None:
        while not self._stop.is_set():
            cmd = self.bus.next(0.05)
            if cmd is not None:
                self.bus.execute(cmd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_every_command_reaches_its_target_method_through_the_bus(tmp_path: Path) -> None:
    target = FakeTarget()
    loop = BusLoop(target)
    server = served(tmp_path, loop)
    try:
        client.request(server.path, "status")
        client.request(server.path, "restart", {"program": "jupyter"})
        client.request(server.path, "restart")
        client.request(server.path, "start", {"program": "nginx"})
        client.request(server.path, "stop", {"program": "all"})
        client.request(server.path, "reload")
        client.request(server.path, "renew_cert", {"force": True})
        client.request(server.path, "passwd", {"hashed": "argon2:x"})
        client.request(server.path, "kernels")
        client.request(server.path, "logs", {"program": "nginx", "lines": 5})
        assert target.calls == [
            ("status",), ("restart", "jupyter", "requested"), ("restart", "all", "requested"), ("start", "nginx"),
            ("stop", "all"), ("reload", "control"), ("renew_cert", True), ("passwd", "argon2:x", "control"),
            ("kernels",), ("logs", "nginx", None, 5),
        ]
        # Internal callers (health) use the same handler, with a reason the socket does not accept.
        loop.bus.submit("restart", "health", program="nginx", reason=states.REASON_UNHEALTHY).result(5)
        assert target.calls[-1] == ("restart", "nginx", "unhealthy")
        with pytest.raises(ControlError, match="restart takes no argument 'reason'") as err:
            client.request(server.path, "restart", {"program": "nginx", "reason": "unhealthy"})
        assert err.value.exit_code == 2
    finally:
        server.stop()
        loop.close()


def test_waiting_for_serving_is_asked_of_the_context_only_when_the_command_and_client_want_it(tmp_path: Path) -> None:
    loop = FakeLoop({"restart": {"restarted": ["nginx"]}, "stop": {"stopped": ["nginx"]}},
                    serving={"serving": False, "note": "not waiting for Jupyter through nginx: nginx is stopped"})
    server = served(tmp_path, loop)
    try:
        answer = client.request(server.path, "restart", {"program": "nginx", "wait": True, "timeout": 30})
        assert answer["serving"] is False and answer["note"].startswith("not waiting") and answer["seconds"] >= 0
        assert len(loop.waited) == 1
        assert loop.asked[-1] == ("restart", "control", {"program": "nginx"})  # wait and timeout stay in the server
        assert client.request(server.path, "restart", {"program": "nginx"}) == {"restarted": ["nginx"]}
        assert len(loop.waited) == 1
        with pytest.raises(ControlError, match="stop takes no argument 'wait'"):
            client.request(server.path, "stop", {"program": "nginx", "wait": True})
        with pytest.raises(ControlError, match="timeout must be a number between 1 and 3600"):
            client.request(server.path, "start", {"program": "nginx", "wait": True, "timeout": 0})
        with pytest.raises(ControlError, match="passwd needs a password hash"):
            client.request(server.path, "passwd")
    finally:
        server.stop()


def test_a_new_spec_shows_up_in_the_server_the_handlers_the_parser_and_the_completion(tmp_path: Path) -> None:
    ping = CommandSpec("ping", lambda t, a: {"pong": a["program"], "source": a["source"]},
                       args=(commands.program(choices=("jupyter",)),
                             Arg("count", int, bounds=(1, 9), default=1, flags=("--count",))),
                       verb="ping", help="answer", examples=("jrdctl ping jupyter",))
    table = {**COMMANDS, "ping": ping}

    assert "ping" in commands.handlers(FakeTarget(), table)
    parser = cli.build_parser(table)
    args = parser.parse_args(["ping", "jupyter", "--count", "3"])
    assert args.spec is ping and cli.request_args(ping, args) == {"program": "jupyter", "count": 3}
    script = cli.completion_script("bash", parser)
    assert "ping) COMPREPLY=($(compgen -W \"jupyter\"" in script and "--count" in script
    assert " ping " in script.split("compgen -W \"status")[1].split("\"")[0] + " "

    loop = BusLoop(FakeTarget(), table)
    server = served(tmp_path, loop, commands=table)
    try:
        assert client.request(server.path, "ping", {"program": "jupyter", "count": 2}) == {"pong": "jupyter",
                                                                                   "source": "control"}
        with pytest.raises(ControlError, match="unknown program 'nginx'; valid names are: jupyter"):
            client.request(server.path, "ping", {"program": "nginx"})
    finally:
        server.stop()
        loop.close()
    plain = ControlServer(tmp_path / "plain.sock")
    assert "unknown request 'ping'" in plain.answer(b'{"command": "ping", "args": {"program": "jupyter"}}')["error"]


def test_program_names_on_the_command_line_come_from_the_table() -> None:
    parser = cli.build_parser()
    verbs = cli._subcommands(parser)
    for name in ("restart", "start", "stop", "logs"):
        (positional,) = [a for a in verbs[name]._actions if a.dest == "program"]
        assert tuple(positional.choices) == COMMANDS[name].args[0].choices
    assert COMMANDS["restart"].args[0].choices == (*states.PROGRAMS, "all")
    assert COMMANDS["logs"].args[0].choices == states.PROGRAMS
    assert parser.parse_args(["restart"]).program == "all"
    with pytest.raises(SystemExit):
        parser.parse_args(["logs", "all"])
    words = cli.completion_script("bash")
    assert 'restart|start|stop) COMPREPLY=($(compgen -W "jupyter nginx all"' in words
    assert 'logs) COMPREPLY=($(compgen -W "jupyter nginx"' in words


def test_restart_start_stop_make_one_request_and_print_pids_from_its_answer(capsys: pytest.CaptureFixture[str]) -> None:
    class OneClient:
        def __init__(self) -> None:
            self.calls: list[tuple[str, dict[str, Any]]] = []

        def call(self, command: str, **args: Any) -> Any:
            self.calls.append((command, args))
            return {"restarted": ["jupyter"], "serving": True, "seconds": 2.25,
                    "programs": {"jupyter": {"pid_before": 11, "pid": 21, "state": "RUNNING", "restarts": 3}}}

    fake = OneClient()
    args = cli.build_parser().parse_args(["restart", "jupyter", "--yes"])
    args.json = False
    assert cli.cmd_act(fake, args) == 0  # type: ignore[arg-type]
    assert fake.calls == [("restart", {"program": "jupyter", "wait": True, "timeout": 120.0})]
    assert capsys.readouterr().out == ("jupyter restarted: pid 11 -> 21, restarts 3\n"
                                       "Jupyter answers through nginx again after 2.2 s\n")


def test_act_lines() -> None:
    graceful = cli.format_act({"verb": "restart", "programs": {
        "nginx": {"pid_before": 12, "pid": 12, "state": "RUNNING", "restarts": 4}}})
    assert graceful == "nginx reloaded gracefully (HUP to master pid 12; new workers took over), restarts 4"
    stopped = cli.format_act({"verb": "stop", "programs": {"nginx": {"pid_before": 12, "pid": None}}})
    assert stopped == "nginx stopped (was pid 12)"
    started = cli.format_act({"verb": "start", "note": "not waiting for Jupyter through nginx: nginx is stopped",
                              "programs": {"jupyter": {"pid_before": None, "pid": 30}}})
    assert started == "jupyter started: pid - -> 30\nnot waiting for Jupyter through nginx: nginx is stopped"


def test_not_serving_is_the_headline_and_exit_code_3() -> None:
    serving = {**STATUS, "serving": {"ok": True, "checked_at": 1000.0, "error": ""}}
    assert cli.status_exit_code(serving) == 0
    assert cli.format_status(serving, 1000.0).startswith("jrd 0.1.0 (pid 10) serving https://jrd.test:8888/lab\n")
    down = {**STATUS, "serving": {"ok": False, "checked_at": 1000.0, "error": "connection refused"}}
    assert cli.status_exit_code(down) == 3
    assert cli.format_status(down, 1000.0).splitlines()[0] == (
        "jrd 0.1.0 (pid 10) NOT serving https://jrd.test:8888/lab: connection refused")


def test_crash_loop_is_the_state_and_one_line_below_the_table() -> None:
    st = json.loads(json.dumps(STATUS))
    st["programs"]["nginx"].update(state="BACKOFF", pid=None, crash_loop={
        "restarts": 14, "window_seconds": 120.0, "next_try_in": 40.0,
        "last_error": "bind() to 0.0.0.0:8888 failed (98: Address already in use)"})
    text = cli.format_status(st, 1000.0)
    assert "nginx    crash loop  -    -       0" in text
    assert ("nginx: crash loop, 14 restarts in 2 min, next try in 40 s, "
            "last error: bind() to 0.0.0.0:8888 failed (98: Address already in use)") in text.splitlines()
    assert cli.status_exit_code(st) == 3
    assert cli.crash_loop_line("jupyter", {"restarts": 3, "window_seconds": 45, "next_try_in": None,
                                           "last_error": ""}) == "jupyter: crash loop, 3 restarts in 45 s"


# --- one exit-code table -------------------------------------------------------------------


def test_exit_codes_are_described_once_for_help_readme_and_errors() -> None:
    assert protocol.exit_codes_markdown() in README.read_text(), (
        "the README's exit-code table differs; paste the output of "
        "`python -c 'from jrd.control import protocol; print(protocol.exit_codes_markdown())'`")
    assert protocol.exit_codes_help() in run_ctl("--help").stdout
    assert protocol.exit_codes_help() in run_ctl("status", "--help").stdout
    assert DaemonNotRunning.exit_code == protocol.EXIT_DAEMON_DOWN
    from jrd.errors import ControlPermissionDenied
    assert ControlPermissionDenied.exit_code == protocol.EXIT_NO_PERMISSION
    assert UsageError.exit_code == protocol.EXIT_USAGE


def test_bad_numbers_on_the_command_line_are_refused_with_the_servers_words(tmp_path: Path) -> None:
    res = run_ctl("--socket", str(tmp_path / "x.sock"), "logs", "nginx", "-n", "-1")
    assert res.returncode == 2 and "lines must be a number between 0 and 100000" in res.stderr

"""The idle stop on a real stack: the command is a script that records when it ran and whether Jupyter was down."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import requests
import websocket

from conftest import Jrd, open_kernel_ws, parse_exposition, wait_for

# Idle for 12 s stops the machine; the warning goes out 6 s before (signals are read every second).
AFTER_MINUTES = 0.2
WARN_MINUTES = 0.1
AFTER = AFTER_MINUTES * 60

RECORDER = """\
import socket, sys, time
up = True
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2).close()
except OSError:
    up = False
with open(sys.argv[1], "a") as f:
    f.write(f"{time.time()} {'jupyter-up' if up else 'jupyter-down'}\\n")
sys.exit(int(sys.argv[3]))
"""


def idle_jrd(make_jrd, status: int = 0, after: float = AFTER_MINUTES) -> tuple[Jrd, Path]:
    """A jrd whose [idle] command records each run in a file (and exits with `status`)."""
    j = make_jrd()
    script = j.base / "recorder.py"
    script.write_text(RECORDER)
    marker = j.base / "stopped"
    command = json.dumps([sys.executable, str(script), str(marker), str(j.jupyter_port), str(status)])
    j.write_config(f"[idle]\nshutdown_after_minutes = {after}\nwarn_minutes = {WARN_MINUTES}\ncommand = {command}\n")
    return j, marker


def runs(marker: Path) -> list[tuple[float, str]]:
    if not marker.exists():
        return []
    return [(float(t), what) for t, what in (line.split() for line in marker.read_text().splitlines())]


def idle_status(j: Jrd) -> dict:
    res = j.jrdctl("idle", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def start_kernel(j: Jrd, s: requests.Session) -> websocket.WebSocket:
    kernel = s.post(j.url("/api/kernels"), json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text
    return open_kernel_ws(j, s, kernel.json()["id"])


def send_code(ws: websocket.WebSocket, code: str) -> None:
    """Send an execute_request without waiting for it to finish."""
    ws.send(json.dumps({
        "header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))


def test_an_idle_machine_is_warned_then_stopped_with_jupyter_down_first(make_jrd) -> None:
    """Nothing running: the warning shows in the log, status and metrics; then Jupyter stops and the command runs."""
    j, marker = idle_jrd(make_jrd)
    j.start()
    wait_for(lambda: "will stop in" in j.read_output(), AFTER + 30, "the idle warning in jrd's log")
    status = json.loads(j.jrdctl("status", "--json").stdout)
    assert status["idle"]["warned"] is True and status["idle"]["stop_at"] > time.time() - 5
    deadline = status["idle"]["stop_at"]
    assert "WARNING: idle" in j.jrdctl("status").stdout
    shown = j.jrdctl("idle").stdout
    for name in ("kernel_busy", "kernel", "cpu", "gpu", "files", "terminal", "login", "hold"):
        assert f"\n{name} " in shown, shown
    metrics = parse_exposition(requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=10).text)
    assert metrics["jrd_idle_stop_warning"] == 1 and metrics["jrd_idle_stop_timestamp_seconds"] == deadline
    assert metrics["jrd_idle_seconds"] > 0
    wait_for(lambda: runs(marker), 60 + AFTER, "the stop command to run")
    (ran_at, jupyter), = runs(marker)
    assert jupyter == "jupyter-down", "the command ran before Jupyter was stopped"
    assert ran_at - deadline < 60, f"the command ran {ran_at - deadline:.1f} s after the deadline"
    # The command's exit reaches jrd's loop a moment after the recorder wrote its line.
    wait_for(lambda: "the stop command succeeded" in j.read_output(), 30, "jrd to log the command's success")
    metrics = parse_exposition(requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=10).text)
    assert metrics['jrd_idle_stops_total{result="success"}'] == 1


def test_a_silent_sleeping_cell_and_a_silent_cpu_loop_keep_the_machine_up_until_they_end(make_jrd) -> None:
    """A cell in time.sleep (busy kernel, no output), then a CPU loop outside any cell: no stop while either runs."""
    j, marker = idle_jrd(make_jrd)
    j.start()
    s = j.login()
    ws = start_kernel(j, s)
    # 1: a busy kernel that prints nothing, for twice the idle time.
    started = time.monotonic()
    send_code(ws, f"import time; time.sleep({2 * AFTER})")
    while time.monotonic() - started < 2 * AFTER - 2:
        assert not runs(marker), "stopped while a cell was running"
        time.sleep(1)
    # 2: a process under Jupyter that burns CPU for twice the idle time; the cell that starts it ends at once.
    send_code(ws, "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                  f"'import time\\nt = time.time()\\nwhile time.time() - t < {2 * AFTER}: pass'])")
    started = time.monotonic()
    while time.monotonic() - started < 2 * AFTER - 2:
        assert not runs(marker), f"stopped while a CPU loop was running: {idle_status(j)['signals']}"
        time.sleep(1)
    assert float(idle_status(j)["signals"]["cpu"]["value"].split()[0]) > 50
    ws.close()
    ended = time.time()
    wait_for(lambda: runs(marker), AFTER + 60, "the stop once the loop ended")
    assert runs(marker)[0][0] - ended >= AFTER - 3


def test_saving_a_file_and_typing_in_a_terminal_each_cancel_the_warning(make_jrd) -> None:
    """After the warning, a file save resets the clock; after the next warning, typing in a terminal does."""
    j, marker = idle_jrd(make_jrd)
    j.start()
    s = j.login()
    term = s.post(j.url("/api/terminals"))
    assert term.status_code == 200, term.text
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    tws = websocket.create_connection(
        f"wss://127.0.0.1:{j.port}/terminals/websocket/{term.json()['name']}", sslopt={"ca_certs": str(j.ca)},
        cookie=cookie, host=f"localhost:{j.port}", origin=f"https://localhost:{j.port}", timeout=60)

    def warnings() -> int:
        return j.read_output().count("will stop in")

    wait_for(lambda: warnings() == 1, AFTER + 30, "the first warning")
    # The warning is written to the Jupyter terminal too.
    seen = ""
    deadline = time.monotonic() + 20
    while "will stop in" not in seen and time.monotonic() < deadline:
        msg = json.loads(tws.recv())
        if msg[0] == "stdout":
            seen += msg[1]
    assert "will stop in" in seen, seen
    r = s.put(j.url("/api/contents/saved.txt"), json={"type": "file", "format": "text", "content": "hello"})
    assert r.status_code in (200, 201), r.text
    wait_for(lambda: "cancelled: activity (files)" in j.read_output(), 20, "the save to cancel the warning")
    assert not runs(marker)
    wait_for(lambda: warnings() == 2, AFTER + 30, "the second warning")
    tws.send(json.dumps(["stdin", "ls\r"]))
    wait_for(lambda: "cancelled: activity (terminal)" in j.read_output(), 20, "typing to cancel the warning")
    assert not runs(marker)
    tws.close()
    wait_for(lambda: runs(marker), AFTER + 60, "the stop after the last activity")


def test_a_hold_prevents_the_stop_until_it_is_released(make_jrd) -> None:
    """`jrdctl hold 1h` keeps the idle machine up past its deadline; `--release` lets it stop."""
    j, marker = idle_jrd(make_jrd)
    j.start()
    res = j.jrdctl("hold", "1h", "--reason", "training run")
    assert res.returncode == 0 and "held until" in res.stdout, res.stdout + res.stderr
    time.sleep(AFTER + 5)  # past the idle deadline, with a sample a second
    assert not runs(marker)
    idle = idle_status(j)
    assert idle["hold"]["reason"] == "training run" and idle["signals"]["hold"]["last_active"] > time.time() - 10
    assert "held until" in j.jrdctl("status").stdout
    metrics = parse_exposition(requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=10).text)
    assert metrics["jrd_idle_holds_active"] == 1
    res = j.jrdctl("hold", "--release")
    assert res.returncode == 0 and "Hold released" in res.stdout, res.stdout + res.stderr
    released = time.time()
    wait_for(lambda: runs(marker), AFTER + 60, "the stop after the hold was released")
    assert runs(marker)[0][0] - released >= AFTER - 3


def test_a_failing_stop_command_is_logged_once_counted_and_jrd_keeps_serving(make_jrd) -> None:
    """The command exits 3: one error line, jrd_idle_stops_total{result="failure"} 1, Jupyter serves again."""
    j, marker = idle_jrd(make_jrd, status=3, after=0.35)
    j.start()
    wait_for(lambda: runs(marker), 30 + 60, "the stop command to run")
    wait_for(lambda: "the stop command" in j.read_output() and "failed" in j.read_output(), 20, "the failure")
    wait_for(j.serving, 60, "Jupyter to serve again")
    assert j.read_output().count("the stop command") == 1
    assert "exit status 3" in j.read_output()
    metrics = parse_exposition(requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=10).text)
    assert metrics['jrd_idle_stops_total{result="failure"}'] == 1
    idle = idle_status(j)
    assert idle["stops"] == {"success": 0, "failure": 1} and "exit status 3" in idle["last_error"]
    assert not idle["stopping"] and idle["stop_at"] > time.time() + 5  # the clock starts again


def test_jrdctl_idle_says_off_when_off(make_jrd) -> None:
    """Off by default: status has no idle entry, and `jrdctl idle` says the stop is off."""
    j = make_jrd()
    j.start()
    assert json.loads(j.jrdctl("status", "--json").stdout)["idle"] is None
    res = j.jrdctl("idle")
    assert res.returncode == 0 and "idle stop: off" in res.stdout, res.stdout + res.stderr

"""Config edits take effect by themselves, transactionally, with the least disruption.

One real jrd (supervisord, nginx, JupyterLab) is shared by the module.  Each
test edits its config the way a person or a tool would and watches the effect
through nginx.  Reloads are counted from the daemon's log, which has one line
per reload: "reload (SOURCE) applied: ..." or "reload (SOURCE) refused, ...".
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from conftest import PASSWORD, HandshakeLoad, Jrd, execute, kernel_pids, open_kernel_ws, short_tmp, wait_for

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
# A burst settles after 0.1 s of quiet; give a stray second reload ample time to show.
SETTLE = 0.8
_limits = itertools.count(1000, -4)


def next_limit() -> int:
    """A client_max_body_size (MiB) smaller than every one before, so the new one is observable."""
    return next(_limits)


@pytest.fixture(scope="module")
def jrd() -> Iterator[Jrd]:
    j = Jrd(short_tmp())
    j.start()
    yield j
    j.stop()
    shutil.rmtree(j.base, ignore_errors=True)


# --- helpers ---------------------------------------------------------------------------


def config(j: Jrd, limit: int, **overrides: str) -> str:
    nginx = f'client_max_body_size = "{limit}m"\n' + overrides.pop("nginx", "")
    return j.config_text(nginx=nginx, **overrides)


def reload_lines(j: Jrd, kind: str) -> list[str]:
    return [line for line in j.read_output().splitlines() if re.search(rf" reload \(.*\) {kind}", line)]


def one_reload(j: Jrd, change: Callable[[], None], kind: str = "applied") -> str:
    """Make `change`, and check that it leads to exactly one reload of `kind`; return its log line."""
    before = {k: len(reload_lines(j, k)) for k in ("applied", "refused")}
    change()
    wait_for(lambda: len(reload_lines(j, kind)) > before[kind], 15, f"a reload to be {kind}")
    time.sleep(SETTLE)  # proving an absence: no second reload follows the burst
    after = {k: len(reload_lines(j, k)) for k in ("applied", "refused")}
    assert after[kind] == before[kind] + 1, reload_lines(j, kind)[before[kind]:]
    other = "refused" if kind == "applied" else "applied"
    assert after[other] == before[other], reload_lines(j, other)[before[other]:]
    return reload_lines(j, kind)[-1]


def body_status(j: Jrd, nbytes: int, timeout: float = 3.0) -> int | None:
    """The status nginx answers to a request announcing `nbytes` of body (None if it waits for the body)."""
    ctx = ssl.create_default_context(cafile=str(j.ca))
    with socket.create_connection(("127.0.0.1", j.port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"PUT /api/contents/x.txt HTTP/1.1\r\nHost: localhost:{j.port}\r\n"
                        f"Content-Length: {nbytes}\r\nConnection: close\r\n\r\n".encode())
            try:
                head = tls.recv(64)
            except (socket.timeout, ssl.SSLError):
                return None
    return int(head.split()[1]) if head else None


def limit_is_live(j: Jrd, limit: int) -> bool:
    return body_status(j, limit * MIB + 1) == 413


def rendered_files(j: Jrd) -> dict[str, tuple[bytes, int]]:
    """Every rendered file and the TLS pair, with their bytes and mtimes."""
    paths = [p for p in j.run_dir.rglob("*") if p.is_file() and p.suffix in (".conf", ".py", ".pem", ".mobileconfig")
             and "staging" not in p.parts]
    paths += list((j.state / "tls").glob("*.pem"))
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def failures_metric(j: Jrd) -> float:
    text = requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=10).text
    m = re.search(r'^jrd_config_reloads_total\{result="failure"\} (\S+)$', text, re.M)
    assert m, "no jrd_config_reloads_total{result=\"failure\"} in the metrics"
    return float(m.group(1))


def errors_logged(j: Jrd) -> int:
    return sum(" ERROR " in line for line in j.read_output().splitlines())


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- each save pattern is one reload, and live ------------------------------------------------


def save_rename(j: Jrd, text: str) -> None:
    write_atomically(j.config_path, text)


def save_truncate(j: Jrd, text: str) -> None:
    with open(j.config_path, "r+") as f:
        f.truncate(0)
        f.write(text)


def save_delete_recreate(j: Jrd, text: str) -> None:
    j.config_path.unlink()
    j.config_path.write_text(text)


def save_sed(j: Jrd, text: str) -> None:
    old = re.search(r'client_max_body_size = "(\d+m)"', j.config_path.read_text()).group(1)
    new = re.search(r'client_max_body_size = "(\d+m)"', text).group(1)
    subprocess.run(["sed", "-i", f"s/{old}/{new}/", str(j.config_path)], check=True)


def save_vim(j: Jrd, text: str) -> None:
    old = re.search(r'client_max_body_size = "(\d+m)"', j.config_path.read_text()).group(1)
    new = re.search(r'client_max_body_size = "(\d+m)"', text).group(1)
    # Real vim, with its default write-a-new-file-and-rename backup dance.
    subprocess.run(["vim", "-u", "NONE", "-N", "-n", "-es", "-c", "set writebackup", "-c", f"%s/{old}/{new}/",
                    "-c", "wq", str(j.config_path)], check=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("save", [save_rename, save_truncate, save_delete_recreate, save_sed, save_vim],
                         ids=["atomic-rename", "truncate-write", "delete-recreate", "sed-i", "vim"])
def test_each_save_pattern_is_one_reload_and_live(jrd: Jrd, save: Callable[[Jrd, str], None]) -> None:
    limit = next_limit()
    assert not limit_is_live(jrd, limit)
    line = one_reload(jrd, lambda: save(jrd, config(jrd, limit)))
    assert "nginx reloaded gracefully" in line and "jupyter" not in line
    wait_for(lambda: limit_is_live(jrd, limit), 5, f"client_max_body_size {limit}m to be live")


def test_configmap_symlink_flip_is_one_reload_and_live(jrd: Jrd) -> None:
    cm = jrd.base / "configmap"
    (cm / "..v1").mkdir(parents=True)
    first, second = next_limit(), next_limit()
    (cm / "..v1" / "jrd.toml").write_text(config(jrd, first))
    (cm / "..data").symlink_to("..v1")
    link = jrd.base / ".jrd.toml.link"
    link.symlink_to("configmap/..data/jrd.toml")
    try:
        one_reload(jrd, lambda: os.replace(link, jrd.config_path))  # the config becomes a ConfigMap mount
        wait_for(lambda: limit_is_live(jrd, first), 5, "the mounted config to be live")

        def kubelet_update() -> None:
            (cm / "..v2").mkdir()
            (cm / "..v2" / "jrd.toml").write_text(config(jrd, second))
            (cm / "..data_tmp").symlink_to("..v2")
            os.replace(cm / "..data_tmp", cm / "..data")
            shutil.rmtree(cm / "..v1")

        one_reload(jrd, kubelet_update)
        wait_for(lambda: limit_is_live(jrd, second), 5, "the flipped config to be live")
    finally:
        write_atomically(jrd.config_path, (cm / "..data" / "jrd.toml").read_text())
        shutil.rmtree(cm)


def test_new_server_name_is_accepted_by_nginx(jrd: Jrd) -> None:
    host = {"Host": f"new.example:{jrd.port}"}
    assert jrd.session().get(jrd.url("/api"), headers=host, timeout=10).status_code == 421
    limit = next_limit()
    one_reload(jrd, lambda: write_atomically(jrd.config_path,
                                             config(jrd, limit, nginx='server_names = ["new.example"]\n')))
    # Jupyter's own Host check learns the name too, so this one restarts Jupyter (policy "immediate").
    wait_for(lambda: jrd.session().get(jrd.url("/api"), headers=host, timeout=10).status_code == 200, 60,
             "the new name to be served")
    assert jrd.session().get(jrd.url("/api"), headers={"Host": f"other.example:{jrd.port}"}).status_code == 421
    one_reload(jrd, lambda: write_atomically(jrd.config_path, config(jrd, next_limit())))
    wait_for(lambda: jrd.session().get(jrd.url("/api"), headers=host, timeout=10).status_code == 421, 10,
             "the name to be refused again")
    wait_for(jrd.serving, 60, "Jupyter to serve again")


# --- least disruption -------------------------------------------------------------------------


def test_nginx_only_change_keeps_jupyter_kernels_and_every_request(jrd: Jrd) -> None:
    s = jrd.login()
    kernel = s.post(jrd.url("/api/kernels"), json={"name": "python3"}).json()
    ws = open_kernel_ws(jrd, s, kernel["id"])
    try:
        assert execute(ws, "x = 41; x + 1") == "42"
        jupyter_pid = jrd.supervisor_pid("jupyter")
        kernels = kernel_pids(jrd.proc.pid)
        assert kernels
        with HandshakeLoad.to(jrd, threads=1) as load:
            for _ in range(4):
                limit = next_limit()
                line = one_reload(jrd, lambda: write_atomically(jrd.config_path, config(jrd, limit)))
                assert "jupyter" not in line
                wait_for(lambda: limit_is_live(jrd, limit), 5, f"limit {limit}m to be live")
        assert load.failures == [], load.failures[:5]
        assert load.ok > 10
        assert jrd.supervisor_pid("jupyter") == jupyter_pid
        assert kernel_pids(jrd.proc.pid) == kernels
        assert execute(ws, "x + 1") == "42", "the kernel kept its state and its websocket"
    finally:
        ws.close()
        s.delete(jrd.url(f"/api/kernels/{kernel['id']}"))


# --- refused configs change nothing ---------------------------------------------------------------


def test_invalid_configs_change_nothing_log_once_count_and_then_apply_when_fixed(jrd: Jrd) -> None:
    good = next_limit()
    one_reload(jrd, lambda: write_atomically(jrd.config_path, config(jrd, good)))
    wait_for(lambda: limit_is_live(jrd, good), 5, "the good config to be live")
    files = rendered_files(jrd)
    pids = (jrd.supervisor_pid("jupyter"), jrd.supervisor_pid("nginx"))
    failures = failures_metric(jrd)
    errors = errors_logged(jrd)
    jupyter_as_root = config(jrd, good).replace('names = ["jrd.test"]', 'names = ["jrd.test", "renamed.test"]').replace(
        f'user = "{jrd.user}"', 'user = "root"').replace("allow_root = true", "allow_root = false")
    bad = [
        # (text, what the one log line must name besides the file)
        (config(jrd, good).replace(f'"{good}m"', '"1k"'), "client_max_body_size"),
        (config(jrd, good) + "[nginx\nport = 1\n", "line"),
        (config(jrd, good).replace("[nginx]\n", "[nginx]\nlisten_port = 1\n"), "listen_port"),
        # Valid TOML and keys, refused only while building (after a new certificate
        # for the new name was already made): the old certificate must come back.
        (jupyter_as_root, "[jupyter] user"),
    ]
    for text, key in bad:
        line = one_reload(jrd, lambda: write_atomically(jrd.config_path, text), kind="refused")
        assert str(jrd.config_path) in line and key in line, line
        assert rendered_files(jrd) == files, "a refused reload changed a rendered file"
        assert (jrd.supervisor_pid("jupyter"), jrd.supervisor_pid("nginx")) == pids
        assert limit_is_live(jrd, good) and jrd.serving()
    assert errors_logged(jrd) == errors + len(bad), "each refusal is logged once"
    assert failures_metric(jrd) == failures + len(bad)
    fixed = next_limit()
    one_reload(jrd, lambda: write_atomically(jrd.config_path, config(jrd, fixed)))
    wait_for(lambda: limit_is_live(jrd, fixed), 5, "the fixed config to be live")


def test_sighup_with_a_bad_config_is_logged_once(jrd: Jrd) -> None:
    text = config(jrd, next_limit()).replace(f"port = {jrd.jupyter_port}\n", "port = 0\n")
    errors_before = errors_logged(jrd)
    one_reload(jrd, lambda: write_atomically(jrd.config_path, text), kind="refused")
    line = one_reload(jrd, lambda: jrd.proc.send_signal(signal.SIGHUP), kind="refused")  # the same path, one line
    assert "signal SIGHUP" in line and "[jupyter] port" in line
    assert errors_logged(jrd) == errors_before + 2
    good = next_limit()
    one_reload(jrd, lambda: write_atomically(jrd.config_path, config(jrd, good)))
    wait_for(lambda: limit_is_live(jrd, good), 5, "the fixed config to be live")


def test_deleted_config_keeps_running_and_its_return_applies(jrd: Jrd) -> None:
    before = len(reload_lines(jrd, "applied")), len(reload_lines(jrd, "refused"))
    text = jrd.config_path.read_text()
    jrd.config_path.unlink()
    wait_for(lambda: "disappeared" in jrd.read_output(), 10, "the disappearance to be logged")
    time.sleep(SETTLE)
    assert (len(reload_lines(jrd, "applied")), len(reload_lines(jrd, "refused"))) == before
    assert jrd.read_output().count("disappeared") == 1
    assert jrd.serving()
    limit = next_limit()
    one_reload(jrd, lambda: jrd.config_path.write_text(
        text.replace(re.search(r'"\d+m"', text).group(0), f'"{limit}m"')))
    wait_for(lambda: limit_is_live(jrd, limit), 5, "the restored config to be live")


def test_fifty_rapid_writes_back_and_forth_end_in_the_last_one(jrd: Jrd) -> None:
    final = next_limit()
    before = len(reload_lines(jrd, "applied"))
    refused = len(reload_lines(jrd, "refused"))
    for i in range(49):
        jrd.config_path.write_text(config(jrd, 1000 if i % 2 else 999))
    jrd.config_path.write_text(config(jrd, final))
    wait_for(lambda: len(reload_lines(jrd, "applied")) > before, 15, "a reload")
    time.sleep(SETTLE * 2)
    assert 1 <= len(reload_lines(jrd, "applied")) - before <= 2
    assert len(reload_lines(jrd, "refused")) == refused
    assert limit_is_live(jrd, final)


# --- jrd's own settings ------------------------------------------------------------------------


def test_log_level_applies_in_place_and_paths_metrics_say_they_need_a_restart(jrd: Jrd) -> None:
    limit = next_limit()
    line = one_reload(jrd, lambda: write_atomically(jrd.config_path, config(jrd, limit, log='level = "warning"\n')))
    assert "log level is now warning" in line
    # At warning level the next applied line is not logged; the [metrics]/[paths] warnings are.
    text = config(jrd, next_limit(), log='level = "warning"\n').replace(
        f'listen = "127.0.0.1:{jrd.metrics_port}"', 'listen = "127.0.0.1:1"').replace(
        f'log_dir = "{jrd.base}/log"', f'log_dir = "{jrd.base}/log2"')
    write_atomically(jrd.config_path, text)
    wait_for(lambda: "[metrics] changed" in jrd.read_output() and "[paths] changed" in jrd.read_output(), 10,
             "the restart-needed warnings")
    assert "restart" in [l for l in jrd.read_output().splitlines() if "[paths] changed" in l][0]
    assert requests.get(f"http://127.0.0.1:{jrd.metrics_port}/metrics", timeout=10).ok, "old metrics listener stays"
    assert not (jrd.base / "log2").exists(), "the old paths stay in use"
    limit = next_limit()
    line = one_reload(jrd, lambda: write_atomically(jrd.config_path, config(jrd, limit)))
    assert "log level is now info" in line
    wait_for(lambda: limit_is_live(jrd, limit), 5, "the config to be live")


# --- Jupyter settings restart Jupyter by the policy -----------------------------------------------


def restarted_lines(j: Jrd) -> list[str]:
    return [l for l in j.read_output().splitlines() if "restarted jupyter" in l]


def test_password_change_restarts_jupyter_once_with_immediate_policy(jrd: Jrd) -> None:
    old_pid = jrd.supervisor_pid("jupyter")
    restarts = len(restarted_lines(jrd))
    line = one_reload(jrd, lambda: jrd.set_password("a brand new passphrase"))
    assert "password" in line and "jupyter restarted" in line
    wait_for(jrd.serving, 60, "Jupyter to serve again")
    assert len(restarted_lines(jrd)) == restarts + 1
    assert jrd.supervisor_pid("jupyter") not in (0, old_pid)
    jrd.login("a brand new passphrase")
    with pytest.raises(AssertionError):
        jrd.login(PASSWORD)
    one_reload(jrd, lambda: jrd.set_password(PASSWORD))
    wait_for(jrd.serving, 60, "Jupyter to serve again")


def test_idle_policy_waits_for_a_busy_kernel_then_restarts(jrd: Jrd) -> None:
    idle = config(jrd, next_limit()).replace('restart_policy = "immediate"', 'restart_policy = "idle"')
    assert "jupyter" not in one_reload(jrd, lambda: write_atomically(jrd.config_path, idle))
    s = jrd.login()
    kernel = s.post(jrd.url("/api/kernels"), json={"name": "python3"}).json()
    ws = open_kernel_ws(jrd, s, kernel["id"])
    jupyter_pid = jrd.supervisor_pid("jupyter")
    restarts = len(restarted_lines(jrd))
    result: dict[str, object] = {}

    def long_cell() -> None:
        result["value"] = execute(ws, "import time; time.sleep(8); 42", timeout=60)
        result["done"] = time.time()

    cell = threading.Thread(target=long_cell)
    cell.start()
    try:
        wait_for(lambda: s.get(jrd.url(f"/api/kernels/{kernel['id']}")).json()["execution_state"] == "busy", 10,
                 "the kernel to be busy")
        line = one_reload(jrd, lambda: jrd.set_password("idle policy passphrase"))
        assert "pending until no kernel is busy" in line
        wait_for(lambda: "waits until no kernel is busy" in jrd.read_output(), 10, "the wait to be logged")
        assert jrd.supervisor_pid("jupyter") == jupyter_pid
        cell.join(60)
        assert result.get("value") == "42", "the long cell ran to its end"
        wait_for(lambda: len(restarted_lines(jrd)) > restarts, 15, "Jupyter to restart once idle")
        assert jrd.supervisor_pid("jupyter") not in (0, jupyter_pid)
        restarted = restarted_lines(jrd)[-1]
        at = dt.datetime.strptime(restarted[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        assert at >= float(result["done"]) - 0.5, "Jupyter restarted before the cell finished"  # type: ignore[arg-type]
        wait_for(jrd.serving, 60, "Jupyter to serve again")
        jrd.login("idle policy passphrase")
    finally:
        ws.close()
        cell.join(60)
        one_reload(jrd, lambda: jrd.set_password(PASSWORD))
        write_atomically(jrd.config_path, config(jrd, next_limit()))
        wait_for(jrd.serving, 60, "Jupyter to serve again")

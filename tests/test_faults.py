"""The fault matrix: every way a process jrd runs can die or hang, each followed by the same checks.

After each fault, within a deadline: Jupyter answers through nginx, there is exactly one nginx
master (with its own workers and no orphaned ones), no kernel is left without its Jupyter, the
sockets and the pid file belong to live processes, and `jrdctl status` exits 0.  Each kill is
repeated five times in a row, against the real supervisord, nginx and Jupyter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import JRDCTL, Jrd, descendants, kernel_pids, parse_exposition, short_tmp, wait_for

pytestmark = pytest.mark.integration

REPEAT = 5
RECOVERY = 60  # seconds; the benchmark (bench/bench_recovery.py) measures how long it really takes

FAST_HEALTH = "[health]\ninterval_seconds = 1\ntimeout_seconds = 1\nfailure_threshold = 2\n"


def proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def nginx_masters(j: Jrd) -> list[int]:
    conf = str(j.run_dir / "nginx" / "nginx.conf")
    return [p for p in all_pids() if "nginx: master process" in cmdline(p) and conf in cmdline(p)]


def nginx_workers_of(master: int) -> list[int]:
    return [p for p in all_pids() if (st := proc_stat(master)) and (w := proc_stat(p)) and w[2] == str(master)
            and st[0] != "Z" and "nginx: worker process" in cmdline(p)]


def orphaned_nginx_workers(j: Jrd) -> list[int]:
    """nginx workers whose master is gone: reparented to jrd (a subreaper) or to init."""
    parents = {j.proc.pid, 1}
    return [p for p in all_pids() if "nginx: worker process" in cmdline(p)
            and (st := proc_stat(p)) and st[0] != "Z" and int(st[1]) in parents]


def orphaned_kernels(j: Jrd) -> list[int]:
    jupyter = j.supervisor_pid("jupyter")
    return [k for k in kernel_pids(j.proc.pid) if jupyter == 0 or k not in descendants(jupyter)]


def socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def healthy(j: Jrd) -> str:
    """'' when everything is as it should be, else what is not (for wait_for's message)."""
    if j.proc.poll() is not None:
        raise AssertionError(f"jrd exited with {j.proc.returncode}:\n{j.read_output()[-3000:]}")
    if not j.serving():
        return "not serving through nginx"
    masters = nginx_masters(j)
    if len(masters) != 1:
        return f"{len(masters)} nginx masters: {masters}"
    if not nginx_workers_of(masters[0]):
        return "the nginx master has no workers"
    if orphans := orphaned_nginx_workers(j):
        return f"orphaned nginx workers {orphans}"
    if orphans := orphaned_kernels(j):
        return f"orphaned kernels {orphans}"
    pid_file = j.run_dir / "nginx" / "nginx.pid"
    if not pid_file.exists() or pid_file.read_text().strip() != str(masters[0]):
        return "nginx.pid does not name the live master"
    for sock in (j.run_dir / "supervisor" / "supervisor.sock", j.run_dir / "supervisor" / "nginx-status.sock",
                 j.run_dir / "control.sock"):
        if not socket_alive(sock):
            return f"{sock} is stale"
    status = j.jrdctl("status")
    if status.returncode != 0:
        return f"jrdctl status exited {status.returncode}: {status.stdout}{status.stderr}"
    return ""


def assert_recovers(j: Jrd, what: str, timeout: float = RECOVERY) -> float:
    start = time.monotonic()
    problem = ""

    def ok() -> bool:
        nonlocal problem
        problem = healthy(j)
        return problem == ""

    try:
        wait_for(ok, timeout, f"recovery after {what}", interval=0.1)
    except AssertionError:
        raise AssertionError(f"no recovery after {what} within {timeout} s: {problem}\n"
                             f"{j.read_output()[-2000:]}") from None
    return time.monotonic() - start


def probed_ok_since(j: Jrd, program: str, since: float) -> bool:
    metrics = parse_exposition(requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=10).text)
    return (metrics.get(f'jrd_probe_success{{program="{program}"}}') == 1
            and metrics.get(f'jrd_probe_timestamp_seconds{{program="{program}"}}', 0) > since)


def start_kernel(j: Jrd) -> None:
    s = j.login()
    r = s.post(j.url("/api/kernels"), json={"name": "python3"}, timeout=30)
    assert r.status_code == 201, r.text
    wait_for(lambda: kernel_pids(j.supervisor_pid("jupyter")), 30, "the kernel process")


@pytest.fixture(scope="module")
def jrd() -> Iterator[Jrd]:
    j = Jrd(short_tmp(), FAST_HEALTH)
    j.start()
    yield j
    j.stop(signal.SIGTERM, timeout=60)


def test_the_stack_starts_healthy(jrd: Jrd) -> None:
    assert_recovers(jrd, "start")


def test_sigkill_of_jupyter_with_a_kernel(jrd: Jrd) -> None:
    for i in range(REPEAT):
        start_kernel(jrd)
        old = jrd.supervisor_pid("jupyter")
        with AnswersWatched(jrd) as answers:
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: jrd.supervisor_pid("jupyter") not in (0, old), 30, "a new Jupyter")
            assert_recovers(jrd, f"SIGKILL of Jupyter #{i + 1}")
        # Meanwhile a page got nginx's restarting answer (503, Retry-After), never a bare 502.
        assert answers.statuses <= {200, 503}, answers.statuses
        assert answers.restarting_pages, "no request came while Jupyter was down"
        assert all("Jupyter is restarting" in page for page in answers.restarting_pages)


class AnswersWatched:
    """Asks for a page through nginx in a loop while a fault plays out; keeps what came back."""

    def __init__(self, j: Jrd):
        self.j = j
        self.statuses: set[int] = set()
        self.restarting_pages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "AnswersWatched":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        s = self.j.session()
        while not self._stop.is_set():
            try:
                r = s.get(self.j.url("/login"), headers={"Accept": "text/html"}, timeout=10)
            except requests.RequestException:
                continue
            self.statuses.add(r.status_code)
            if r.status_code == 503 and r.headers.get("Retry-After") == "2":
                self.restarting_pages.append(r.text)
            self._stop.wait(0.05)


def test_sigkill_of_nginx_master_leaves_no_worker_or_stale_socket(jrd: Jrd) -> None:
    for i in range(REPEAT):
        old = nginx_masters(jrd)[0]
        workers = nginx_workers_of(old)
        os.kill(old, signal.SIGKILL)
        assert_recovers(jrd, f"SIGKILL of nginx's master #{i + 1}")
        assert nginx_masters(jrd)[0] != old
        # jrd's own probe sees the new master healthy: it served, so its death next time is no crash loop.
        recovered = time.time()
        wait_for(lambda: probed_ok_since(jrd, "nginx", recovered), 30, "a passing health probe of nginx")
        assert not [w for w in workers if proc_stat(w) and proc_stat(w)[0] != "Z"], "old workers still run"
    assert "nginx: crash loop" not in jrd.read_output()


def test_sigkill_of_an_nginx_worker(jrd: Jrd) -> None:
    for i in range(REPEAT):
        master = nginx_masters(jrd)[0]
        os.kill(nginx_workers_of(master)[0], signal.SIGKILL)
        assert_recovers(jrd, f"SIGKILL of an nginx worker #{i + 1}")
        assert nginx_masters(jrd) == [master]  # the master replaces its worker itself


def test_sigkill_of_the_event_listener_keeps_counting_restarts(jrd: Jrd) -> None:
    conf = str(jrd.run_dir / "supervisor" / "supervisord.conf")
    for i in range(REPEAT):
        old = jrd.supervisor_pid("jrd-events")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: jrd.supervisor_pid("jrd-events") not in (0, old), 30, "a new event listener")
        assert_recovers(jrd, f"SIGKILL of the event listener #{i + 1}")
    # supervisord gives up on a listener killed this fast (FATAL) and jrd starts it again: wait until it runs,
    # since an event that comes while no listener runs may be lost (the count, not the recovery).
    wait_for(lambda: json.loads(jrd.jrdctl("status", "--json").stdout)["programs"]["jrd-events"]["state"]
             == "RUNNING", 60, "the event listener running")
    before = json.loads(jrd.jrdctl("status", "--json").stdout)["programs"]["jupyter"]["restarts"]
    os.kill(jrd.supervisor_pid("jupyter"), signal.SIGKILL)
    try:
        wait_for(lambda: json.loads(jrd.jrdctl("status", "--json").stdout)["programs"]["jupyter"]["restarts"]
                 == before + 1, 30, "the crash to be counted by the new listener")
    except AssertionError:
        sup_log = (jrd.base / "log" / "supervisord.log").read_text()[-2000:]
        raise AssertionError(f"{jrd.jrdctl('status', '--json').stdout}\n{sup_log}\n{jrd.read_output()[-2000:]}")
    assert_recovers(jrd, "SIGKILL of Jupyter after the listener's restarts")
    assert conf  # the listener is supervisord's: nothing of jrd had to restart


def supervisord_pid(j: Jrd) -> int:
    conf = str(j.run_dir / "supervisor" / "supervisord.conf")
    pids = [p for p in descendants(j.proc.pid) if "supervisord" in cmdline(p) and conf in cmdline(p)]
    assert len(pids) == 1, pids
    return pids[0]


def test_sigkill_of_supervisord_is_restarted_in_place(jrd: Jrd) -> None:
    jrd_pid = jrd.proc.pid
    for i in range(REPEAT):
        start_kernel(jrd)
        old = supervisord_pid(jrd)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: supervisord_pid(jrd) != old, 60, "a new supervisord")
        assert_recovers(jrd, f"SIGKILL of supervisord #{i + 1}")
        # Everything the old one ran is gone, reaped too: only the new supervisord's programs are left. (A
        # process that is exiting, or a short helper of jrd's own such as `nginx -t`, may show for a moment.)
        new = supervisord_pid(jrd)

        def strays() -> list[str]:
            return [f"{p} {(proc_stat(p) or ['gone'])[0]} {cmdline(p)}" for p in descendants(jrd_pid)
                    if p != new and p not in descendants(new)]

        try:
            wait_for(lambda: not strays(), 20, "no process of the old supervisord")  # StrayReaper: 10 s grace
        except AssertionError:
            raise AssertionError(f"left running: {strays()}") from None
    assert jrd.proc.pid == jrd_pid and jrd.proc.poll() is None


def test_sigstop_of_jupyter_and_of_nginx_master_is_caught_by_the_probes(jrd: Jrd) -> None:
    for program in ("jupyter", "nginx"):
        # Once a probe has passed, failures count at once (a new instance has a startup grace).
        now = time.time()
        wait_for(lambda: probed_ok_since(jrd, program, now), 60, f"a passing probe of {program}")
        pid = jrd.supervisor_pid(program)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: jrd.supervisor_pid(program) not in (0, pid), 60, f"{program} restarted as unhealthy")
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert_recovers(jrd, f"SIGSTOP of {program}")
        assert proc_stat(pid) is None or proc_stat(pid)[0] == "Z", f"the stopped {program} still runs"


def test_a_sighup_storm_is_one_or_two_reloads(jrd: Jrd) -> None:
    before = json.loads(jrd.jrdctl("status", "--json").stdout)["reload"]
    for _ in range(100):
        os.kill(jrd.proc.pid, signal.SIGHUP)
        time.sleep(0.01)
    wait_for(lambda: json.loads(jrd.jrdctl("status", "--json").stdout)["reload"]["successes"] > before["successes"],
             30, "the reload")
    time.sleep(1.0)  # let any queued reload run, so that it is counted below
    after = json.loads(jrd.jrdctl("status", "--json").stdout)["reload"]
    assert 1 <= after["successes"] - before["successes"] <= 2, after
    assert after["failures"] == before["failures"]
    assert_recovers(jrd, "a SIGHUP storm")


def test_deleted_config_keeps_serving_and_a_reload_says_why(jrd: Jrd) -> None:
    text = jrd.config_path.read_text()
    jrd.config_path.unlink()
    try:
        wait_for(lambda: "disappeared" in jrd.read_output(), 30, "the watcher to notice")
        jrd.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "no such config file" in jrd.read_output(), 30, "the refused reload")
        assert jrd.serving() and jrd.proc.poll() is None
        res = subprocess.run([JRDCTL, "--socket", str(jrd.run_dir / "control.sock"),
                              "status", "--json"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["reload"]["last_ok"] is False
    finally:
        jrd.config_path.write_text(text)
    assert_recovers(jrd, "deleting the config")


def served_serial(j: Jrd) -> int:
    from cryptography import x509

    from conftest import tls_peer_der

    return x509.load_der_x509_certificate(tls_peer_der("127.0.0.1", j.port)).serial_number


@pytest.mark.parametrize("damage", ["delete the key", "corrupt the certificate"])
def test_own_certificate_damaged_on_disk_is_issued_again(jrd: Jrd, damage: str) -> None:
    tls = jrd.state / "tls"
    old = served_serial(jrd)
    if damage == "delete the key":
        (tls / "server-key.pem").unlink()
    else:
        (tls / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    assert served_serial(jrd) == old  # nginx keeps serving the pair it loaded meanwhile
    wait_for(lambda: served_serial(jrd) != old, 30, "a new certificate served")
    assert_recovers(jrd, damage)
    assert "changed on disk outside jrd" in jrd.read_output()


# --- faults that need their own jrd ----------------------------------------------------------


def test_sigkill_of_jrd_then_a_start_on_the_same_directories(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd(FAST_HEALTH)
    j.start()
    for i in range(REPEAT):
        start_kernel(j)
        j.proc.kill()
        j.proc.wait()
        j.start(timeout=120)
        assert_recovers(j, f"SIGKILL of jrd and a new start #{i + 1}")
        supervisords = [p for p in all_pids() if "supervisord" in cmdline(p) and str(j.run_dir) in cmdline(p)]
        assert len(supervisords) == 1, supervisords


def test_a_program_left_over_from_a_killed_jrd_is_ended_at_start(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd(FAST_HEALTH)
    j.start()
    # Kill jrd and its supervisord outright: nginx and Jupyter are left running, reparented to init.
    sup = supervisord_pid(j)
    left = [p for p in descendants(sup)]
    os.kill(sup, signal.SIGKILL)
    j.proc.kill()
    j.proc.wait()
    assert [p for p in left if proc_stat(p) and proc_stat(p)[0] != "Z"], "nothing was left over"
    j.start(timeout=120)
    assert_recovers(j, "a start over an earlier jrd's leftovers")
    assert not [p for p in left if proc_stat(p) and proc_stat(p)[0] != "Z"]
    assert "left by an earlier jrd" in j.read_output()


def hold_port(port: int) -> subprocess.Popen[str]:
    code = ("import socket,sys,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('127.0.0.1',{port}));s.listen();print('ready',flush=True);time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_jupyter_port_taken_at_start_names_the_holder(make_jrd) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd()
    j.set_password()
    holder = hold_port(j.jupyter_port)
    try:
        res = j.jrd("run", timeout=60)
        assert res.returncode == 3
        assert f"port {j.jupyter_port}" in res.stderr and f"pid {holder.pid}" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    finally:
        holder.kill()
        holder.wait()


def test_jupyter_port_taken_while_running_is_a_visible_crash_loop_that_recovers(make_jrd) -> None:  # type: ignore
    j: Jrd = make_jrd(FAST_HEALTH)
    j.start()
    old = j.supervisor_pid("jupyter")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: proc_stat(old) is None or proc_stat(old)[0] == "Z", 10, "the old Jupyter to be gone")
    holder = hold_port(j.jupyter_port)  # faster than the new Jupyter, which binds after seconds
    try:
        def looping() -> dict:
            st = json.loads(j.jrdctl("status", "--json").stdout)
            return st if "crash_loop" in st["programs"]["jupyter"] and not st["serving"]["ok"] else {}

        status = wait_for(looping, 120, "the crash loop in jrdctl status --json")
        assert status["programs"]["jupyter"]["crash_loop"]["restarts"] >= 3  # type: ignore[index]

        def shown() -> bool:
            table = j.jrdctl("status")
            return table.returncode == 3 and "jupyter: crash loop" in table.stdout and "NOT serving" in table.stdout

        wait_for(shown, 120, "the crash loop in jrdctl status")
    finally:
        holder.kill()
        holder.wait()
    assert_recovers(j, "the port freed", timeout=RECOVERY + 300)


def fill(directory: Path) -> Path:
    """Fill the file system under `directory` until it has no byte left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (65536, 1):
            try:
                while f.write(b"\0" * chunk):
                    pass
            except OSError:
                pass
    return filler


def test_a_full_state_and_runtime_disk_refuses_renewal_and_reload_and_keeps_serving(make_jrd) -> None:  # type: ignore
    j: Jrd = make_jrd()
    disk = j.base / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(disk)], check=True)
    try:
        def on_disk(**overrides: str) -> None:
            text = j.config_text(**overrides)
            j.config_path.write_text(text.replace(f'"{j.base}/state"', f'"{disk}/state"')
                                     .replace(f'"{j.base}/run"', f'"{disk}/run"'))

        on_disk()
        (disk / "state").mkdir(mode=0o700)
        (j.base / "state").symlink_to(disk / "state")  # where the test helpers look for the CA and password
        j.start()
        tls = disk / "state" / "tls"
        before = {name: (tls / name).read_bytes() for name in ("server.pem", "server-key.pem", "ca.pem")}
        served = served_serial(j)
        filler = fill(disk)
        res = j.jrdctl("cert", "renew", "--force")
        assert res.returncode == 1 and "No space left on device" in res.stderr, res.stderr
        assert {name: (tls / name).read_bytes() for name in before} == before  # the old pair stays
        on_disk(nginx='client_max_body_size = "600m"\n')
        res = j.jrdctl("reload")
        assert res.returncode == 1 and "No space left on device" in res.stderr, res.stderr
        assert b"600m" not in (disk / "run" / "nginx" / "nginx.conf").read_bytes()  # the old config stays
        assert j.serving() and served_serial(j) == served
        filler.unlink()
        assert j.jrdctl("cert", "renew", "--force").returncode == 0
        wait_for(lambda: served_serial(j) != served, 30, "the renewed certificate once there is room")
        assert j.jrdctl("reload").returncode == 0
    finally:
        j.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_missing_notebook_dir_is_made_for_the_jupyter_account(make_jrd) -> None:  # type: ignore[no-untyped-def]
    import pwd

    j: Jrd = make_jrd()
    assert not j.notebooks.exists()
    j.start()
    st = j.notebooks.stat()
    assert pwd.getpwuid(st.st_uid).pw_name == j.user and st.st_mode & 0o777 == 0o755
    assert j.serving()


def test_an_unwritable_notebook_dir_serves_and_says_how_to_fix_it(make_jrd) -> None:  # type: ignore
    j: Jrd = make_jrd()
    if j.user == "root":
        pytest.skip("*** SKIPPED: Jupyter runs as root here, for which every directory is writable ***")
    j.notebooks.mkdir(mode=0o755)
    os.chown(j.notebooks, 0, 0)
    j.start()
    assert j.serving()
    out = j.read_output()
    assert f"not writable by the Jupyter account {j.user}" in out and f"chown -R {j.user}" in out, out


def test_a_missing_jupyter_is_one_clear_sentence(make_jrd) -> None:  # type: ignore[no-untyped-def]
    from conftest import BIN

    j: Jrd = make_jrd()
    j.set_password()
    jupyter, hidden = BIN / "jupyter", BIN / "jupyter.hidden-by-test"
    jupyter.rename(hidden)
    try:
        res = j.jrd("run", timeout=60)
    finally:
        hidden.rename(jupyter)
    assert res.returncode == 3 and "Jupyter is not installed beside jrd" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr

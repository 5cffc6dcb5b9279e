"""Certificate renewal against a real nginx, supervisord and JupyterLab (integration tier).

The own-CA tests drive a real `Daemon` through a thin harness: this file,
run as a script, starts the daemon exactly as `jrd run` does and adds one
extension that reads JSON commands from stdin and passes them to
`Daemon.submit`, the one command path that `jrdctl` and the timers use.
The harness can also inject a fault (moving the new certificate into place
fails after the new key was moved), which no outside tool can.

The external-certificate tests run the real `jrd run` and use SIGHUP.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from jrd.extension import Context, Extension

if __name__ != "__main__":
    import pytest
    from cryptography import x509

    from conftest import HandshakeLoad, Jrd, execute, open_kernel_ws, short_tmp, wait_for

    pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve()


# --- the harness (runs in its own process) --------------------------------------------


# The harness's wall clock runs this far ahead of the machine's: a clock that jumped.
CLOCK_OFFSET = [dt.timedelta(0)]


class StdinCommands(Extension):
    """A daemon extension: each stdin line is {"name", "args"} for the command path, or {"fault": bool}."""

    def __init__(self, faults: "Faults"):
        self.faults = faults

    def start(self, ctx: Context) -> None:
        threading.Thread(target=self._serve, args=(ctx,), daemon=True).start()

    def _serve(self, daemon: Context) -> None:
        for line in sys.stdin:
            msg = json.loads(line)
            if "fault" in msg:
                self.faults.on = bool(msg["fault"])
                reply: dict[str, Any] = {"ok": True}
            elif "clock_offset_days" in msg:
                CLOCK_OFFSET[0] = dt.timedelta(days=msg["clock_offset_days"])
                reply = {"ok": True}
            else:
                fut = daemon.submit(msg["name"], "test harness", **msg.get("args", {}))
                try:
                    reply = {"ok": True, "result": fut.result(timeout=120)}
                except Exception as exc:  # noqa: BLE001 - sent back to the test
                    reply = {"ok": False, "error": str(exc)}
            print("@@ " + json.dumps(reply), flush=True)


class Faults:
    """Moving a file onto the leaf certificate fails while `on`: a renewal that breaks halfway."""

    def __init__(self, leaf_cert: Path):
        self.on = False
        self.leaf_cert = leaf_cert
        self._replace = os.replace
        os.replace = self.replace  # type: ignore[assignment]

    def replace(self, src: Any, dst: Any) -> None:
        if self.on and Path(dst) == self.leaf_cert:
            raise OSError(errno.EIO, "injected fault", str(dst))
        self._replace(src, dst)


def harness_main(config_path: str) -> int:
    from jrd.cli import setup_logging
    from jrd.config import load_config
    from jrd.daemon import Daemon

    path = Path(config_path)
    setup_logging("info")
    from jrd.tls import certs

    daemon = Daemon(load_config(path), config_loader=lambda: load_config(path),
                    announce=lambda m: print(m, flush=True), wall=lambda: certs.utcnow() + CLOCK_OFFSET[0])
    daemon.certificates.retry_first = 1.0  # production waits 30 s before the first retry
    daemon.extensions.append(StdinCommands(Faults(daemon.layout.leaf_cert)))
    return daemon.run()


if __name__ == "__main__":
    sys.exit(harness_main(sys.argv[1]))


# --- test side ------------------------------------------------------------------------------


class HarnessJrd(Jrd):
    """A Jrd whose daemon runs in the harness, with `command()` onto its one command path."""

    def start(self, timeout: float = 120) -> "HarnessJrd":
        if not (self.state / "password").exists():
            self.set_password()
        self.log = open(self.base / "jrd.out", "w")
        self.proc = subprocess.Popen([sys.executable, str(HERE), str(self.config_path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"harness did not report serving:\n{self.read_output()}") from None
            if "is serving" in line:
                return self
            if line == "":
                raise AssertionError(f"harness exited:\n{self.read_output()}")

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")

    def send(self, msg: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line.startswith("@@ "):
                return json.loads(line[3:])
            if line == "":
                raise AssertionError(f"harness exited:\n{self.read_output()}")
        raise AssertionError(f"no reply to {msg}")

    def command(self, name: str, **args: Any) -> Any:
        reply = self.send({"name": name, "args": args})
        assert reply["ok"], reply["error"]
        return reply["result"]

    def renew(self, force: bool = True) -> dict[str, Any]:
        return self.command("renew_cert", force=force)


def served_serial(j: Jrd) -> int:
    """The serial of the certificate a new TLS handshake gets, verified against jrd's CA."""
    ctx = ssl.create_default_context(cafile=str(j.ca))
    with socket.create_connection(("127.0.0.1", j.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def served_serial_unverified(port: int) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="jrd.test") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


if __name__ != "__main__":

    @pytest.fixture(scope="module")
    def jrd() -> Iterator[HarnessJrd]:
        j = HarnessJrd(short_tmp())
        j.start()
        yield j
        j.stop(signal.SIGTERM, timeout=60)
        shutil.rmtree(j.base, ignore_errors=True)


# --- own CA -------------------------------------------------------------------------------------


def test_forced_renewal_is_served_to_new_handshakes_within_a_second(jrd: HarnessJrd) -> None:
    jupyter_pid = jrd.supervisor_pid("jupyter")
    before = served_serial(jrd)
    result = jrd.renew(force=True)
    replied = time.monotonic()
    assert result["renewed"] and result["reason"] == "forced"
    new = int(result["serial"], 16)
    assert new != before
    wait_for(lambda: served_serial(jrd) == new, 1.0, "the new serial on a new handshake")
    print(f"new certificate on new handshakes {time.monotonic() - replied:.3f} s after the renewal returned")
    # The chain on disk is leaf + CA, and nginx sends both.
    chain = x509.load_pem_x509_certificates((jrd.state / "tls" / "server.pem").read_bytes())
    assert [c.serial_number for c in chain] == [new, x509.load_pem_x509_certificate(jrd.ca.read_bytes()).serial_number]
    # Jupyter was never restarted for it.
    assert jrd.supervisor_pid("jupyter") == jupyter_pid
    status = jrd.command("status")["certificates"]
    assert status["leaf"]["serial"] == result["serial"]
    assert status["renewals"]["success"] >= 1 and status["last_renewal_success"] > time.time() - 60
    assert "renewed the TLS certificate (forced)" in jrd.read_output()


def test_not_due_renewal_changes_nothing(jrd: HarnessJrd) -> None:
    # The certificate on disk, once every new handshake gets it: just after the previous test's renewal, an
    # nginx worker that is retiring may still take a new connection with the certificate before.
    disk = jrd.state / "tls" / "server.pem"
    before = x509.load_pem_x509_certificates(disk.read_bytes())[0].serial_number
    wait_for(lambda: all(served_serial(jrd) == before for _ in range(5)), 30, "every handshake to get it")
    result = jrd.renew(force=False)
    assert result["renewed"] is False and "not due until" in result["reason"]
    assert x509.load_pem_x509_certificates(disk.read_bytes())[0].serial_number == before
    assert [served_serial(jrd) for _ in range(5)] == [before] * 5


def test_continuous_fresh_connections_see_no_failure_during_renewals(jrd: HarnessJrd) -> None:
    with HandshakeLoad.to(jrd) as load:
        wait_for(lambda: load.ok >= 20, 30, "the load to get going")
        for _ in range(5):
            new = int(jrd.renew(force=True)["serial"], 16)
            wait_for(lambda: new in load.serials, 5, "the load to get the new certificate")
    failed = len(load.failures)
    assert load.failures == [], f"{failed} of {load.ok + failed} requests failed: {load.failures[:5]}"
    print(f"{load.ok} requests on fresh connections during 5 renewals, none failed")


def test_open_kernel_websocket_survives_renewal_and_still_runs_code(jrd: HarnessJrd) -> None:
    s = jrd.login()
    kernel = s.post(jrd.url("/api/kernels"), json={"name": "python3"}).json()
    ws = open_kernel_ws(jrd, s, kernel["id"])
    try:
        assert execute(ws, "x = 41; x") == "41"
        for _ in range(2):
            new = int(jrd.renew(force=True)["serial"], 16)
        wait_for(lambda: served_serial(jrd) == new, 1.0, "the new serial")
        assert ws.connected
        assert execute(ws, "x + 1") == "42"
    finally:
        ws.close()
        s.delete(jrd.url(f"/api/kernels/{kernel['id']}"))


def test_renewal_failing_halfway_keeps_the_old_pair_serving_and_is_retried(jrd: HarnessJrd) -> None:
    tls = jrd.state / "tls"
    old_pair = ((tls / "server.pem").read_bytes(), (tls / "server-key.pem").read_bytes())
    old_serial = served_serial(jrd)
    before = jrd.command("status")["certificates"]["renewals"]
    assert jrd.send({"fault": True})["ok"]
    try:
        reply = jrd.send({"name": "renew_cert", "args": {"force": True}})
        assert not reply["ok"] and "injected fault" in reply["error"]
        # The old pair is back on disk, matching, and still what new handshakes get.
        assert ((tls / "server.pem").read_bytes(), (tls / "server-key.pem").read_bytes()) == old_pair
        assert served_serial(jrd) == old_serial
        assert sorted(p.name for p in tls.iterdir()) == ["ca-key.pem", "ca.pem", "server-key.pem", "server.pem"]
        # Retries (1 s, 2 s, ... in the harness) keep failing while the fault lasts: counted, logged once.
        wait_for(lambda: jrd.command("status")["certificates"]["renewals"]["failure"] >= before["failure"] + 2, 15,
                 "a retry")
        status = jrd.command("status")["certificates"]
        assert "injected fault" in status["last_renewal_error"]
        assert served_serial(jrd) == old_serial
        assert jrd.read_output().count("TLS certificate renewal failed") == 1
    finally:
        jrd.send({"fault": False})
    # The next retry succeeds by itself, still forced, and the new pair is served.
    wait_for(lambda: jrd.command("status")["certificates"]["renewals"]["success"] > before["success"], 30,
             "the retry to succeed")
    wait_for(lambda: served_serial(jrd) != old_serial, 1.0, "the renewed certificate")
    status = jrd.command("status")["certificates"]
    assert status["last_renewal_error"] is None
    assert "renewal succeeded after" in jrd.read_output()


def test_keys_stay_private_after_renewals_and_unreadable_by_jupyter(jrd: HarnessJrd) -> None:
    jrd.renew(force=True)
    tls = jrd.state / "tls"
    assert tls.stat().st_mode & 0o077 == 0
    for name in ("ca-key.pem", "server-key.pem"):
        assert (tls / name).stat().st_mode & 0o777 == 0o600, name
        if os.geteuid() == 0 and jrd.user != "root":
            res = subprocess.run(["runuser", "-u", jrd.user, "--", "cat", str(tls / name)], capture_output=True)
            assert res.returncode != 0 and not res.stdout, f"{jrd.user} can read {name}"


def test_renewal_on_a_full_disk_keeps_the_old_pair_serving() -> None:
    """A tiny tmpfs over the TLS dir, filled up: writing the new pair fails with ENOSPC."""
    j = HarnessJrd(short_tmp())
    tls = j.state / "tls"
    # The CA and a leaf for the config as it is (what a first start makes), before the tmpfs goes over them.
    from jrd.config import load_config, system_defaults
    from jrd.layout import Layout
    from jrd.tls import certs
    from jrd.tls.bootstrap import ensure_tls

    config = load_config(j.config_path, base=system_defaults())
    ensure_tls(config, Layout.of(config), certs.utcnow())
    saved = {p.name: p.read_bytes() for p in tls.iterdir()}
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k,mode=0700", "tmpfs", str(tls)], check=True)
    try:
        for name, data in saved.items():
            (tls / name).write_bytes(data)
            (tls / name).chmod(0o600 if "key" in name else 0o644)
        j.start()
        old_serial = served_serial(j)
        fd = os.open(tls / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 1024)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        reply = j.send({"name": "renew_cert", "args": {"force": True}})
        assert not reply["ok"] and "No space left on device" in reply["error"], reply
        assert served_serial(j) == old_serial
        assert {p.name: p.read_bytes() for p in tls.iterdir() if p.name != "filler"} == saved
        (tls / "filler").unlink()
        wait_for(lambda: served_serial(j) != old_serial, 15, "the retry after space was freed")
    finally:
        j.stop(signal.SIGTERM, timeout=60)
        subprocess.run(["umount", str(tls)], check=False)
        shutil.rmtree(j.base, ignore_errors=True)


# --- external certificates (certbot-style symlinks), through the real `jrd run` ----------------------

JRD_BIN = str(Path(sys.executable).parent / "jrd")


class Certbot:
    """A certbot-like layout: live/NAME/{fullchain,privkey}.pem are symlinks into archive/NAME/."""

    def __init__(self, base: Path):
        from jrd.tls import certs

        self.certs = certs
        self.archive = base / "letsencrypt" / "archive" / "jrd.test"
        self.live = base / "letsencrypt" / "live" / "jrd.test"
        self.archive.mkdir(parents=True)
        self.live.mkdir(parents=True)
        now = certs.utcnow()
        import datetime as dt

        self.ca, self.ca_key = certs.make_ca(now, dt.timedelta(days=3650), hostname="fake-acme")
        self.ca_file = base / "fake-acme-ca.pem"
        self.ca_file.write_bytes(certs.pem(self.ca))
        self.policy = certs.LeafPolicy(("jrd.test", "localhost"), ("127.0.0.1",))
        self.version = 0
        self.serials: dict[int, int] = {}

    def issue(self) -> int:
        """A new pair in archive/ (certbot's fullchainN.pem / privkeyN.pem); returns N."""
        self.version += 1
        cert, key = self.certs.make_leaf(self.ca, self.ca_key, self.policy, self.certs.utcnow())
        n = self.version
        (self.archive / f"fullchain{n}.pem").write_bytes(self.certs.pem(cert) + self.certs.pem(self.ca))
        (self.archive / f"privkey{n}.pem").write_bytes(self.certs.key_pem(key))
        (self.archive / f"privkey{n}.pem").chmod(0o600)
        self.serials[n] = cert.serial_number
        return n

    def flip(self, chain: int, key: int) -> None:
        """Point live/ at archive version `chain` and `key`, each symlink replaced atomically."""
        for name, n in (("privkey", key), ("fullchain", chain)):
            tmp = self.live / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(Path("../../archive/jrd.test") / f"{name}{n}.pem")
            os.replace(tmp, self.live / f"{name}.pem")


if __name__ != "__main__":

    @pytest.fixture(scope="module")
    def external() -> Iterator[tuple[Jrd, Certbot]]:
        base = short_tmp()
        bot = Certbot(base)
        bot.flip(*(2 * [bot.issue()]))
        j = Jrd(base)
        # The usual [tls] names stay; only the certificate files come from outside.
        j.write_config(tls=f'cert_file = "{bot.live}/fullchain.pem"\nkey_file = "{bot.live}/privkey.pem"\n')
        j.start()
        yield j, bot
        j.stop(signal.SIGTERM, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def external_serial(j: Jrd, bot: Certbot) -> int:
    ctx = ssl.create_default_context(cafile=str(bot.ca_file))
    with socket.create_connection(("127.0.0.1", j.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="jrd.test") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_external_symlink_flip_is_picked_up_on_reload(external: tuple[Jrd, Certbot]) -> None:
    j, bot = external
    assert external_serial(j, bot) == bot.serials[1]
    assert not (j.state / "tls" / "ca.pem").exists(), "jrd makes no CA of its own in external mode"
    n = bot.issue()
    bot.flip(n, n)
    j.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: external_serial(j, bot) == bot.serials[n], 15, "the flipped certificate to be served")
    # nginx's new workers may answer a moment before jrd logs the reload it finished.
    wait_for(lambda: "external certificate changed" in j.read_output(), 15, "jrd to log the change")
    # jrd never wrote the external files.
    assert all(p.is_symlink() for p in bot.live.iterdir())


def test_external_flip_to_a_mismatched_pair_is_refused(external: tuple[Jrd, Certbot]) -> None:
    j, bot = external
    serving = external_serial(j, bot)
    good = max(bot.serials)
    bad = bot.issue()
    bot.flip(bad, good)  # a new chain with the old key: what a half-finished flip looks like
    refusals = j.read_output().count("refused")
    j.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: j.read_output().count("refused") > refusals, 15, "the reload to be refused")
    assert "does not match the certificate" in j.read_output()
    assert external_serial(j, bot) == serving
    assert j.proc.poll() is None
    # Once the flip is complete, the next reload takes it.
    bot.flip(bad, bad)
    j.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: external_serial(j, bot) == bot.serials[bad], 15, "the completed flip to be served")


def test_external_flip_is_picked_up_by_the_file_watcher_without_sighup(external: tuple[Jrd, Certbot]) -> None:
    j, bot = external
    n = bot.issue()
    bot.flip(n, n)
    wait_for(lambda: external_serial(j, bot) == bot.serials[n], 15, "the watcher to reload the flipped certificate")
    # A mismatched flip seen by the watcher is refused as well, and the pair that works keeps serving.
    refusals = j.read_output().count("refused")
    bad = bot.issue()
    bot.flip(bad, n)
    wait_for(lambda: j.read_output().count("refused") > refusals, 15, "the watcher's reload to be refused")
    assert external_serial(j, bot) == bot.serials[n]
    bot.flip(bad, bad)
    wait_for(lambda: external_serial(j, bot) == bot.serials[bad], 15, "the completed flip to be served")


def test_jrdctl_reports_the_external_certificate(external: tuple[Jrd, Certbot]) -> None:
    j, bot = external
    res = j.jrdctl("cert", "show", "--json")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert int(shown["leaf"]["serial"], 16) == external_serial(j, bot)
    assert "ca" not in shown
    res = j.jrdctl("cert", "renew", "--force")
    assert res.returncode == 0 and "external" in res.stdout + res.stderr, res


def test_a_clock_jump_past_expiry_renews_at_once() -> None:
    """A VM stopped for months wakes with a clock far ahead: the leaf is renewed within seconds, not hours."""
    j = HarnessJrd(short_tmp())
    j.start()
    try:
        old = served_serial(j)
        assert j.send({"clock_offset_days": 120})["ok"]  # the 90-day leaf is now expired
        # Unverified: the new leaf starts 120 days from the machine's own clock.
        wait_for(lambda: served_serial_unverified(j.port) != old, 30, "a new certificate after the clock jump")
        wait_for(lambda: "the clock moved" in j.read_output(), 10, "the jump to be logged")
    finally:
        j.stop(signal.SIGTERM, timeout=60)
        shutil.rmtree(j.base, ignore_errors=True)

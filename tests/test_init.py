"""`jrd init`: the pure parts (suggestions, the config writer, the metadata probe) and real runs into a scratch dir."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import io
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import JRD, ensure_test_user, free_port, short_tmp
from jrd import config as config_module
from jrd import init
from jrd.config import Config, parse_config, system_defaults
from jrd.errors import UsageError
from jrd.tls import certs

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)


# --- the config writer ------------------------------------------------------------------------


def test_every_key_has_its_comment_in_the_example() -> None:
    descriptions = init.key_descriptions(init.example_config())
    for sec in dataclasses.fields(Config):
        if sec.name == "source":
            continue
        for key in dataclasses.fields(sec.default_factory()):  # type: ignore[misc]
            lines = descriptions.get((sec.name, key.name))
            assert lines and all(line.startswith("#") for line in lines), f"[{sec.name}] {key.name} has no comment"
    # A key in a group shares the prose above the group; the next prose starts afresh.
    assert descriptions[("jupyter", "restart_max_wait_seconds")] == descriptions[("jupyter", "restart_policy")]
    assert descriptions[("tls", "renew_before_days")][0].startswith("# ... or when fewer")


def test_the_packaged_example_is_etc_jrd_toml() -> None:
    assert init.example_config() == (Path(__file__).resolve().parent.parent / "etc" / "jrd.toml").read_text()


def odd_config() -> Config:
    base = system_defaults("vm")
    return dataclasses.replace(
        base,
        jupyter=dataclasses.replace(base.jupyter, user="", root_dir=Path("/srv/my notebooks/it's 100%"),
                                    extra_args=('--ServerApp.terminals_enabled=False', 'say "hi" \\ there'),
                                    restart_max_wait_seconds=90.5),
        nginx=dataclasses.replace(base.nginx, port=9443, gzip=False, listen=("0.0.0.0", "[::]")),
        tls=dataclasses.replace(base.tls, names=(), ip_addresses=("203.0.113.7", "2001:db8::7"),
                                renew_when_remaining=0.25),
        idle=dataclasses.replace(base.idle, shutdown_after_minutes=45.0, command=("/usr/local/sbin/stop", "now")),
        paths=dataclasses.replace(base.paths, state_dir=Path("/data/jrd state")),
    )


def test_written_config_reads_back_as_the_same_config_with_only_what_differs() -> None:
    base = system_defaults("vm")
    config = odd_config()
    text = init.config_text(config, base, init.key_descriptions(init.example_config()), "header\nsecond line")
    assert parse_config(text, base=base) == config
    keys = [line for line in text.splitlines() if line and not line.startswith(("#", "["))]
    assert len(keys) == len(init.differing(config, base)) == 12
    assert not any(line.startswith(("app =", "binary =", "key_type =")) for line in keys)
    # Each key right under its comment.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line in keys:
            assert lines[i - 1].startswith("# "), line
    assert lines[:2] == ["# header", "# second line"]


def test_nothing_differs_nothing_written() -> None:
    base = system_defaults("vm")
    text = init.config_text(base, base, {}, "only the header")
    assert text == "# only the header\n"
    assert parse_config(text, base=base) == base


def test_toml_values_escape_what_toml_needs() -> None:
    for value in ['say "hi"', "back\\slash", "tab\there", "del\x7f", "é ünïcode", ""]:
        assert tomllib.loads(f"k = {init.toml_value(value)}")["k"] == value
    assert tomllib.loads(f"k = {init.toml_value((1 / 3, True, 7))}")["k"] == [1 / 3, True, 7]


# --- suggestions --------------------------------------------------------------------------------

IP_JSON = json.dumps([
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"}]},
    {"ifname": "eth0", "addr_info": [
        {"family": "inet", "local": "10.0.0.4", "scope": "global"},
        {"family": "inet6", "local": "2001:db8::4", "scope": "global"},
        {"family": "inet6", "local": "2001:db8::abcd", "scope": "global", "temporary": True},
        {"family": "inet6", "local": "fe80::1", "scope": "link"},
    ]},
    {"ifname": "docker0", "addr_info": [{"family": "inet", "local": "172.17.0.1", "scope": "global"}]},
    {"ifname": "tailscale0", "addr_info": [{"family": "inet", "local": "100.64.0.9", "scope": "global"}]},
])


def test_interface_addresses_skip_loopback_link_local_temporary_and_containers() -> None:
    assert init.interface_addresses(IP_JSON) == ["10.0.0.4", "2001:db8::4", "100.64.0.9"]
    assert init.interface_addresses("not json") == []


def test_suggest_puts_the_public_address_first_and_drops_what_no_device_uses() -> None:
    names, ips = init.suggest("MyVM", ["10.0.0.4", "93.184.216.34", "127.0.0.1", "fe80::1"], "93.184.216.34")
    assert names == ("myvm",)
    assert ips == ("93.184.216.34", "10.0.0.4")
    assert init.suggest("localhost", [], None) == ((), ())
    assert init.suggest("bad_name!", ["10.0.0.4"], None) == ((), ("10.0.0.4",))


# --- the cloud metadata probe ---------------------------------------------------------------------


class FakeMetadata(http.server.BaseHTTPRequestHandler):
    """A cloud's metadata service on loopback: GCE-style (needs its header) or AWS IMDSv2 (needs a token)."""

    answers: dict[str, str] = {}

    def do_PUT(self) -> None:  # noqa: N802
        if self.path == "/latest/api/token" and "aws" in self.answers:
            self._send(200, "tok123")
        else:
            self._send(404, "")

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/computeMetadata/") and self.headers.get("Metadata-Flavor") == "Google":
            self._send(200, self.answers.get("gce", ""), ok="gce" in self.answers)
        elif self.path == "/latest/meta-data/public-ipv4" and self.headers.get("X-aws-ec2-metadata-token") == "tok123":
            self._send(200, self.answers["aws"], ok="aws" in self.answers)
        else:
            self._send(404, "")

    def _send(self, status: int, body: str, ok: bool = True) -> None:
        status = status if ok else 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[tuple[tuple[str, int], type[FakeMetadata]]]:
    handler = type("Handler", (FakeMetadata,), {"answers": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ("127.0.0.1", server.server_address[1]), handler
    server.shutdown()
    server.server_close()


def test_metadata_probe_reads_the_public_address(metadata: Any) -> None:
    address, handler = metadata
    handler.answers["gce"] = "93.184.216.34"
    assert init.public_ip_from_metadata(address, timeout=2) == "93.184.216.34"


def test_metadata_probe_speaks_imdsv2(metadata: Any) -> None:
    address, handler = metadata
    handler.answers["aws"] = "93.184.216.35"
    assert init.public_ip_from_metadata(address, timeout=2) == "93.184.216.35"


def test_metadata_probe_refuses_a_private_or_garbled_answer(metadata: Any) -> None:
    address, handler = metadata
    handler.answers["gce"] = "10.1.2.3"
    assert init.public_ip_from_metadata(address, timeout=2) is None
    handler.answers["gce"] = "<html>captive portal</html>"
    assert init.public_ip_from_metadata(address, timeout=2) is None


def test_metadata_probe_returns_at_once_when_nothing_listens() -> None:
    start = time.monotonic()
    assert init.public_ip_from_metadata(("127.0.0.1", free_port()), timeout=5) is None
    assert time.monotonic() - start < 2.5  # half the timeout: it did not wait


def test_metadata_probe_never_hangs_on_a_service_that_does_not_answer() -> None:
    """A listener that accepts and then says nothing: the probe gives up within its timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        start = time.monotonic()
        assert init.public_ip_from_metadata(silent.getsockname(), timeout=1) is None
        elapsed = time.monotonic() - start
    assert elapsed < 2, elapsed


# --- asking (no files changed) ------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def console(answers: list[str], secrets: list[str] | None = None, tty: bool = True) -> tuple[init.Console, list[str]]:
    said: list[str] = []
    asked = iter(answers)
    secret = iter(secrets or [""])

    def ask(prompt: str) -> str:
        said.append(prompt)
        return next(asked)

    return init.Console(ask=ask, ask_secret=lambda p: next(secret), stdin=Tty() if tty else io.StringIO(),
                        out=said.append), said


def plan(opts: init.Options, c: init.Console, as_root: bool = True) -> init.Plan:
    return init.plan(opts, c, NOW, as_root=as_root, hostname="vm", addresses=lambda: ["10.0.0.4"],
                     public_ip=lambda: "93.184.216.34")


def test_interactive_answers_with_suggestions_as_defaults(tmp_path: Path) -> None:
    user = ensure_test_user()
    c, said = console(["", "10.0.0.4, 93.184.216.34", "nope", "9443", user, str(tmp_path / "nb")])
    p = plan(init.Options(config_path=tmp_path / "jrd.toml", state_dir=str(tmp_path / "state")), c)
    assert said[0] == "DNS names for the certificate (comma-separated; - for none) [vm]: "
    assert "[93.184.216.34, 10.0.0.4]" in said[1]
    assert any("between 1 and 65535" in s for s in said), said  # "nope" was asked again
    assert p.config.tls.names == ("vm",) and p.config.tls.ip_addresses == ("10.0.0.4", "93.184.216.34")
    assert p.config.nginx.port == 9443 and p.config.jupyter.user == user
    assert p.hashed_password == ""  # empty: one is generated when it is carried out
    assert not (tmp_path / "jrd.toml").exists() and not (tmp_path / "state").exists()


def test_a_second_run_refuses_before_asking_anything(tmp_path: Path) -> None:
    (tmp_path / "jrd.toml").write_text("")
    c, said = console([])
    with pytest.raises(UsageError, match=r"already exists, so jrd init changed nothing; .* `jrd init --force`"):
        plan(init.Options(config_path=tmp_path / "jrd.toml"), c)
    assert said == []


@pytest.mark.parametrize("opts, tty, message", [
    (dict(password_stdin=True), True, "--password-stdin needs --yes"),
    (dict(), False, "no terminal to ask on; give the answers as flags and add --yes"),
    (dict(yes=True, ips=("999.1.1.1",)), True, "--ip '999.1.1.1' is invalid: it must be an IP address"),
    (dict(yes=True, names=("*.example.com",)), True, "--name '\\*.example.com' is invalid"),
    (dict(yes=True, port=0), True, "--port 0 is invalid: it must be between 1 and 65535"),
    (dict(yes=True, user="no such;user"), True, "--user 'no such;user' is invalid"),
    (dict(yes=True, user=""), True, "as root, Jupyter needs an account of its own"),
    (dict(yes=True, root_dir="relative/dir"), True, "--root-dir 'relative/dir' is invalid: it must be an absolute"),
])
def test_bad_answers_are_one_sentence_before_anything_changes(tmp_path: Path, opts: dict[str, Any], tty: bool,
                                                              message: str) -> None:
    c, _ = console([], tty=tty)
    with pytest.raises(UsageError, match=message):
        plan(init.Options(config_path=tmp_path / "jrd.toml", **opts), c)
    assert list(tmp_path.iterdir()) == []


def test_acme_is_chosen_with_its_keys_and_nothing_else(tmp_path: Path) -> None:
    user = ensure_test_user()
    opts = init.Options(config_path=tmp_path / "jrd.toml", yes=True, names=("vm.example.com",),
                        ips=("93.184.216.34",), user=user, acme=True, email="me@example.com")
    p = plan(opts, console([])[0])
    assert p.config.tls.mode == "acme" and p.config.acme.email == "me@example.com"
    assert p.config.acme_identifiers == (("vm.example.com",), ("93.184.216.34",))
    written = config_module.parse_config(p.text, base=config_module.system_defaults("vm"))
    assert written.tls.mode == "acme" and written.acme.email == "me@example.com"
    assert written.acme.directory_url == config_module.AcmeConfig().directory_url
    assert 'mode = "acme"' in p.text and "directory_url" not in p.text  # only what differs
    with pytest.raises(UsageError, match="--email and --acme-directory go with --acme"):
        plan(init.Options(config_path=tmp_path / "jrd.toml", yes=True, user=user, email="me@example.com"),
             console([])[0])
    with pytest.raises(UsageError, match="--email 'not an address' is invalid"):
        plan(init.Options(config_path=tmp_path / "jrd.toml", yes=True, user=user, acme=True, email="not an address"),
             console([])[0])


def test_a_missing_account_needs_root_or_a_yes(tmp_path: Path) -> None:
    c, _ = console(["n"])
    ghost = f"jrdghost{uuid.uuid4().hex[:6]}"
    with pytest.raises(UsageError, match=f"the account '{ghost}' does not exist; create it"):
        plan(init.Options(config_path=tmp_path / "jrd.toml", names=("vm",), ips=("-",), port=9443,
                          user=ghost, root_dir=""), c)
    with pytest.raises(UsageError, match="create it as root"):
        plan(init.Options(config_path=tmp_path / "jrd.toml", yes=True, user=ghost), c, as_root=False)
    p = plan(init.Options(config_path=tmp_path / "jrd.toml", yes=True, user=ghost), c)
    assert p.create_user == ghost


# --- real runs ----------------------------------------------------------------------------------


def jrd_init(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JRD, "init", *args], input=input, capture_output=True, text=True, timeout=60)


def snapshot(base: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(base)): (p.stat().st_mtime_ns, p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(base.rglob("*"))}


def ca_fingerprint(state: Path) -> str:
    return certs.fingerprint(certs.load_cert(state / "tls" / "ca.pem"))


def check_in_own_network(config: Path) -> subprocess.CompletedProcess[str]:
    """`jrd check` where the default ports it also wants (Jupyter's 8889, the metrics' 9839) are surely free.

    Other jrds on this machine (`make run`) may hold them; in a network namespace of its own
    (root only) only this check is there.
    """
    cmd = [JRD, "check", "--config", str(config)]
    if os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def scratch() -> Iterator[Path]:
    base = short_tmp()
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_init_from_flags_then_check_rerun_force_and_new_ca(scratch: Path) -> None:
    user = ensure_test_user()
    conf, state, nb = scratch / "etc" / "jrd.toml", scratch / "state", scratch / "notebooks"
    port = free_port()
    flags = ["--config", str(conf), "--state-dir", str(state), "--root-dir", str(nb), "--port", str(port),
             "--user", user, "--name", "jrd.test", "--ip", "192.0.2.10,2001:db8::10", "--yes"]
    res = jrd_init(*flags, "--password-stdin", input="correct horse battery staple\n")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    fingerprint = ca_fingerprint(state)
    assert fingerprint in out and f"https://jrd.test:{port}/lab" in out
    assert "Firewall:" in out and "iPadOS / iOS" in out and "Certificate Trust Settings" in out
    assert "correct horse" not in out + res.stderr  # a password given is never shown
    # Only what differs from the defaults, each key under its comment; jrd itself loads it.
    text = conf.read_text()
    keys = [line.split(" = ")[0] for line in text.splitlines() if line and not line.startswith(("#", "["))]
    assert sorted(keys) == sorted(["root_dir", "user", "port", "names", "ip_addresses", "state_dir"])
    lines = text.splitlines()
    assert all(lines[i - 1].startswith("# ") for i, line in enumerate(lines) if line.split(" = ")[0] in keys)
    loaded = config_module.load_config(conf, base=system_defaults())
    assert loaded.tls.ip_addresses == ("192.0.2.10", "2001:db8::10") and loaded.nginx.port == port
    check = check_in_own_network(conf)
    assert check.returncode == 0, check.stderr
    # Secrets private; the notebook dir the account's.
    for secret in ("tls/ca-key.pem", "tls/server-key.pem", "password"):
        assert stat.S_IMODE((state / secret).stat().st_mode) == 0o600, secret
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert nb.stat().st_uid == pwd.getpwnam(user).pw_uid

    # Again: refused in one sentence, nothing changed.
    before = snapshot(scratch)
    again = jrd_init(*flags, "--password-stdin", input="another password\n")
    assert again.returncode == 2 and again.stdout == ""
    assert len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr
    assert snapshot(scratch) == before

    # --force: the CA stays (devices stay trusted), the password too; a new port is written.
    other = free_port()
    forced = jrd_init("--config", str(conf), "--yes", "--force", "--port", str(other))
    assert forced.returncode == 0, forced.stderr
    assert ca_fingerprint(state) == fingerprint and "kept, so devices that trust it still do" in forced.stdout
    assert (state / "password").read_bytes() == before["state/password"][2]
    assert f"port = {other}" in conf.read_text() and "Log in with the password you set" in forced.stdout

    # --new-ca: a new CA, and the leaf is issued by it.
    renewed = jrd_init("--config", str(conf), "--yes", "--force", "--new-ca")
    assert renewed.returncode == 0, renewed.stderr
    assert ca_fingerprint(state) != fingerprint and "every device must trust it again" in renewed.stdout
    assert certs.issued_by(certs.load_cert(state / "tls" / "server.pem"), certs.load_cert(state / "tls" / "ca.pem"))


def test_init_generates_a_password_and_shows_it_once(scratch: Path) -> None:
    conf, state = scratch / "jrd.toml", scratch / "state"
    flags = ["--config", str(conf), "--state-dir", str(state), "--user", ensure_test_user(), "--name", "jrd.test",
             "--ip", "-", "--yes"]
    res = jrd_init(*flags)
    assert res.returncode == 0, res.stderr
    shown = re.search(r"Log in with the password  (\S+)  \(shown this once", res.stdout)
    assert shown, res.stdout
    initial = state / "initial-password"
    assert initial.read_text().strip() == shown.group(1)
    assert stat.S_IMODE(initial.stat().st_mode) == 0o600
    again = jrd_init(*flags, "--force")
    assert again.returncode == 0, again.stderr
    assert shown.group(1) not in again.stdout and str(initial) in again.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="creating an account needs root")
def test_init_creates_the_notebook_account_when_asked(scratch: Path) -> None:
    name = f"jrdinit{uuid.uuid4().hex[:6]}"
    try:
        res = jrd_init("--config", str(scratch / "jrd.toml"), "--state-dir", str(scratch / "state"), "--user", name,
                       "--name", "jrd.test", "--ip", "-", "--port", str(free_port()), "--yes")
        assert res.returncode == 0, res.stderr
        assert f"Jupyter runs as {name} (account created); notebooks in /home/{name}" in res.stdout
        assert Path(pwd.getpwnam(name).pw_dir).is_dir()
        assert f'user = "{name}"' in (scratch / "jrd.toml").read_text()
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)


def test_init_bad_flag_is_one_line_and_writes_nothing(scratch: Path) -> None:
    res = jrd_init("--config", str(scratch / "jrd.toml"), "--state-dir", str(scratch / "state"),
                   "--user", ensure_test_user(), "--ip", "999.1.1.1", "--yes")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "jrd: --ip '999.1.1.1' is invalid: it must be an IP address such as '203.0.113.7' (without a %zone)"]
    assert list(scratch.iterdir()) == []

"""`jrd doctor`: the verdicts and the firewall parsers with fakes, then a real running jrd and a broken setup."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import JRD, JRDCTL, Jrd, wait_for
from jrd import doctor, firewall
from jrd.doctor import OK, PROBLEM, WARNING, FileFacts, Finding
from jrd.errors import ConfigError
from jrd.render import Account
from jrd.tls import certs
from test_fsutil_and_check import rejecting_nginx

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


# --- firewalls ----------------------------------------------------------------------------------

UFW = """Status: active
Logging: on (low)
Default: {default} (incoming), allow (outgoing), disabled (routed)
New profiles: skip

To                         Action      From
--                         ------      ----
22/tcp                     ALLOW IN    Anywhere
Nginx Full                 ALLOW IN    Anywhere
9000:9100/tcp              ALLOW IN    Anywhere
8888                       ALLOW IN    10.0.0.0/8
7777/tcp                   DENY IN     Anywhere
7777/tcp                   ALLOW IN    Anywhere
22/tcp (v6)                ALLOW IN    Anywhere (v6)
"""


@pytest.mark.parametrize("port, default, allows", [
    (22, "deny", True), (9050, "deny", True), (8888, "deny", False), (7777, "allow", False), (8888, "allow", True),
])
def test_ufw_first_match_from_anywhere_then_the_default(port: int, default: str, allows: bool) -> None:
    fw = firewall.ufw_verdict(UFW.format(default=default), port)
    assert fw.kind == "ufw" and fw.allows is allows
    if not allows and port == 8888:
        assert fw.open_command == "ufw allow 8888/tcp"


def test_firewalld_open_ports() -> None:
    assert firewall.firewalld_verdict("22/tcp 8000-9000/tcp 53/udp", 8888).allows is True
    blocked = firewall.firewalld_verdict("22/tcp 53/udp", 8888)
    assert blocked.allows is False and "--add-port=8888/tcp" in blocked.open_command


def nft(rules: list[list[dict[str, Any]]], policy: str = "drop", extra: list[dict[str, Any]] | None = None) -> str:
    items: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}},
                                   {"table": {"family": "inet", "name": "filter"}},
                                   {"chain": {"family": "inet", "table": "filter", "name": "input", "type": "filter",
                                              "hook": "input", "prio": 0, "policy": policy}}]
    items += [{"rule": {"family": "inet", "table": "filter", "chain": "input", "expr": e}} for e in rules]
    return json.dumps({"nftables": items + (extra or [])})


def dport(right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": right}}


ESTABLISHED = [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
               {"accept": None}]
LOOPBACK = [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": None}]


def test_nft_a_debian_style_ruleset() -> None:
    ssh_only = nft([ESTABLISHED, LOOPBACK, [dport(22), {"accept": None}]])
    blocked = firewall.nft_verdict(ssh_only, 8888)
    assert blocked.kind == "nftables" and blocked.allows is False
    assert blocked.open_command.startswith("nft insert rule inet filter input tcp dport 8888 accept")
    assert firewall.nft_verdict(nft([ESTABLISHED, [dport({"set": [22, 8888]}), {"accept": None}]]), 8888).allows
    assert firewall.nft_verdict(nft([[dport({"range": [8000, 9000]}), {"accept": None}]]), 8888).allows
    # A source-restricted accept does not let everyone in; a named set cannot be told.
    from_lan = [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"accept": None}]
    assert firewall.nft_verdict(nft([from_lan]), 8888).allows is False
    assert firewall.nft_verdict(nft([[dport("@allowed"), {"accept": None}]]), 8888).allows is None


def test_nft_jumps_policies_and_empty_rulesets() -> None:
    jump = nft([[{"jump": {"target": "mine"}}]],
               extra=[{"chain": {"family": "inet", "table": "filter", "name": "mine"}},
                      {"rule": {"family": "inet", "table": "filter", "chain": "mine",
                                "expr": [dport(8888), {"accept": None}]}}])
    assert firewall.nft_verdict(jump, 8888).allows is True
    assert firewall.nft_verdict(jump, 8889).allows is False
    assert firewall.nft_verdict(nft([[{"drop": None}]], policy="accept"), 8888).allows is False
    assert firewall.nft_verdict(nft([], policy="accept"), 8888) == firewall.NONE
    assert firewall.nft_verdict('{"nftables": [{"metainfo": {}}]}', 8888) == firewall.NONE


def test_detect_asks_ufw_then_firewalld_then_nft_and_a_missing_tool_is_no_firewall() -> None:
    def runner(answers: dict[str, tuple[int, str]]) -> firewall.Run:
        return lambda argv: answers.get(argv[0])

    assert firewall.detect(8888, runner({})) == firewall.NONE
    inactive = {"ufw": (0, "Status: inactive\n"), "firewall-cmd": (252, "not running\n")}
    assert firewall.detect(8888, runner(inactive)) == firewall.NONE
    assert firewall.detect(8888, runner({"ufw": (0, UFW.format(default="deny"))})).allows is False
    denied = firewall.detect(8888, runner({"nft": (1, "Operation not permitted")}))
    assert denied.kind == "nftables" and denied.allows is None and "as root" in denied.detail


# --- verdicts -----------------------------------------------------------------------------------


def ca_and_leaf(issued: dt.datetime, days: int = 90, names: tuple[str, ...] = ("jrd.test",)) -> tuple[Any, Any]:
    ca, ca_key = certs.make_ca(issued - 10 * DAY, dt.timedelta(days=3650), "test")
    policy = certs.LeafPolicy(dns_names=names, ip_addresses=("127.0.0.1",), lifetime=dt.timedelta(days=days))
    leaf, _ = certs.make_leaf(ca, ca_key, policy, issued)
    return ca, leaf


def not_due() -> certs.Renewal:
    return certs.Renewal(False, "valid", NOW)


@pytest.mark.parametrize("issued, level, words", [
    (NOW - 10 * DAY, OK, "chain verifies up to the local CA"),
    (NOW - 100 * DAY, PROBLEM, "expired on"),
    (NOW + 2 * DAY, PROBLEM, "the clock is behind it"),
])
def test_own_chain(issued: dt.datetime, level: str, words: str) -> None:
    ca, leaf = ca_and_leaf(issued)
    f = doctor.own_chain_verdict([leaf, ca], ca, NOW, not_due(), running=False)
    assert f.level == level and words in f.message, f
    if level == PROBLEM:
        assert f.fix


def test_own_chain_from_another_ca_and_due() -> None:
    ca, leaf = ca_and_leaf(NOW - 10 * DAY)
    other, _ = ca_and_leaf(NOW - 10 * DAY)
    assert "not issued by the local CA" in doctor.own_chain_verdict([leaf], other, NOW, not_due(), True).message
    due = doctor.own_chain_verdict([leaf, ca], ca, NOW, certs.Renewal(True, "5.0 days left", NOW), running=True)
    assert due.level == WARNING and "at its next check" in due.message


def test_names_covered_and_wildcards_only_for_external() -> None:
    _, leaf = ca_and_leaf(NOW, names=("jrd.test", "*.example.com"))
    assert doctor.names_verdict(leaf, ("jrd.test", "127.0.0.1"), external=False).level == OK
    missing = doctor.names_verdict(leaf, ("jrd.test", "other.test", "192.0.2.1"), external=False)
    assert missing.level == PROBLEM and "other.test, 192.0.2.1" in missing.message and "jrdctl reload" in missing.fix
    assert doctor.names_verdict(leaf, ("lab.example.com",), external=True).level == OK
    assert doctor.names_verdict(leaf, ("a.lab.example.com",), external=True).level == PROBLEM


def test_external_chain_out_of_order_and_close_to_expiry() -> None:
    ca, leaf = ca_and_leaf(NOW - 80 * DAY)
    assert doctor.external_chain_verdict([ca, leaf], NOW).level == PROBLEM
    soon = doctor.external_chain_verdict([leaf, ca], NOW)
    assert soon.level == WARNING and "expires in" in soon.message and "certbot renew" in soon.fix


def test_served_certificate_compared_by_der() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    _, a = ca_and_leaf(NOW)
    _, b = ca_and_leaf(NOW)
    der_a, der_b = a.public_bytes(Encoding.DER), b.public_bytes(Encoding.DER)
    assert doctor.served_verdict(der_a, der_a, 8888).level == OK
    f = doctor.served_verdict(der_b, der_a, 8888)
    assert f.level == PROBLEM and format(b.serial_number, "x") in f.message and "jrdctl restart nginx" in f.fix


def test_acme_certificate_served_expired_or_another() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    _, acme = ca_and_leaf(NOW - 2 * DAY, days=6, names=("vm.example.com",))
    _, local = ca_and_leaf(NOW)
    der, local_der = acme.public_bytes(Encoding.DER), local.public_bytes(Encoding.DER)
    ok = doctor.acme_served_verdict(der, der, acme, NOW)
    assert ok.level == OK and "for the public name, 4.0 days left" in ok.message
    assert doctor.acme_served_verdict(None, der, acme, NOW).level == OK  # not running: only what is on disk
    other = doctor.acme_served_verdict(local_der, der, acme, NOW)
    assert other.level == PROBLEM and format(local.serial_number, "x") in other.message and other.fix
    expired = doctor.acme_served_verdict(der, der, acme, NOW + 5 * DAY)
    assert expired.level == PROBLEM and "expired 1.0 days ago" in expired.message


def test_acme_checks_are_only_for_acme_mode(tmp_path: Path) -> None:
    from jrd.config import parse_config
    from jrd.layout import Layout

    cfg = parse_config(f'[paths]\nstate_dir = "{tmp_path}/s"\nruntime_dir = "{tmp_path}/r"\n')
    assert doctor.check_acme(doctor.Machine(cfg, Layout.of(cfg), NOW)) == []
    acme = parse_config(f'[tls]\nmode = "acme"\nnames = ["vm.example.com"]\n[acme]\nhttp_port = 1\n'
                        f'[paths]\nstate_dir = "{tmp_path}/s"\nruntime_dir = "{tmp_path}/r"\n')
    found = doctor.check_acme(doctor.Machine(acme, Layout.of(acme), NOW))
    assert [(f.name, f.level) for f in found] == [("http-01 port", OK), ("ACME certificate", WARNING)], found


def test_port_and_distro_nginx() -> None:
    assert doctor.port_verdict(8888, (101, "nginx"), 100, 100).level == OK  # a worker of jrd's master
    other = doctor.port_verdict(8888, (555, "python3"), 100, 555)
    assert other.level == PROBLEM and "pid 555 (python3)" in other.message
    held = doctor.distro_nginx_verdict(8888, True, 300, (301, "nginx"), 300)
    assert held.level == PROBLEM and "systemctl disable --now nginx" in held.fix
    assert doctor.distro_nginx_verdict(8888, True, 300, (101, "nginx"), 100).level == OK


def test_notebook_dir_owner_and_modes() -> None:
    acct = Account("jupyter", 1000, 1000, Path("/home/jupyter"))
    st = os.stat_result((0o40755, 0, 0, 0, 0, 0, 0, 0, 0, 0))  # root-owned directory
    wrong = doctor.notebook_dir_verdict(Path("/srv/nb"), st, acct, writable=False)
    assert wrong.level == PROBLEM and "owned by root, not by jupyter" in wrong.message
    assert wrong.fix == "`chown -R jupyter: /srv/nb`"
    assert doctor.notebook_dir_verdict(Path("/srv/nb"), None, acct, False).level == WARNING
    facts = [FileFacts(Path("/s"), 0o755, 0, False), FileFacts(Path("/s/tls/server-key.pem"), 0o644, 0, True),
             FileFacts(Path("/s/password"), 0o600, 1000, True)]
    f = doctor.modes_verdict(facts, jupyter_uid=1000, jrd_uid=0)
    assert f.level == PROBLEM
    assert "server-key.pem holds a secret and is open to other accounts (mode 0644)" in f.message
    assert "/s/password belongs to the Jupyter account" in f.message
    assert "chmod 600 /s/tls/server-key.pem" in f.fix and "chmod 700 /s" in f.fix and "chown root /s/password" in f.fix
    assert doctor.modes_verdict(facts[:1], None, 0).level == WARNING


def test_clock_and_firewall_verdicts() -> None:
    assert doctor.clock_verdict(True, NOW, NOW + DAY).level == PROBLEM
    assert doctor.clock_verdict(False, NOW, NOW - DAY).level == WARNING
    assert doctor.clock_verdict(None, NOW, None).level == OK
    blocked = firewall.Firewall("ufw", False, "ufw is active and has no rule that allows 8888/tcp",
                                "ufw allow 8888/tcp")
    assert doctor.firewall_verdict(blocked, 8888) == Finding(
        "firewall", PROBLEM, "ufw is active and has no rule that allows 8888/tcp, so other devices cannot connect",
        "`ufw allow 8888/tcp`")
    assert doctor.firewall_verdict(firewall.NONE, 8888).level == OK


def test_a_config_that_does_not_load_is_the_one_problem_and_the_output_shapes() -> None:
    def broken() -> Any:
        raise ConfigError("/etc/jrd/jrd.toml: [nginx] port = 0 is invalid: it must be between 1 and 65535")

    findings = doctor.diagnose(broken)
    assert [f.level for f in findings] == [PROBLEM] and doctor.exit_code(findings) == 1
    lines = doctor.lines(findings)
    assert lines[0].startswith("PROBLEM  config: /etc/jrd/jrd.toml: [nginx] port = 0 is invalid")
    assert " -- fix: " in lines[0] and lines[-1] == "1 problem, 0 warnings"
    doc = doctor.as_json(findings)
    assert doc["ok"] is False and doc["problems"] == 1 and doc["findings"][0]["name"] == "config"
    assert doctor.exit_code([Finding("x", WARNING, "w"), Finding("y", OK, "o")]) == 0


# --- a real jrd ---------------------------------------------------------------------------------


def run_doctor(j: Jrd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JRD, "doctor", "--config", str(j.config_path), *args], capture_output=True, text=True,
                          timeout=60)


def findings(j: Jrd) -> tuple[int, dict[str, list[dict[str, str]]]]:
    res = run_doctor(j, "--json")
    doc = json.loads(res.stdout)
    assert doc["ok"] == (res.returncode == 0), res.stderr
    by_name: dict[str, list[dict[str, str]]] = {}
    for f in doc["findings"]:
        by_name.setdefault(f["name"], []).append(f)
    return res.returncode, by_name


def level(by_name: dict[str, list[dict[str, str]]], name: str) -> str:
    return by_name[name][0]["level"]


def test_doctor_on_a_healthy_running_jrd(running_jrd: Jrd) -> None:
    code, by_name = findings(running_jrd)
    problems = [f for fs in by_name.values() for f in fs if f["level"] == PROBLEM]
    assert code == 0 and not problems, problems
    for name in ("config", "nginx config", "jrd", "supervisord", "jupyter", "nginx", "port", "CA", "certificate",
                 "certificate names", "served certificate", "notebook dir", "state dir", "firewall", "clock"):
        assert level(by_name, name) == OK, by_name[name]
    assert "held by jrd's own nginx" in by_name["port"][0]["message"]
    text = run_doctor(running_jrd)
    assert text.returncode == 0 and text.stdout.splitlines()[-1].startswith("0 problems")
    assert all(line.split()[0] in ("ok", "WARNING") for line in text.stdout.splitlines()[:-1])


def test_doctor_names_a_wrong_owner_on_the_notebook_dir(running_jrd: Jrd) -> None:
    j = running_jrd
    if j.user == "root":
        pytest.skip("Jupyter runs as root here, which may write anywhere")
    st = j.notebooks.stat()
    os.chown(j.notebooks, 0, 0)
    try:
        code, by_name = findings(j)
    finally:
        os.chown(j.notebooks, st.st_uid, st.st_gid)
    f = by_name["notebook dir"][0]
    assert code == 1 and f["level"] == PROBLEM
    assert f"{j.notebooks} is owned by root, not by {j.user}" in f["message"]
    assert f["fix"] == f"`chown -R {j.user}: {j.notebooks}`"


def test_doctor_sees_that_nginx_serves_another_certificate_than_the_one_on_disk(running_jrd: Jrd) -> None:
    """A valid pair replaced on disk behind jrd's back: jrd finds nothing due, so nginx serves the old one."""
    j = running_jrd
    tls = j.state / "tls"
    ca, ca_key = certs.load_cert(tls / "ca.pem"), certs.load_key(tls / "ca-key.pem")
    policy = certs.LeafPolicy(dns_names=("jrd.test", "localhost"), ip_addresses=("127.0.0.2", "127.0.0.1", "::1"))
    new = certs.issue_leaf(ca, ca_key, policy, tls / "server.pem", tls / "server-key.pem", certs.utcnow())
    code, by_name = findings(j)
    f = by_name["served certificate"][0]
    assert code == 1 and f["level"] == PROBLEM, f
    assert format(new.serial_number, "x") in f["message"] and "jrdctl restart nginx" in f["fix"]
    assert level(by_name, "certificate") == OK  # the pair on disk itself is fine
    restart = subprocess.run([JRDCTL, "--config", str(j.config_path), "restart", "nginx"], capture_output=True,
                             text=True, timeout=90)
    assert restart.returncode == 0, restart.stderr
    wait_for(lambda: level(findings(j)[1], "served certificate") == OK, 15, "nginx to serve the pair on disk")


def test_doctor_names_every_problem_of_a_broken_setup(make_jrd: Any, tmp_path: Path) -> None:
    """Not running: a busy port (named), an expired certificate, a world-readable key, a config nginx rejects."""
    j: Jrd = make_jrd()
    j.write_config(nginx=f'binary = "{rejecting_nginx(tmp_path)}"\n')
    tls = j.state / "tls"
    ca, ca_key, _ = certs.ensure_ca(tls / "ca.pem", tls / "ca-key.pem", dt.timedelta(days=3650),
                                    certs.utcnow() - 200 * DAY)
    policy = certs.LeafPolicy(dns_names=("jrd.test", "localhost"), ip_addresses=("127.0.0.2", "127.0.0.1", "::1"))
    expired = certs.issue_leaf(ca, ca_key, policy, tls / "server.pem", tls / "server-key.pem",
                               certs.utcnow() - 100 * DAY)
    (tls / "server-key.pem").chmod(0o644)
    squatter = subprocess.Popen([sys.executable, "-c", "import socket, sys, time\n"
                                 "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
                                 "print('listening', flush=True); time.sleep(120)", str(j.port)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout and squatter.stdout.readline().strip() == "listening"
        code, by_name = findings(j)
        text = run_doctor(j)
    finally:
        squatter.kill()
        squatter.wait()
    assert code == 1 and text.returncode == 1
    assert level(by_name, "jrd") == WARNING and "not running" in by_name["jrd"][0]["message"]
    ngx = by_name["nginx config"][0]
    assert ngx["level"] == PROBLEM and "jrd_unforeseen_directive" in ngx["message"]
    port = [f for f in by_name["port"] if str(j.port) in f["message"]][0]
    assert port["level"] == PROBLEM and f"pid {squatter.pid} (" in port["message"]
    cert = by_name["certificate"][0]
    assert cert["level"] == PROBLEM and f"expired on {expired.not_valid_after_utc:%Y-%m-%d}" in cert["message"]
    state = by_name["state dir"][0]
    assert state["level"] == PROBLEM and "server-key.pem holds a secret" in state["message"]
    assert "chmod 600" in state["fix"]
    # The same, one line per check, each problem with its fix.
    lines = text.stdout.splitlines()
    assert any(line.startswith("PROBLEM  port: ") and f"pid {squatter.pid}" in line and " -- fix: " in line
               for line in lines), lines
    assert lines[-1].startswith(f"{sum(f['level'] == PROBLEM for fs in by_name.values() for f in fs)} problems")

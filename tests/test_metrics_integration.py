"""Metrics, health probing and alerts, checked against a real jrd and a real Prometheus.

One jrd (supervisord, nginx, JupyterLab) with fast health probes, and one
Prometheus server from Debian's `prometheus` package scraping it every
second on loopback, are shared by the whole module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from conftest import REPO, Jrd, free_port, parse_exposition, short_tmp, wait_for
from jrd.tls import certs
from jrd.metrics import SCRAPE_CALL_TIMEOUT

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
# Five failures in a row leave the failing state up long enough (about 10 s) for several
# 3-second scrapes to record it, even when a loaded machine slows a scrape down.
HEALTH = {"interval_seconds": 1, "timeout_seconds": 1, "failure_threshold": 5}
SCRAPE_INTERVAL = 3


def scrape(j: Jrd, timeout: float = 15) -> str:
    r = requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=timeout)
    r.raise_for_status()
    return r.text


samples = parse_exposition


class Prometheus:
    def __init__(self, base: Path, target_port: int):
        self.base = base
        self.port = free_port()
        shutil.copy(REPO / "etc/prometheus/jrd-alerts.yml", base / "jrd-alerts.yml")
        (base / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {SCRAPE_INTERVAL}s\n  evaluation_interval: 1s\n"
            "rule_files:\n  - jrd-alerts.yml\n"
            # A scrape that meets a hung child takes up to jrd's per-source timeout.
            f"scrape_configs:\n  - job_name: jrd\n    scrape_timeout: {SCRAPE_INTERVAL}s\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.log = open(base / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={base / 'prometheus.yml'}", f"--storage.tsdb.path={base / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.ready, 60, "Prometheus to be ready")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(self.base / 'prometheus.log').read_text()[-2000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def api(self, path: str, **params: str) -> Any:
        r = requests.get(f"http://127.0.0.1:{self.port}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    def value(self, query: str) -> float | None:
        """The single value of an instant query, or None if it has no result."""
        result = self.api("query", query=query)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def jrd() -> Iterator[Jrd]:
    health = "".join(f"{k} = {v}\n" for k, v in HEALTH.items())
    j = Jrd(short_tmp(), f"[health]\n{health}")
    j.start()
    yield j
    j.stop(signal.SIGTERM, timeout=60)
    shutil.rmtree(j.base, ignore_errors=True)


@pytest.fixture(scope="module")
def prom(jrd: Jrd) -> Iterator[Prometheus]:
    assert os.path.exists(PROMETHEUS), "install Debian's prometheus package (scripts/install-system-deps)"
    base = short_tmp()
    p = Prometheus(base, jrd.metrics_port)
    yield p
    p.stop()
    shutil.rmtree(base, ignore_errors=True)


def counter(j: Jrd, program: str, reason: str) -> float:
    return samples(scrape(j))[f'jrd_program_restarts_total{{program="{program}",reason="{reason}"}}']


def wait_serving_again(j: Jrd, old_pid: int) -> int:
    wait_for(lambda: j.supervisor_pid("jupyter") not in (0, old_pid), 60, "a new Jupyter pid")
    wait_for(j.serving, 60, "Jupyter to serve through nginx again")
    return j.supervisor_pid("jupyter")


# --- tests ---------------------------------------------------------------------------


def test_live_scrape_passes_promtool(jrd: Jrd) -> None:
    text = scrape(jrd)
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr
    m = samples(text)
    assert m['jrd_program_up{program="jupyter"}'] == 1 and m['jrd_program_up{program="nginx"}'] == 1
    assert m["jrd_jupyter_api_up"] == 1 and m["jrd_nginx_stub_status_up"] == 1
    assert m['jrd_program_resident_memory_bytes{program="jupyter"}'] > 20e6
    assert "process_resident_memory_bytes" in m and any(k.startswith("python_info") for k in m)
    token = (jrd.state / "internal-token").read_text().strip()
    assert token not in text


def test_metrics_listen_on_loopback_only(jrd: Jrd) -> None:
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.2:{jrd.metrics_port}/metrics", timeout=2)


def test_prometheus_scrapes_jupyter_up_and_the_certificate_on_disk(jrd: Jrd, prom: Prometheus) -> None:
    wait_for(lambda: prom.value('jrd_program_up{program="jupyter"}') == 1, 60, "Prometheus to see Jupyter up")
    leaf = certs.load_cert(jrd.state / "tls" / "server.pem")
    ca = certs.load_cert(jrd.state / "tls" / "ca.pem")
    expiry = leaf.not_valid_after_utc.timestamp()
    assert prom.value('jrd_certificate_not_after_timestamp_seconds{cert="leaf"}') == expiry
    assert prom.value('jrd_certificate_not_after_timestamp_seconds{cert="ca"}') == ca.not_valid_after_utc.timestamp()
    assert prom.value('up{job="jrd"}') == 1
    # the shipped alert rules load into a real server and evaluate cleanly
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    shipped = (REPO / "etc" / "prometheus" / "jrd-alerts.yml").read_text().count("- alert:")
    assert len(rules) == shipped and all(r["health"] == "ok" for r in rules), rules


def test_three_kills_count_exactly_three_crashes(jrd: Jrd, prom: Prometheus) -> None:
    before = counter(jrd, "jupyter", "crash")
    others = {r: counter(jrd, "jupyter", r) for r in ("unhealthy", "requested", "reload")}
    pid = jrd.supervisor_pid("jupyter")
    for _ in range(3):
        os.kill(pid, signal.SIGKILL)
        pid = wait_serving_again(jrd, pid)
    query = 'jrd_program_restarts_total{program="jupyter",reason="crash"}'
    wait_for(lambda: prom.value(query) == before + 3, 30, "Prometheus to see 3 more crash restarts")
    # exactly three: nothing late, and nothing counted under another reason
    seen = time.time()
    wait_for(lambda: prom.value(f"timestamp({query})") > seen + 2 * SCRAPE_INTERVAL, 30, "two more scrapes")
    assert prom.value(query) == before + 3
    assert counter(jrd, "jupyter", "crash") == before + 3
    assert {r: counter(jrd, "jupyter", r) for r in others} == others
    assert jrd.read_output().count("jupyter restarted by supervisord (crash)") == before + 3


def test_stopped_jupyter_is_restarted_as_unhealthy(jrd: Jrd, prom: Prometheus) -> None:
    before = counter(jrd, "jupyter", "unhealthy")
    crashes = counter(jrd, "jupyter", "crash")
    pid = jrd.supervisor_pid("jupyter")
    wait_for(lambda: prom.value('jrd_probe_success{program="jupyter"}') == 1, 30, "a passing Jupyter probe")
    started = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        # threshold failures, each at most interval + timeout apart, then a graceful restart
        budget = HEALTH["failure_threshold"] * (HEALTH["interval_seconds"] + HEALTH["timeout_seconds"]) + 30
        new = wait_for(lambda: jrd.supervisor_pid("jupyter") not in (0, pid) and jrd.supervisor_pid("jupyter"),
                       budget, "jrd to restart the stopped Jupyter")
        took = time.monotonic() - started
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    detect = HEALTH["failure_threshold"] * (HEALTH["interval_seconds"] + HEALTH["timeout_seconds"])
    assert took < detect + 25, f"took {took:.1f} s"
    wait_for(jrd.serving, 60, "Jupyter to serve again")
    log = "\n".join(l for l in jrd.read_output().splitlines() if "health" in l or "restart" in l)
    assert counter(jrd, "jupyter", "unhealthy") == before + 1, log
    assert counter(jrd, "jupyter", "crash") == crashes, log  # a stop by jrd is no crash
    wait_for(lambda: prom.value('jrd_program_restarts_total{program="jupyter",reason="unhealthy"}') == before + 1,
             30, "Prometheus to see the unhealthy restart")
    failed = 'max_over_time(jrd_probe_consecutive_failures{program="jupyter"}[2m])'
    assert prom.value(failed) >= 1 and prom.value('min_over_time(jrd_probe_success{program="jupyter"}[2m])') == 0
    out = jrd.read_output()
    assert "restarting it as unhealthy" in out and "restarted jupyter (unhealthy)" in out
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 30, "the stopped Jupyter to be gone")
    assert new


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_scrape_is_bounded_while_supervisord_is_stopped(jrd: Jrd) -> None:
    pid = int((jrd.run_dir / "supervisor" / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        text = scrape(jrd, timeout=30)
        took = time.monotonic() - start
    finally:
        os.kill(pid, signal.SIGCONT)
    m = samples(text)
    assert took < SCRAPE_CALL_TIMEOUT + 2, f"scrape took {took:.1f} s"
    assert m["jrd_supervisord_up"] == 0
    assert m['jrd_scrape_collector_success{collector="supervisord"}'] == 0
    assert m['jrd_program_up{program="jupyter"}'] == 0
    assert m['jrd_program_state{program="jupyter",state="UNKNOWN"}'] == 1
    assert m["jrd_jupyter_api_up"] == 1  # the rest still reports
    wait_for(lambda: samples(scrape(jrd))["jrd_supervisord_up"] == 1, 30, "supervisord to answer again")


def _names(text: str) -> set[str]:
    return set(re.findall(r"\b(?:jrd|process|python)_[a-z_]+\b", text))


def test_dashboard_and_alerts_use_real_metrics_and_valid_queries(jrd: Jrd, prom: Prometheus) -> None:
    live = {line.split()[2] for line in scrape(jrd).splitlines() if line.startswith("# TYPE")}
    live |= {n + "_total" for n in live}
    only_after_a_renewal = {"jrd_certificate_last_renewal_success_timestamp_seconds"}
    # Exported with [tls] mode = "acme" only; tests/test_acme_integration.py sees them there.
    only_in_acme_mode = {"jrd_acme_certificate_served", "jrd_acme_certificate_not_after_timestamp_seconds",
                         "jrd_acme_certificate_info", "jrd_acme_orders_total"}
    dashboard = json.loads((REPO / "etc/grafana/jrd.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    alerts = (REPO / "etc/prometheus/jrd-alerts.yml").read_text()
    unknown = (_names(" ".join(exprs)) | _names(alerts)) - live - only_after_a_renewal - only_in_acme_mode
    assert not unknown, f"dashboard or alerts use metrics jrd does not export: {unknown}"
    for expr in exprs:
        q = expr.replace("$instance", ".*").replace("$__rate_interval", "1m")
        prom.api("query", query=q)  # asserts the query parses and runs

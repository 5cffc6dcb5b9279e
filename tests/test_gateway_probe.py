"""Does the gateway answer? The probe against a small HTTP server, `jrd check`'s verdict, the daemon's watch."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from pathlib import Path
from typing import Iterator

import pytest

from jrd.config import GatewayConfig, parse_config
from jrd.errors import PreflightError
from jrd.gateway import GatewayWatch, check_reachable, probe_gateway

from conftest import free_port, wait_for

TOKEN = "gw-s3cret-token"


class FakeGateway(http.server.BaseHTTPRequestHandler):
    """Answers GET /base/api/kernelspecs as a gateway would; `mode` picks the answer."""

    mode = "gateway"
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != f"token {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        if self.mode == "gateway" and self.path == "/base/api/kernelspecs":
            body = json.dumps({"default": "python3", "kernelspecs": {}}).encode()
        elif self.mode == "html":
            body = b"<html>hello</html>"
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_gateway() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
    FakeGateway.mode, FakeGateway.seen = "gateway", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/base"
    server.shutdown()
    server.server_close()


def test_a_gateway_that_lists_kernel_specs_for_the_token_answers(fake_gateway: str) -> None:
    assert probe_gateway(GatewayConfig(url=fake_gateway), TOKEN) is None
    assert FakeGateway.seen == [f"token {TOKEN}"]


def test_why_a_gateway_does_not_answer(fake_gateway: str) -> None:
    gw = GatewayConfig(url=fake_gateway)
    assert "refuses the token (HTTP 401)" in probe_gateway(gw, "wrong")
    assert "asks for a token (HTTP 401); set auth_token_file" in probe_gateway(gw, "")
    FakeGateway.mode = "html"
    assert "not as a Jupyter gateway" in probe_gateway(gw, TOKEN)
    FakeGateway.mode = "missing"
    assert "answers HTTP 404 to GET /base/api/kernelspecs" in probe_gateway(gw, TOKEN)
    down = GatewayConfig(url=f"http://127.0.0.1:{free_port()}")
    assert "does not answer (ConnectionRefusedError" in probe_gateway(down, TOKEN)


def test_jrd_check_refuses_a_gateway_that_does_not_answer_in_one_sentence(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = parse_config(f'[gateway]\nurl = "{url}"\n', source=tmp_path / "jrd.toml")
    with pytest.raises(PreflightError) as err:
        check_reachable(config)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'jrd.toml'}: [gateway] url = '{url}': the gateway does not answer")
    assert "Jupyter runs no kernel here" in msg and "\n" not in msg
    check_reachable(parse_config(""))  # no gateway: nothing to ask


def test_jrd_check_accepts_a_gateway_that_answers_and_never_shows_the_token(tmp_path: Path,
                                                                              fake_gateway: str) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    check_reachable(parse_config(f'[gateway]\nurl = "{fake_gateway}"\nauth_token_file = "{f}"\n'))
    f.write_text("stale-token\n")
    with pytest.raises(PreflightError, match="refuses the token") as err:
        check_reachable(parse_config(f'[gateway]\nurl = "{fake_gateway}"\nauth_token_file = "{f}"\n'))
    assert "stale-token" not in str(err.value)


def test_the_daemon_warns_once_then_says_when_the_gateway_answers(caplog: pytest.LogCaptureFixture) -> None:
    answers = threading.Event()
    calls: list[str] = []

    def probe(gw: GatewayConfig, token: str) -> str | None:
        calls.append(gw.url)
        return None if answers.is_set() else "does not answer (ConnectionRefusedError)"

    watch = GatewayWatch(probe_fn=probe, first=0.01, cap=0.05)
    config = parse_config('[gateway]\nurl = "http://gw.example.com:8888"\n')
    caplog.set_level(logging.DEBUG, logger="jrd")
    watch.config_changed(parse_config(""), config)
    wait_for(lambda: len(calls) >= 3, 10, "the watch to ask again")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "the gateway at http://gw.example.com:8888 does not answer" in warnings[0]
    assert "Jupyter never runs one on this machine" in warnings[0]
    answers.set()
    wait_for(lambda: any("answers now" in r.getMessage() for r in caplog.records), 10, "the watch to see it answer")
    # Once the gateway answers, the watch ends: nothing more to say until [gateway] changes.
    wait_for(lambda: not any(t.name == "jrd-gateway" and t.is_alive() for t in threading.enumerate()), 5,
             "the watch to end")
    assert sum("answers now" in r.getMessage() for r in caplog.records) == 1
    watch.stop()


def test_the_daemon_forgets_an_old_gateway_when_the_config_changes() -> None:
    calls: list[str] = []
    gate = threading.Event()

    def probe(gw: GatewayConfig, token: str) -> str | None:
        calls.append(gw.url)
        gate.wait(5)
        return "does not answer"

    watch = GatewayWatch(probe_fn=probe, first=0.01, cap=0.01)
    old = parse_config('[gateway]\nurl = "http://old.example.com"\n')
    watch.config_changed(parse_config(""), old)
    wait_for(lambda: calls, 5, "the first probe")
    watch.config_changed(old, parse_config(""))  # the gateway switched off
    gate.set()
    # The old watch ends after the probe under way, without logging or asking again.
    wait_for(lambda: not any(t.name == "jrd-gateway" and t.is_alive() for t in threading.enumerate()), 5,
             "the old watch to end")
    assert calls == ["http://old.example.com"]
    watch.stop()

"""A reload as a transaction: a failure in any phase leaves the running config and its files as they were.

The build and the file writes are replaced by fakes that record what they were asked; the
planning (jrd.reload_plan) is the real one.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jrd import reload as reload_module
from jrd.build import Build
from jrd.config import Config, parse_config
from jrd.errors import ConfigError, NginxConfigError, ReloadApplyError, SupervisorError
from jrd.layout import Layout
from jrd.ledger import Ledger
from jrd.reload import Reloader, Running
from jrd.render import RenderedFile

from test_programs import FakeKernels, FakeSupervisor, jupyter_with  # noqa: F401 - shared fakes

SOURCE = Path("/etc/jrd/jrd.toml")


def files(nginx: str = "worker 1") -> dict[str, RenderedFile]:
    return {
        "supervisord.conf": RenderedFile(Path("/r/supervisord.conf"), b"[program:jupyter]\ncommand = j\n", 0o600),
        "nginx.conf": RenderedFile(Path("/r/nginx.conf"), nginx.encode()),
        "jupyter_server_config.py": RenderedFile(Path("/r/jupyter.py"), b"c.A = 1", 0o600),
    }


def built(nginx: str = "worker 1", issued: str | None = None) -> Build:
    inputs = SimpleNamespace(hashed_password="argon2:x", internal_token="t")
    return Build(inputs, files(nginx), issued)  # type: ignore[arg-type]


class Stack:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.layout = Layout(tmp_path / "state", tmp_path / "run", tmp_path / "log")
        self.layout.tls_dir.mkdir(parents=True)
        self.config = parse_config("", source=SOURCE)
        self.next_config: Config | Exception = self.config
        self.next_build: Build | Exception = built()
        self.installed: list[dict[str, RenderedFile]] = []
        self.running = Running(self.config, built().inputs, files())
        self.sup = FakeSupervisor()
        self.ledger = Ledger()
        jupyter, *_ = jupyter_with()
        self.nginx = SimpleNamespace(name="nginx", reload=self._nginx_reload)
        self.nginx_fails = False
        self.reloader = Reloader(
            self.running, self._load, layout=self.layout, supervisor=self.sup, ledger=self.ledger,  # type: ignore
            nginx=self.nginx, jupyter=jupyter, certificates=SimpleNamespace(),  # type: ignore[arg-type]
            contribute=lambda inputs: inputs, config_changed=lambda old, new: None, tls_changed=lambda: None,
        )
        monkeypatch.setattr(reload_module.preflight, "jupyter_account", lambda config: None)
        monkeypatch.setattr(reload_module, "build_to_run", self._build)
        monkeypatch.setattr(reload_module, "install", self.installed.append)

    def _load(self) -> Config:
        if isinstance(self.next_config, Exception):
            raise self.next_config
        return self.next_config

    def _build(self, config: Config, layout: Layout, now: Any, contribute: Any) -> Build:
        if isinstance(self.next_build, Exception):
            # A refused config may have had a leaf issued for it before the refusal.
            layout.leaf_cert.write_bytes(b"NEW LEAF")
            raise self.next_build
        return self.next_build

    def _nginx_reload(self, tested: bool = False) -> None:
        if self.nginx_fails:
            raise SupervisorError("supervisord did not answer signalProcess")
        self.sup.calls.append(("signal", "nginx", "HUP"))


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    return Stack(tmp_path, monkeypatch)


def test_a_config_that_does_not_load_changes_nothing(stack: Stack) -> None:
    stack.next_config = ConfigError("[nginx] port = 0 is invalid")
    with pytest.raises(ConfigError, match=r"^/etc/jrd/jrd.toml: \[nginx\] port = 0"):
        stack.reloader.run("control", reply_expected=True)
    assert stack.installed == [] and stack.sup.calls == []
    assert stack.running.files == files() and stack.running.config is stack.config
    rec = stack.ledger.snapshot().reloads
    assert rec.ok is False and rec.failures == 1 and "port = 0" in rec.error


def test_a_refused_build_puts_back_the_leaf_it_issued(stack: Stack) -> None:
    leaf = stack.layout.leaf_cert
    leaf.write_bytes(b"OLD LEAF")
    os.chmod(leaf, 0o640)
    os.utime(leaf, (1_000_000, 1_000_000))
    stack.next_build = NginxConfigError("nginx rejected the rendered config: unknown directive")
    result = stack.reloader.run("file:/etc/jrd/jrd.toml", reply_expected=False)
    assert result["ok"] is False and "unknown directive" in result["error"]
    assert leaf.read_bytes() == b"OLD LEAF" and leaf.stat().st_mtime == 1_000_000
    assert leaf.stat().st_mode & 0o777 == 0o640
    assert stack.installed == [] and stack.sup.calls == []


def test_a_failing_apply_keeps_the_old_file_set_so_the_next_reload_retries(stack: Stack) -> None:
    stack.next_build = built(nginx="worker 2")
    stack.nginx_fails = True
    with pytest.raises(ReloadApplyError, match="installed but applying them failed"):
        stack.reloader.run("control", reply_expected=True)
    assert len(stack.installed) == 1 and stack.running.files == files()
    stack.nginx_fails = False
    assert stack.reloader.run("control", reply_expected=True)["changed"] == ["nginx.conf"]
    assert stack.sup.calls == [("signal", "nginx", "HUP")]
    assert stack.running.files == files("worker 2")
    rec = stack.ledger.snapshot().reloads
    assert (rec.ok, rec.failures, rec.successes) == (True, 1, 1)


def test_nothing_changed_is_a_successful_reload_with_no_action(stack: Stack) -> None:
    assert stack.reloader.run("signal SIGHUP", reply_expected=False) == {"changed": [], "actions": []}
    assert stack.sup.calls == [] and stack.ledger.snapshot().reloads.ok is True

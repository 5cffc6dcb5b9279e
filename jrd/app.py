"""Assemble a daemon from its parts: the core loop plus its extensions.

An extension is an object with `start(daemon)` and `stop(daemon)`, and
optionally `adjust_inputs(daemon, inputs)`, `on_timer(daemon, name)` and
`config_changed(daemon, old, new)` (called after a reload applied a new config).
Control socket, metrics and file watching each plug in here.
"""

from __future__ import annotations

from typing import Callable

from jrd.config import Config
from jrd.control import ControlServer
from jrd.daemon import Daemon
from jrd.events import ProgramEvents
from jrd.health import HealthMonitor
from jrd.metrics import MetricsServer
from jrd.watch import ConfigWatcher


def build_daemon(config: Config, loader: Callable[[], Config], interactive: bool) -> Daemon:
    announce = print_flush if interactive else None
    daemon = Daemon(config, config_loader=loader, announce=announce, show_password=interactive)
    daemon.extensions.append(ControlServer(daemon.layout.control_socket, config.control.group))
    health = HealthMonitor()
    daemon.extensions += [ProgramEvents(), health, MetricsServer(health)]
    # Saved edits to the config, the password file or an external certificate reload by themselves.
    daemon.extensions.append(ConfigWatcher())
    return daemon


def print_flush(message: str) -> None:
    print(message, flush=True)

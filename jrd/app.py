"""Assemble a daemon from its parts: the core plus its extensions (see jrd.extension)."""

from __future__ import annotations

from typing import Callable

from jrd.config import Config
from jrd.control.server import ControlServer
from jrd.daemon import Daemon
from jrd.events import ProgramEvents
from jrd.gateway import GatewayWatch
from jrd.health import HealthMonitor
from jrd.idle import IdleGuard
from jrd.layout import Layout
from jrd.metrics import MetricsServer
from jrd.static_cache import StaticBundles
from jrd.tls.acme_service import AcmeService
from jrd.watch import ConfigWatcher


def build_daemon(config: Config, loader: Callable[[], Config], interactive: bool) -> Daemon:
    announce = print_flush if interactive else None
    idle = IdleGuard()
    acme = AcmeService()
    extensions = [
        ControlServer(Layout.of(config).control_socket, config.control.group),
        ProgramEvents(),
        HealthMonitor(),
        MetricsServer(idle=lambda: idle.record),
        # Stops the machine when nobody uses it ([idle]); off by default.
        idle,
        # nginx serves JupyterLab's bundles itself, compressed once ([nginx] static_bundles).
        StaticBundles(),
        # Saved edits to the config, the password file, an external certificate or the gateway
        # token reload by themselves.
        ConfigWatcher(),
        # Whether the gateway ([gateway]) answers: logged at start and after a change of it.
        GatewayWatch(),
        # [tls] mode = "acme": a publicly trusted certificate for the public names and addresses.
        acme,
    ]
    daemon = Daemon(config, config_loader=loader, announce=announce, show_password=interactive,
                    extensions=extensions)
    daemon.certificates.acme_status = acme.status
    return daemon


def print_flush(message: str) -> None:
    print(message, flush=True)

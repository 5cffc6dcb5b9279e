"""What an extension may touch, and the hooks it may implement.

An extension (the control socket, the event listener, health probes,
metrics, the file watcher, the gateway watch) subclasses `Extension` and
overrides the hooks it needs; each gets a `Context`, never the daemon itself.
Hooks run on the main loop, in this order:

    prepare(ctx)        once, before supervisord starts: bind sockets, open files
    contribute(inputs)  at every build, pure: add to what is rendered
    start(ctx)          once, after supervisord answers: start threads, timers, handlers
    config_changed(old, new)   after a reload applied a new config
    check_certificates(force)  `jrdctl cert renew [--force]`, and at once after a clock jump
    stop()              once, at shutdown, in reverse order

Threads an extension starts act only by `ctx.submit` (the one command path)
and read only snapshots (`ctx.ledger.snapshot()`, `ctx.config`, which is a
frozen value) or their own state.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from jrd.config import Config
    from jrd.jupyter import JupyterClient
    from jrd.layout import Layout
    from jrd.ledger import Ledger
    from jrd.loop import Handler
    from jrd.render import RenderInputs
    from jrd.supervisor import Supervisor


@dataclass(frozen=True)
class Context:
    """The narrow view of the daemon that extensions get."""

    layout: "Layout"
    supervisor: "Supervisor"
    ledger: "Ledger"
    jupyter: "JupyterClient"
    submit: Callable[..., Future[Any]]
    add_handler: Callable[[str, "Handler"], None]
    schedule: Callable[[str, float, Callable[[], None]], None]
    cancel: Callable[[str], None]
    # The config in force (a frozen dataclass: safe to read from any thread).
    current_config: Callable[[], "Config"]
    # Wait (in the calling thread) until Jupyter serves through nginx; {"serving": bool, "note"?: str}.
    wait_serving: Callable[[float], dict[str, Any]]
    # Certificates nginx serves and renewal counts (thread-safe).
    certificate_status: Callable[[], dict[str, Any]]

    @property
    def config(self) -> "Config":
        return self.current_config()


class Extension:
    """No-op hooks; see the module docstring for when each runs."""

    def prepare(self, ctx: Context) -> None:
        pass

    def contribute(self, inputs: "RenderInputs") -> "RenderInputs":
        return inputs

    def start(self, ctx: Context) -> None:
        pass

    def config_changed(self, old: "Config", new: "Config") -> None:
        pass

    def check_certificates(self, force: bool) -> dict[str, Any] | None:
        """Look at the extension's own certificates now (renew if due, or if `force`); what to report."""
        return None

    def stop(self) -> None:
        pass

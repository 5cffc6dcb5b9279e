"""Jupyter's API as jrd asks it: with the internal token, directly on loopback, never counted as activity.

The token lives here, set once the daemon has built its config; every
question jrd asks Jupyter (kernel counts for a deferred restart and for
`jrdctl`, activity for the metrics) goes through one `JupyterClient`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from jrd import probe
from jrd.config import Config
from jrd.errors import JrdError

# Jupyter counts most API requests as user activity; these two do not.
KERNELS_PATH = "api/kernels?no_track_activity=1"
STATUS_PATH = "api/status"  # marked _track_activity = False by Jupyter itself
# jrd.execution_counter's answer, there with [jupyter] server_side_execution only (not activity either).
EXECUTIONS_PATH = "api/jrd/server-side-executions"


@dataclass(frozen=True)
class JupyterActivity:
    kernels: int
    busy_kernels: int
    connections: int
    last_activity: float  # Unix time
    started: float  # Unix time


@dataclass(frozen=True)
class ServerSideExecutions:
    """Cells jupyter-server-nbmodel ran since Jupyter started: begun, and ended well or with an error."""
    started: int
    ok: int
    error: int


def busy(kernels: list[dict[str, Any]]) -> int:
    """How many of Jupyter's kernels are executing."""
    return sum(1 for k in kernels if k.get("execution_state") == "busy")


def _iso_to_unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class JupyterClient:
    """Asks the running Jupyter about its kernels and activity; safe from any thread."""

    def __init__(self, config: Callable[[], Config]):
        self._config = config
        self.token: str | None = None  # set by the daemon after each build

    def get(self, path: str, timeout: float) -> Any:
        """GET Jupyter's API `path` with the internal token; the parsed JSON, or JrdError with the reason."""
        token = self.token
        if token is None:
            raise JrdError("jrd has not rendered Jupyter's config yet")
        cfg = self._config().jupyter
        result = probe.get("127.0.0.1", cfg.port, cfg.base_url + path, tls=False, timeout=timeout, token=token)
        if not result.ok:
            raise JrdError(f"Jupyter {path}: {result.error or f'HTTP {result.status}'}")
        try:
            return result.json()
        except ValueError:
            raise JrdError(f"Jupyter {path}: not JSON") from None

    def kernel_counts(self, timeout: float = 5.0) -> dict[str, int]:
        """{"running": n, "busy": n}, or JrdError when Jupyter cannot say."""
        kernels = self.get(KERNELS_PATH, timeout)
        if not isinstance(kernels, list):
            raise JrdError(f"Jupyter {KERNELS_PATH}: not a list of kernels")
        return {"running": len(kernels), "busy": busy(kernels)}

    def server_side_executions(self, timeout: float) -> ServerSideExecutions:
        """Cells run on the server since Jupyter started, or JrdError when Jupyter cannot say."""
        counts = self.get(EXECUTIONS_PATH, timeout)
        try:
            return ServerSideExecutions(started=int(counts["started"]), ok=int(counts["ended"]["ok"]),
                                        error=int(counts["ended"]["error"]))
        except (TypeError, KeyError, ValueError):
            raise JrdError(f"Jupyter {EXECUTIONS_PATH}: not the counts jrd.execution_counter gives") from None

    def activity(self, timeout: float) -> JupyterActivity:
        status = self.get(STATUS_PATH, timeout)
        kernels = self.get(KERNELS_PATH, timeout)
        return JupyterActivity(
            kernels=int(status["kernels"]),
            busy_kernels=busy(kernels),
            connections=int(status["connections"]),
            last_activity=_iso_to_unix(status["last_activity"]),
            started=_iso_to_unix(status["started"]),
        )

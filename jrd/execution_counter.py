"""Runs inside Jupyter, not jrd: a server extension that counts server-side cell executions for jrd's metrics.

jupyter-server-nbmodel announces every cell it runs on its own event
logger (its public schema `cell_execution/v1`: an `execution_start`, then
an `execution_end` with `success`), not on Jupyter's.  This extension,
which the rendered Jupyter config enables together with nbmodel, listens
there and answers the counts since Jupyter started at
`GET {base_url}api/jrd/server-side-executions`, to authenticated requests
only (jrd asks with its private token; `jrd.jupyter.JupyterClient`).  The
answer is not user activity, so it never delays the idle stop.

It imports nothing of jrd: jrd writes a copy of this file beside Jupyter's
config as `jrd_execution_counter.py`, and Jupyter loads it by that name, so
that it works wherever jrd itself is installed (a checkout in root's 0700
home, which the Jupyter account cannot enter, included).
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

EXECUTIONS_PATH = "api/jrd/server-side-executions"
CELL_EXECUTION_SCHEMA = "https://events.jupyter.org/jupyter_server_nbmodel/cell_execution/v1"


class ExecutionCounts:
    """Cells started, and cells ended by result ("ok" or "error"); only the event loop writes."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = {"ok": 0, "error": 0}

    async def on_event(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        """A jupyter_events listener for nbmodel's cell_execution events."""
        if data.get("event_type") == "execution_start":
            self.started += 1
        elif data.get("event_type") == "execution_end":
            self.ended["ok" if data.get("success") else "error"] += 1

    def as_json(self) -> dict[str, Any]:
        return {"started": self.started, "ended": dict(self.ended)}


class ExecutionCountsHandler(APIHandler):
    # jrd asks at every scrape; that is nobody working, so Jupyter's last activity stays.
    _track_activity = False

    def initialize(self, counts: ExecutionCounts) -> None:
        self.counts = counts

    @web.authenticated
    def get(self) -> None:
        self.finish(json.dumps(self.counts.as_json()))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from jupyter_server_nbmodel.event_logger import event_logger

    counts = ExecutionCounts()
    event_logger.add_listener(schema_id=CELL_EXECUTION_SCHEMA, listener=counts.on_event)
    route = url_path_join(serverapp.base_url, EXECUTIONS_PATH)
    serverapp.web_app.add_handlers(".*$", [(route, ExecutionCountsHandler, {"counts": counts})])

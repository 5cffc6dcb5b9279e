"""[jupyter] server_side_execution in the rendered Jupyter config: all on or all off, and a reload restarts Jupyter."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import jupyterlab_server.config as lab_config
import pytest

from jrd.config import parse_config
from jrd.layout import Layout
from jrd.reload_plan import plan_reload
from jrd.render import Account, RenderInputs, render_all, render_jupyter_config
from jrd.execution_counter import CELL_EXECUTION_SCHEMA, ExecutionCounts
from jrd.render.jupyter import (
    EXECUTION_COUNTER_EXTENSION, NEWS_QUESTION, SSX_COLLABORATION_UI, SSX_LABEXTENSIONS, SSX_SERVER_EXTENSIONS,
)

from render_parsers import jupyter_settings


def inputs(on: bool, run: Path = Path("/r")) -> RenderInputs:
    cfg = parse_config(f'[tls]\nnames = ["lab.example.com"]\n[jupyter]\nserver_side_execution = {str(on).lower()}\n')
    return RenderInputs(
        config=cfg, layout=Layout(Path("/s"), run, Path("/l")), jupyter_executable=Path("/v/bin/jupyter"),
        nginx_executable=Path("/usr/sbin/nginx"), python_executable=Path("/v/bin/python"),
        jupyter_account=Account("alice", 1000, 1000, Path("/home/alice")), hashed_password="argon2:HASH",
        internal_token="T" * 64, cert_file=Path("/s/tls/server.pem"), key_file=Path("/s/tls/server-key.pem"),
        running_as_root=True, ca_pem=b"PEM",
    )


@pytest.fixture
def unpatched_lab_config() -> Any:
    """The rendered "off" config wraps jupyterlab_server's function in this process too: put it back after."""
    original = lab_config.get_federated_extensions
    yield original
    lab_config.get_federated_extensions = original


def test_off_by_default_every_server_extension_is_off_and_the_page_never_sees_their_frontend(
        unpatched_lab_config: Any) -> None:
    assert parse_config("").jupyter.server_side_execution is False
    settings = jupyter_settings(render_jupyter_config(inputs(False)))
    assert settings["ServerApp.jpserver_extensions"] == {
        name: False for name in (*SSX_SERVER_EXTENSIONS, EXECUTION_COUNTER_EXTENSION)}
    assert not any(key.startswith(("YDocExtension.", "SQLiteYStore.", "BaseFileIdManager.")) for key in settings)
    # The page leaves out the news question alone.
    hook = settings["ServerApp.tornado_settings"]["page_config_hook"]
    assert hook(None, {"x": 1}) == {"disabledExtensions": [NEWS_QUESTION], "x": 1}

    def every_extension(path: list[str]) -> dict[str, Any]:
        return {name: {"name": name} for name in (*SSX_LABEXTENSIONS, "jupyterlab_pygments")}

    # The page config's federated extensions (whose JavaScript the page fetches) leave them out.
    lab_config.get_federated_extensions = every_extension
    jupyter_settings(render_jupyter_config(inputs(False)))
    assert lab_config.get_federated_extensions is not every_extension
    assert list(lab_config.get_federated_extensions([])) == ["jupyterlab_pygments"]


def test_off_refuses_to_start_a_jupyterlab_whose_page_config_it_cannot_filter(unpatched_lab_config: Any) -> None:
    del lab_config.get_federated_extensions
    with pytest.raises(SystemExit, match="get_federated_extensions is gone"):
        jupyter_settings(render_jupyter_config(inputs(False)))


def test_on_keeps_documents_for_ever_saves_them_and_keeps_its_store_out_of_the_notebooks(tmp_path: Path) -> None:
    settings = jupyter_settings(render_jupyter_config(inputs(True, tmp_path)))
    store = tmp_path / "jupyter" / "collaboration"
    assert settings["ServerApp.jpserver_extensions"] == {
        name: True for name in (*SSX_SERVER_EXTENSIONS, EXECUTION_COUNTER_EXTENSION)}
    assert settings["YDocExtension.document_cleanup_delay"] is None
    assert settings["YDocExtension.document_save_delay"] == 1.0
    assert settings["SQLiteYStore.db_path"] == f"{store}/ystore.db"
    assert settings["SQLiteYStore.squash_after_inactivity_of"] == 600
    assert settings["YDocExtension.session_store_path"] == f"{store}/collaboration_sessions.json"
    assert settings["BaseFileIdManager.db_path"] == f"{store}/file_id_manager.db"
    assert oct(store.stat().st_mode & 0o777) == "0o700"
    # The single-user page: the collaboration interface's plugins are disabled, nothing else is touched.
    hook = settings["ServerApp.tornado_settings"]["page_config_hook"]
    page = hook(None, {"disabledExtensions": ["@jupyterlab/notebook-extension:cell-executor"], "x": 1})
    assert page == {"disabledExtensions": ["@jupyterlab/notebook-extension:cell-executor", NEWS_QUESTION,
                                           *SSX_COLLABORATION_UI], "x": 1}
    assert "@jupyter/collaboration-extension:shared-link" in SSX_COLLABORATION_UI


def test_the_names_are_those_the_installed_packages_use() -> None:
    from importlib import metadata

    installed = {f.name for f in metadata.distribution("jupyter-server-nbmodel").files or []}
    assert "jupyter_server_nbmodel.json" in installed
    share = Path(__file__).resolve().parent.parent / ".venv" / "share" / "jupyter" / "labextensions"
    if share.is_dir():
        assert all((share / name / "package.json").is_file() for name in SSX_LABEXTENSIONS)
    for module in SSX_SERVER_EXTENSIONS:
        __import__(module)
    # The schema jrd's counter listens for is one nbmodel registers on its event logger.
    from jupyter_server_nbmodel.event_logger import event_logger
    assert CELL_EXECUTION_SCHEMA in event_logger.schemas.schema_ids


def test_jupyter_imports_the_counter_from_its_own_dir_wherever_jrd_is(tmp_path: Path) -> None:
    """A copy of jrd/execution_counter.py beside Jupyter's config, first on Jupyter's sys.path: the Jupyter
    account reads it there even when jrd is a checkout in root's 0700 home."""
    import importlib
    import sys

    inp = inputs(True, tmp_path)
    files = render_all(inp)
    copy = files[f"{EXECUTION_COUNTER_EXTENSION}.py"]
    assert copy.path == inp.layout.jupyter_dir / "jrd_execution_counter.py"
    assert (copy.mode, copy.owner) == (0o644, files["jupyter_server_config.py"].owner)
    assert copy.content == (Path(__file__).resolve().parent.parent / "jrd" / "execution_counter.py").read_bytes()
    text = files["jupyter_server_config.py"].content.decode()
    assert f"_sys.path.insert(0, {str(inp.layout.jupyter_dir)!r})" in text
    copy.path.parent.mkdir(parents=True, exist_ok=True)
    copy.path.write_bytes(copy.content)
    sys.path.insert(0, str(copy.path.parent))
    try:
        module = importlib.import_module(EXECUTION_COUNTER_EXTENSION)
        assert module._jupyter_server_extension_points() == [{"module": "jrd_execution_counter"}]
    finally:
        sys.path.remove(str(copy.path.parent))
        sys.modules.pop(EXECUTION_COUNTER_EXTENSION, None)


def test_the_execution_counter_counts_the_events_nbmodel_emits() -> None:
    from jupyter_server_nbmodel.event_logger import event_logger

    counts = ExecutionCounts()

    async def three_cells() -> None:
        event_logger.add_listener(schema_id=CELL_EXECUTION_SCHEMA, listener=counts.on_event)
        try:
            for success in (True, False, None):
                ids = {"cell_id": "c", "document_id": "json:notebook:x", "timestamp": "2025-01-01T00:00:00Z"}
                event_logger.emit(schema_id=CELL_EXECUTION_SCHEMA, data={"event_type": "execution_start", **ids})
                if success is not None:  # the third still runs
                    event_logger.emit(schema_id=CELL_EXECUTION_SCHEMA,
                                      data={"event_type": "execution_end", "success": success, **ids})
            await event_logger.gather_listeners()
        finally:
            event_logger.remove_listener(schema_id=CELL_EXECUTION_SCHEMA, listener=counts.on_event)

    asyncio.run(three_cells())
    assert counts.as_json() == {"started": 3, "ended": {"ok": 1, "error": 1}}


def test_an_unreadable_store_is_set_aside_and_a_missing_one_left_to_jupyter(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "jupyter" / "collaboration"
    store.mkdir(parents=True)
    (store / "ystore.db").write_bytes(b"not a database, " * 100)
    (store / "ystore.db-journal").write_bytes(b"stale")
    good = sqlite3.connect(store / "file_id_manager.db")
    good.execute("create table t (x)")
    good.commit()
    good.close()
    notebook = tmp_path / "n.ipynb"
    notebook.write_text("{}")

    jupyter_settings(render_jupyter_config(inputs(True, tmp_path)))

    names = sorted(p.name for p in store.iterdir())
    assert "ystore.db" not in names and "ystore.db-journal" not in names
    assert [n for n in names if n.startswith("ystore.db.unreadable-")] and len(names) == 3, names
    assert (store / "file_id_manager.db").exists()
    assert notebook.read_text() == "{}"
    assert "ystore.db was unreadable" in capsys.readouterr().out
    # Deleted altogether: nothing to do at all, Jupyter makes a new one.
    for p in store.iterdir():
        p.unlink()
    store.rmdir()
    jupyter_settings(render_jupyter_config(inputs(True, tmp_path)))
    assert store.is_dir() and not list(store.iterdir())


def test_turning_it_on_or_off_restarts_jupyter_and_nothing_else() -> None:
    off, on = inputs(False), inputs(True)
    plan = plan_reload(off.config, on.config, render_all(off), render_all(on))
    assert plan.restart_jupyter and plan.changed == ["jupyter_server_config.py"]
    assert not (plan.reload_nginx or plan.supervisord_update)

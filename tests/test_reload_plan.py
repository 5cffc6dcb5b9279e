"""Which actions a reload takes, decided without files or processes."""

from __future__ import annotations

from pathlib import Path

from jrd.config import parse_config
from jrd.reload_plan import effective_config, jupyter_baseline, plan_reload
from jrd.render import RenderedFile

SUPERVISORD = """[supervisord]
logfile_maxbytes = {max_bytes}
[program:jupyter]
command = jupyter lab {args}
stdout_logfile_maxbytes = {max_bytes}
[program:nginx]
command = {nginx}
"""


def files(nginx: str = "worker 1", jupyter: str = "c.A = 1", args: str = "", max_bytes: int = 10,
          nginx_bin: str = "nginx") -> dict[str, RenderedFile]:
    sup = SUPERVISORD.format(args=args, max_bytes=max_bytes, nginx=nginx_bin)
    return {
        "supervisord.conf": RenderedFile(Path("/r/supervisord.conf"), sup.encode(), 0o600),
        "nginx.conf": RenderedFile(Path("/r/nginx.conf"), nginx.encode()),
        "jupyter_server_config.py": RenderedFile(Path("/r/jupyter.py"), jupyter.encode(), 0o600),
    }


def cfg(text: str = ""):  # type: ignore[no-untyped-def]
    return parse_config(text, source=Path("/etc/jrd/jrd.toml"))


def test_nothing_changed_means_no_action() -> None:
    plan = plan_reload(cfg(), cfg(), files(), files())
    assert plan.changed == []
    assert not (plan.reload_nginx or plan.restart_jupyter or plan.supervisord_update or plan.log_level)


def test_nginx_only_change_is_a_graceful_reload_only() -> None:
    plan = plan_reload(cfg(), cfg(), files(), files(nginx="worker 2"))
    assert plan.changed == ["nginx.conf"]
    assert plan.reload_nginx and not plan.restart_jupyter and not plan.supervisord_update


def test_a_new_certificate_reloads_nginx_even_with_the_same_files() -> None:
    assert plan_reload(cfg(), cfg(), files(), files(), tls_changed=True).reload_nginx


def test_jupyter_config_change_restarts_jupyter() -> None:
    plan = plan_reload(cfg(), cfg(), files(), files(jupyter="c.A = 2"))
    assert plan.restart_jupyter and not plan.reload_nginx and not plan.jupyter_needs_update


def test_jupyter_program_change_waits_for_the_jupyter_restart() -> None:
    plan = plan_reload(cfg(), cfg(), files(), files(args="--debug"))
    assert plan.restart_jupyter and plan.jupyter_needs_update
    assert not plan.supervisord_update, "supervisord would restart Jupyter now, ignoring restart_policy"


def test_nginx_program_change_is_a_supervisord_update_now() -> None:
    plan = plan_reload(cfg(), cfg(), files(), files(nginx_bin="/usr/local/sbin/nginx"))
    assert plan.supervisord_update and not plan.restart_jupyter


def test_log_rotation_change_touches_both_programs_and_waits_for_jupyter() -> None:
    plan = plan_reload(cfg(), cfg("[log]\nmax_bytes = 2048\n"), files(), files(max_bytes=2048))
    assert plan.jupyter_needs_update and plan.restart_jupyter and not plan.supervisord_update


def test_log_level_is_applied_in_place() -> None:
    plan = plan_reload(cfg(), cfg('[log]\nlevel = "debug"\n'), files(), files())
    assert plan.log_level == "debug"


def test_paths_and_metrics_changes_wait_for_a_restart_of_jrd_and_say_so() -> None:
    old = cfg()
    new = cfg('[paths]\nstate_dir = "/srv/jrd"\n[metrics]\nlisten = "127.0.0.1:9999"\n[nginx]\nport = 9443\n')
    effective, notes = effective_config(old, new)
    assert effective.paths == old.paths and effective.metrics == old.metrics
    assert effective.nginx.port == 9443, "the rest of the change applies"
    assert len(notes) == 2
    assert all("/etc/jrd/jrd.toml" in n and "restart" in n for n in notes)
    assert "[paths]" in notes[0] and "[metrics]" in notes[1]


def test_a_pending_restart_is_cancelled_when_the_config_goes_back() -> None:
    running = files()
    changed = files(jupyter="c.A = 2")
    pending = jupyter_baseline(running)
    plan = plan_reload(cfg(), cfg(), changed, running, pending=pending)
    assert plan.cancel_jupyter_restart and not plan.restart_jupyter


def test_a_pending_restart_compares_with_what_jupyter_runs() -> None:
    running = files()
    pending = jupyter_baseline(running)
    # First reload changed the program (deferred update); the second changes nginx only.
    first = files(args="--debug")
    second = files(args="--debug", nginx="worker 2")
    plan = plan_reload(cfg(), cfg(), first, second, pending=pending)
    assert plan.reload_nginx
    assert plan.restart_jupyter and plan.jupyter_needs_update, "the deferred update is still owed"
    assert not plan.cancel_jupyter_restart


def with_token(files_: dict[str, RenderedFile], token: bytes) -> dict[str, RenderedFile]:
    return {**files_, "gateway-token": RenderedFile(Path("/r/jupyter/gateway-token"), token, 0o600)}


def test_a_gateway_change_restarts_jupyter() -> None:
    """[gateway] reaches Jupyter through its config file: a Jupyter restart, under its policy."""
    old, new = cfg(), cfg('[gateway]\nurl = "http://127.0.0.1:8888"\n')
    plan = plan_reload(old, new, files(), files(jupyter="c.GatewayClient.url = 'http://127.0.0.1:8888'"))
    assert plan.restart_jupyter and not plan.reload_nginx and not plan.supervisord_update


def test_a_new_gateway_token_restarts_jupyter_which_reads_it_at_start() -> None:
    plan = plan_reload(cfg(), cfg(), with_token(files(), b"old"), with_token(files(), b"new"))
    assert plan.changed == ["gateway-token"]
    assert plan.restart_jupyter and not plan.reload_nginx
    same = plan_reload(cfg(), cfg(), with_token(files(), b"old"), with_token(files(), b"old"))
    assert not same.restart_jupyter


def test_a_pending_restart_for_a_new_token_is_cancelled_when_the_token_goes_back() -> None:
    running = with_token(files(), b"old")
    pending = jupyter_baseline(running)
    plan = plan_reload(cfg(), cfg(), with_token(files(), b"new"), running, pending=pending)
    assert plan.cancel_jupyter_restart and not plan.restart_jupyter
    assert b"old" not in repr(pending).encode(), "the token stays out of the baseline's repr"

"""jupyter_server_config.py: Python source, so every value is written with `repr`."""

from __future__ import annotations

import ipaddress
from importlib import resources
from pathlib import Path

from jrd.render.base import RenderInputs, is_ip, fill, source_name, template


# Server-side execution ([jupyter] server_side_execution): the server extensions that
# jupyter-collaboration and jupyter-server-nbmodel install, and their frontend parts.
SSX_SERVER_EXTENSIONS = ("jupyter_server_fileid", "jupyter_server_ydoc", "jupyter_server_nbmodel")
# jrd's own, run inside Jupyter beside them: counts their executions for the metrics.  Jupyter
# loads it by this name from a copy of jrd/execution_counter.py in its own config dir, which the
# Jupyter account can read wherever jrd is installed (a checkout in root's 0700 home included).
EXECUTION_COUNTER_EXTENSION = "jrd_execution_counter"
SSX_LABEXTENSIONS = ("@jupyter/collaboration-extension", "@jupyter/docprovider-extension",
                     "@datalayer/jupyter-server-nbmodel")
# The collaboration interface a single-user JupyterLab leaves out (plugin ids of
# @jupyter/collaboration-extension); the document provider and executor stay.
SSX_COLLABORATION_UI = tuple("@jupyter/collaboration-extension:" + plugin for plugin in (
    "shared-link", "userMenu", "user-menu-bar", "rtcPanel", "rtcGlobalAwareness", "userEditorCursors"))
# Always left out of the page: the question whether to fetch news, which is off.
NEWS_QUESTION = "@jupyterlab/apputils-extension:announcements"
# A document still for this long has its history squashed into one update.
YSTORE_SQUASH_SECONDS = 600


def execution_counter_source() -> bytes:
    """The extension's source, for its copy beside Jupyter's config (EXECUTION_COUNTER_EXTENSION)."""
    return (resources.files("jrd") / "execution_counter.py").read_bytes()


def jupyter_root_dir(inp: RenderInputs) -> Path:
    return inp.config.jupyter.root_dir or inp.jupyter_account.home


def jupyter_command(inp: RenderInputs) -> list[str]:
    cfg = inp.config.jupyter
    return [
        str(inp.jupyter_executable),
        cfg.app,
        f"--config={inp.layout.jupyter_conf}",
        *cfg.extra_args,
    ]


def jupyter_environment(inp: RenderInputs) -> dict[str, str]:
    acct = inp.jupyter_account
    venv_bin = inp.python_executable.parent
    env = {
        "HOME": str(acct.home),
        "USER": acct.name,
        "LOGNAME": acct.name,
        "SHELL": "/bin/bash",
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "JUPYTER_RUNTIME_DIR": str(inp.layout.jupyter_dir / "runtime"),
        "PYTHONUNBUFFERED": "1",
    }
    gw = inp.config.gateway
    if gw.enabled and gw.kernel_launch_timeout_seconds is not None:
        # GatewayClient reads it from the environment when it is imported, before any
        # config file, and sends it with every kernel start (the gateway's launch timeout).
        env["KERNEL_LAUNCH_TIMEOUT"] = str(gw.kernel_launch_timeout_seconds)
    return env


def gateway_token_file_content(inp: RenderInputs) -> bytes:
    """What the Jupyter account's copy of the gateway token holds: the token, or nothing."""
    return inp.gateway_token.encode("ascii") if inp.config.gateway.enabled else b""


def render_jupyter_config(inp: RenderInputs) -> str:
    cfg = inp.config
    gw = cfg.gateway
    dns = tuple(h for h in cfg.accepted_hosts if not is_ip(h))
    remote_ips = any(not ipaddress.ip_address(h).is_loopback for h in cfg.accepted_hosts if is_ip(h))
    request, launch = gw.request_timeout_seconds, gw.kernel_launch_timeout_seconds
    timeouts = gw.enabled and request is not None and launch is not None
    ssx = cfg.jupyter.server_side_execution
    return fill(
        template("jupyter_server_config.py.tmpl"),
        source=source_name(inp),
        port=int(cfg.jupyter.port),
        root_dir=repr(str(jupyter_root_dir(inp))),
        base_url=repr(cfg.jupyter.base_url),
        display_url=repr(cfg.url),
        local_hostnames=repr(list(dns)),
        allow_remote_access=repr(remote_ips),
        hashed_password=repr(inp.hashed_password),
        token=repr(inp.internal_token),
        allow_root=repr(cfg.jupyter.allow_root),
        gateway=gw.enabled,
        gateway_url=repr(gw.url),
        gateway_timeouts=timeouts,
        request_timeout=repr(float(request or 0)),
        # Exactly the difference: then request_timeout = KERNEL_LAUNCH_TIMEOUT + pad, and
        # GatewayClient raises neither to match the other.
        launch_timeout_pad=repr(float((request or 0) - (launch or 0))),
        gateway_token=gw.enabled and bool(inp.gateway_token),
        gateway_token_file=repr(str(inp.layout.gateway_token)),
        server_extensions=repr({name: ssx for name in (*SSX_SERVER_EXTENSIONS, EXECUTION_COUNTER_EXTENSION)}),
        ssx_on=ssx,
        ssx_off=not ssx,
        labextensions=repr(set(SSX_LABEXTENSIONS)),
        store_dir=repr(str(inp.layout.collaboration_dir)),
        ystore_squash_seconds=YSTORE_SQUASH_SECONDS,
        disabled_plugins=repr([NEWS_QUESTION, *(SSX_COLLABORATION_UI if ssx else ())]),
        extension_dir=repr(str(inp.layout.jupyter_dir)),
    )

"""Pure rendering: config and facts in, file contents out.

One module per generated file (`nginx`, `supervisord`, `jupyter`), each
with its whole file as a template in `templates/`; `base` holds what they
share.  Nothing here touches the file system or the environment: the caller
gathers the facts (`RenderInputs`), and `render_all` returns every derived
file with the mode and owner it must have; `jrd.fsutil.atomic_write` puts
them in place.
"""

from __future__ import annotations

from jrd.render.base import Account, RenderedFile, RenderInputs, fill
from jrd.render.jupyter import (
    EXECUTION_COUNTER_EXTENSION, execution_counter_source, gateway_token_file_content, jupyter_command,
    jupyter_environment, jupyter_root_dir, render_jupyter_config,
)
from jrd.render.nginx import RESTARTING_JSON, heal_script, nginx_command, nginx_str, render_nginx_conf, restarting_page
from jrd.render.supervisord import render_supervisord_conf, supervisor_command, supervisor_environment, sv_value

__all__ = [
    "Account", "RenderInputs", "RenderedFile", "fill", "render_all",
    "render_nginx_conf", "render_supervisord_conf", "render_jupyter_config",
    "jupyter_command", "jupyter_environment", "jupyter_root_dir", "nginx_command",
    "nginx_str", "supervisor_command", "supervisor_environment", "sv_value",
]


def render_all(inp: RenderInputs) -> dict[str, RenderedFile]:
    """Every derived file, keyed by a short name, with its mode and owner."""
    layout = inp.layout
    acct = inp.jupyter_account
    jupyter_owner = (acct.uid, acct.gid) if inp.running_as_root else None
    files = {
        "supervisord.conf": RenderedFile(layout.supervisord_conf, render_supervisord_conf(inp).encode(), 0o600),
        "nginx.conf": RenderedFile(layout.nginx_conf, render_nginx_conf(inp).encode(), 0o644),
        # Holds the password hash and the internal token: the Jupyter account only.
        "jupyter_server_config.py": RenderedFile(
            layout.jupyter_conf, render_jupyter_config(inp).encode(), 0o600, jupyter_owner
        ),
        # A secret, read by Jupyter at its start: the Jupyter account only.  Always written,
        # empty when there is no gateway token, so that turning the gateway off also
        # takes the token out of the Jupyter dir.
        "gateway-token": RenderedFile(
            layout.gateway_token, gateway_token_file_content(inp), 0o600, jupyter_owner
        ),
        # jrd's server extension, for Jupyter to import from its own dir (render.jupyter).
        f"{EXECUTION_COUNTER_EXTENSION}.py": RenderedFile(
            layout.jupyter_dir / f"{EXECUTION_COUNTER_EXTENSION}.py", execution_counter_source(), 0o644, jupyter_owner
        ),
    }
    # What nginx answers while Jupyter is down, and the script that carries an open tab through it.
    public = layout.nginx_public_dir
    files["restarting.html"] = RenderedFile(public / "restarting.html", restarting_page(inp), 0o644)
    files["restarting.json"] = RenderedFile(public / "restarting.json", RESTARTING_JSON, 0o644)
    files["heal.js"] = RenderedFile(public / "heal.js", heal_script(), 0o644)
    if inp.ca_pem is not None:
        files["ca.pem"] = RenderedFile(layout.nginx_public_dir / "ca.pem", inp.ca_pem, 0o644)
    if inp.ca_mobileconfig is not None:
        files["ca.mobileconfig"] = RenderedFile(
            layout.nginx_public_dir / "ca.mobileconfig", inp.ca_mobileconfig, 0o644
        )
    return files

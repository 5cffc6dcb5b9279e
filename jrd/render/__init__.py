"""Pure rendering: config and facts in, file contents out.

Nothing here touches the file system or the environment.  The caller
gathers the facts (`RenderInputs`), and `render_all` returns every derived
file with the mode and owner it must have; `jrd.fsutil.atomic_write` puts
them in place.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jrd.config import Config
from jrd.layout import Layout


@dataclass(frozen=True)
class Account:
    """A Unix account that a program runs as."""

    name: str
    uid: int
    gid: int
    home: Path


@dataclass(frozen=True)
class RenderInputs:
    """Facts about the machine and the state dir that rendering needs."""

    config: Config
    layout: Layout
    jupyter_executable: Path
    nginx_executable: Path
    python_executable: Path
    jupyter_account: Account
    hashed_password: str
    internal_token: str
    cert_file: Path
    key_file: Path
    running_as_root: bool
    # Which account nginx's workers use when the master runs as root.
    nginx_worker_user: str = "nobody"
    ca_pem: bytes | None = None
    ca_mobileconfig: bytes | None = None
    event_listener_command: str | None = None
    # (major, minor, patch) of the nginx binary: 1.25.1 replaced `listen ... http2` with `http2 on;`.
    nginx_version: tuple[int, int, int] = (1, 22, 1)


@dataclass(frozen=True)
class RenderedFile:
    path: Path
    content: bytes
    mode: int = 0o644
    owner: tuple[int, int] | None = None


def fill(template: str, **values: object) -> str:
    """Replace each `{{name}}` in `template`; every name must be given and used."""
    out = template
    for name, value in values.items():
        marker = "{{" + name + "}}"
        if marker not in out:
            raise KeyError(f"template has no {marker}")
        out = out.replace(marker, str(value))
    if "{{" in out:
        start = out.index("{{")
        raise KeyError(f"template value missing: {out[start:out.index('}}', start) + 2]}")
    return out


def _template(name: str) -> str:
    return resources.files("jrd.render").joinpath("templates", name).read_text(encoding="utf-8")


def render_nginx_conf(inp: RenderInputs) -> str:
    cfg, layout = inp.config, inp.layout
    ng = cfg.nginx
    http2_directive = inp.nginx_version >= (1, 25, 1)
    http2 = " http2" if ng.http2 and not http2_directive else ""
    http2_on = "\n        http2 on;" if ng.http2 and http2_directive else ""
    listen = "\n".join(f"        listen {addr}:{ng.port} ssl{http2};" for addr in ng.listen) + http2_on
    listen_default = "\n".join(
        f"        listen {addr}:{ng.port} ssl{http2} default_server;" for addr in ng.listen
    ) + http2_on
    names = " ".join(_nginx_host(h) for h in cfg.accepted_hosts)
    public = layout.nginx_public_dir
    ca_locations = ""
    if inp.ca_pem is not None:
        ca_locations = (
            "        # The public CA certificate, so that a device can fetch it to trust it.\n"
            "        location = /jrd/ca.pem {\n"
            "            default_type application/x-pem-file;\n"
            f"            alias {public}/ca.pem;\n"
            "        }\n"
        )
    if inp.ca_mobileconfig is not None:
        ca_locations += (
            "        location = /jrd/ca.mobileconfig {\n"
            "            default_type application/x-apple-aspen-config;\n"
            f"            alias {public}/ca.mobileconfig;\n"
            "        }\n"
        )
    return fill(
        _template("nginx.conf.tmpl"),
        source=cfg.source or "built-in defaults",
        pid_file=layout.nginx_pid_file,
        error_log_level="info" if cfg.log.level == "debug" else "notice",
        user_line=f"user {inp.nginx_worker_user};" if inp.running_as_root else "",
        worker_shutdown_timeout=ng.worker_shutdown_timeout_seconds,
        temp_dir=layout.nginx_temp_dir,
        cert_file=inp.cert_file,
        key_file=inp.key_file,
        gzip="on" if ng.gzip else "off",
        jupyter_port=cfg.jupyter.port,
        listen_default=listen_default,
        listen=listen,
        server_names=names,
        client_max_body_size=ng.client_max_body_size,
        ca_locations=ca_locations,
        proxy_timeout=ng.proxy_timeout_seconds,
        status_socket=layout.nginx_status_socket,
    )


def _nginx_host(host: str) -> str:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{addr}]" if addr.version == 6 else str(addr)


def jupyter_command(inp: RenderInputs) -> list[str]:
    cfg = inp.config.jupyter
    return [
        str(inp.jupyter_executable),
        cfg.app,
        f"--config={inp.layout.jupyter_conf}",
        *cfg.extra_args,
    ]


def nginx_command(inp: RenderInputs) -> list[str]:
    return [str(inp.nginx_executable), "-e", "stderr", "-c", str(inp.layout.nginx_conf)]


def jupyter_environment(inp: RenderInputs) -> dict[str, str]:
    acct = inp.jupyter_account
    venv_bin = inp.python_executable.parent
    return {
        "HOME": str(acct.home),
        "USER": acct.name,
        "LOGNAME": acct.name,
        "SHELL": "/bin/bash",
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "JUPYTER_RUNTIME_DIR": str(inp.layout.jupyter_dir / "runtime"),
        "PYTHONUNBUFFERED": "1",
    }


def _supervisor_env(env: dict[str, str]) -> str:
    # supervisord's environment syntax: KEY="value",... with % doubled.
    return ",".join(f'{k}="{v}"'.replace("%", "%%") for k, v in env.items())


def _supervisor_command(argv: list[str]) -> str:
    return shlex.join(argv).replace("%", "%%")


def render_supervisord_conf(inp: RenderInputs) -> str:
    cfg, layout = inp.config, inp.layout
    acct = inp.jupyter_account
    listener = ""
    if inp.event_listener_command:
        listener = (
            "\n[eventlistener:jrd-events]\n"
            f"command = {inp.event_listener_command}\n"
            "events = PROCESS_STATE\n"
            "buffer_size = 1024\n"
            "autorestart = true\n"
            "priority = 1\n"
            f"stderr_logfile = {layout.log_dir}/events.log\n"
            f"stderr_logfile_maxbytes = {cfg.log.max_bytes}\n"
            f"stderr_logfile_backups = {cfg.log.backups}\n"
        )
    return fill(
        _template("supervisord.conf.tmpl"),
        source=cfg.source or "built-in defaults",
        socket=layout.supervisor_socket,
        log_dir=layout.log_dir,
        log_max_bytes=cfg.log.max_bytes,
        log_backups=cfg.log.backups,
        pid_file=layout.supervisor_dir / "supervisord.pid",
        supervisord_user="user = root" if inp.running_as_root else "",
        jupyter_command=_supervisor_command(jupyter_command(inp)),
        jupyter_root_dir=jupyter_root_dir(inp),
        jupyter_user=f"user = {acct.name}" if inp.running_as_root else "",
        jupyter_environment=_supervisor_env(jupyter_environment(inp)),
        nginx_command=_supervisor_command(nginx_command(inp)),
        event_listener=listener,
    )


def jupyter_root_dir(inp: RenderInputs) -> Path:
    return inp.config.jupyter.root_dir or inp.jupyter_account.home


def render_jupyter_config(inp: RenderInputs) -> str:
    cfg = inp.config
    dns = tuple(h for h in cfg.accepted_hosts if not _is_ip(h))
    remote_ips = any(not ipaddress.ip_address(h).is_loopback for h in cfg.accepted_hosts if _is_ip(h))
    return fill(
        _template("jupyter_server_config.py.tmpl"),
        source=cfg.source or "built-in defaults",
        port=cfg.jupyter.port,
        root_dir=repr(str(jupyter_root_dir(inp))),
        base_url=repr(cfg.jupyter.base_url),
        display_url=repr(cfg.url),
        local_hostnames=repr(list(dns)),
        allow_remote_access=repr(remote_ips),
        hashed_password=repr(inp.hashed_password),
        token=repr(inp.internal_token),
        allow_root=repr(cfg.jupyter.allow_root),
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
    }
    if inp.ca_pem is not None:
        files["ca.pem"] = RenderedFile(layout.nginx_public_dir / "ca.pem", inp.ca_pem, 0o644)
    if inp.ca_mobileconfig is not None:
        files["ca.mobileconfig"] = RenderedFile(
            layout.nginx_public_dir / "ca.mobileconfig", inp.ca_mobileconfig, 0o644
        )
    return files

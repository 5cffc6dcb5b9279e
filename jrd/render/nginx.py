"""nginx.conf: TLS, the Host allow-list, the login rate limit and the proxy to Jupyter."""

from __future__ import annotations

import ipaddress
import re

from jrd.render.base import RenderInputs, comment_text, fill, source_name, template

# A token nginx reads as it is; anything else is written as a double-quoted string.
_PLAIN = re.compile(r"^[A-Za-z0-9_./:+@,=-]+\Z")


def nginx_str(value: object) -> str:
    """`value` as one nginx token that means exactly `value`.

    Inside double quotes nginx reads `\\"` and `\\\\` as escapes, and a blank, `;`,
    `{`, `}` or `#` as themselves.  `$` has no escape (nginx expands variables in
    many directives) and a control character cannot be written: both are refused
    here, and earlier by the config validators.
    """
    text = str(value)
    if _PLAIN.match(text):
        return text
    if "$" in text or comment_text(text) != text:
        raise ValueError(f"{text!r} cannot be written into nginx.conf (it holds '$' or a control character)")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _message_text(value: object) -> str:
    """`value` inside a double-quoted nginx string that only people read: `$` shown as '?'."""
    return comment_text(value).replace("$", "?").replace("\\", "\\\\").replace('"', '\\"')


def _nginx_host(host: str) -> str:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{addr}]" if addr.version == 6 else str(addr)


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
    login_limit = ng.login_rate_per_minute > 0
    return fill(
        template("nginx.conf.tmpl"),
        source=source_name(inp),
        source_text=_message_text(cfg.source or "built-in defaults"),
        pid_file=nginx_str(layout.nginx_pid_file),
        error_log_level="info" if cfg.log.level == "debug" else "notice",
        user_line=f"user {nginx_str(inp.nginx_worker_user)};" if inp.running_as_root else "",
        worker_shutdown_timeout=ng.worker_shutdown_timeout_seconds,
        temp_client_body=nginx_str(layout.nginx_temp_dir / "client_body"),
        temp_proxy=nginx_str(layout.nginx_temp_dir / "proxy"),
        temp_fastcgi=nginx_str(layout.nginx_temp_dir / "fastcgi"),
        temp_uwsgi=nginx_str(layout.nginx_temp_dir / "uwsgi"),
        temp_scgi=nginx_str(layout.nginx_temp_dir / "scgi"),
        cert_file=nginx_str(inp.cert_file),
        key_file=nginx_str(inp.key_file),
        gzip="on" if ng.gzip else "off",
        jupyter_port=cfg.jupyter.port,
        login_limit=login_limit,
        login_key=nginx_str(f"POST:{cfg.jupyter.base_url}login"),
        login_rate=ng.login_rate_per_minute,
        login_burst=ng.login_burst,
        listen_default=listen_default,
        listen=listen,
        server_names=names,
        client_max_body_size=ng.client_max_body_size,
        serve_ca_pem=inp.ca_pem is not None,
        ca_pem_file=nginx_str(public / "ca.pem"),
        serve_ca_mobileconfig=inp.ca_mobileconfig is not None,
        ca_mobileconfig_file=nginx_str(public / "ca.mobileconfig"),
        proxy_timeout=ng.proxy_timeout_seconds,
        status_listen=nginx_str(f"unix:{layout.nginx_status_socket}"),
    )


def nginx_command(inp: RenderInputs) -> list[str]:
    return [str(inp.nginx_executable), "-e", "stderr", "-c", str(inp.layout.nginx_conf)]

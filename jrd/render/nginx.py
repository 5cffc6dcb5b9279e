"""nginx.conf: TLS, the Host allow-list, the login rate limit and the proxy to Jupyter."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from pathlib import Path

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


# What nginx compresses (gzip and brotli) on the fly.
COMPRESS_TYPES = ("text/css text/plain application/javascript text/javascript application/json "
                  "application/manifest+json image/svg+xml image/x-icon")
BROTLI_FILTER = "ngx_http_brotli_filter_module"
BROTLI_STATIC = "ngx_http_brotli_static_module"
# Seconds a client is asked to wait (Retry-After) while Jupyter is restarting.
RETRY_AFTER = 2


def brotli_modules(inp: RenderInputs) -> tuple[Path, ...]:
    """The brotli modules built for this nginx, when [nginx] brotli is on and both are installed."""
    if not inp.config.nginx.brotli:
        return ()
    found = tuple(inp.nginx_build.dynamic_module(name) for name in (BROTLI_FILTER, BROTLI_STATIC))
    return tuple(p for p in found if p is not None) if all(found) else ()


def heal_script() -> bytes:
    return template("heal.js").encode()


def restarting_page(inp: RenderInputs) -> bytes:
    status_url = json.dumps(inp.config.jupyter.base_url + "api").replace("<", "\\u003c")
    return fill(template("restarting.html"), retry_after=RETRY_AFTER, status_url=status_url).encode()


RESTARTING_JSON = json.dumps({
    "message": "Jupyter is restarting; try again in a few seconds",
    "reason": "jrd: Jupyter is not answering (restarting or stopped)",
}).encode()


def render_nginx_conf(inp: RenderInputs) -> str:
    cfg, layout = inp.config, inp.layout
    ng = cfg.nginx
    build = inp.nginx_build
    modules = brotli_modules(inp)
    heal = build.has("http_sub")
    static = inp.static_bundles
    precompressed = []
    if modules:
        precompressed.append("            brotli_static on;")
    if build.has("http_gzip_static"):
        precompressed.append("            gzip_static on;")
    http2_directive = build.version >= (1, 25, 1)
    http2 = " http2" if ng.http2 and not http2_directive else ""
    http2_on = "\n        http2 on;" if ng.http2 and http2_directive else ""
    listen = "\n".join(f"        listen {addr}:{ng.port} ssl{http2};" for addr in ng.listen) + http2_on
    listen_default = "\n".join(
        f"        listen {addr}:{ng.port} ssl{http2} default_server;" for addr in ng.listen
    ) + http2_on
    public = layout.nginx_public_dir
    login_limit = ng.login_rate_per_minute > 0
    acme = inp.acme
    acme_pair = acme is not None and acme.cert is not None and acme.key is not None
    acme_tls = default_tls = ""
    server_hosts = cfg.accepted_hosts
    if acme_pair:
        assert acme is not None and acme.cert is not None and acme.key is not None
        acme_tls = (f"        ssl_certificate {nginx_str(acme.cert)};\n"
                    f"        ssl_certificate_key {nginx_str(acme.key)};\n")
        server_hosts = tuple(h for h in cfg.accepted_hosts if h not in acme.hosts)
        # Without SNI (a client that asked for an IP address) the default server's certificate is
        # used: the CA's when it certifies a public address, else jrd's own.
        if any(":" in h or h.replace(".", "").isdigit() for h in acme.hosts):
            default_tls = acme_tls
    values = dict(
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
        acme_http=acme is not None,
        acme_http_listen="\n".join(f"        listen {a}:{acme.http_port};" for a in ng.listen) if acme else "",
        acme_challenge_dir=nginx_str(f"{acme.challenge_dir}/") if acme else "",
        https_port="" if ng.port == 443 else f":{ng.port}",
        gzip="on" if ng.gzip else "off",
        load_modules="".join(f"load_module {nginx_str(m)};\n" for m in modules),
        compress_types=COMPRESS_TYPES,
        brotli=bool(modules),
        retry_after=RETRY_AFTER,
        restarting_html_file=nginx_str(public / "restarting.html"),
        restarting_json_file=nginx_str(public / "restarting.json"),
        heal=heal,
        heal_js_file=nginx_str(public / "heal.js"),
        heal_js_hash=hashlib.sha256(heal_script()).hexdigest()[:16],
        static_bundles=static is not None,
        static_url=nginx_str(f"{cfg.jupyter.base_url}static/lab/"),
        static_bundles_dir=nginx_str(f"{static}/"),
        static_precompressed="\n".join(precompressed),
        jupyter_port=cfg.jupyter.port,
        login_limit=login_limit,
        login_key=nginx_str(f"POST:{cfg.jupyter.base_url}login"),
        login_rate=ng.login_rate_per_minute,
        login_burst=ng.login_burst,
        listen_default=listen_default,
        listen=listen,
        client_max_body_size=ng.client_max_body_size,
        serve_ca_pem=inp.ca_pem is not None,
        ca_pem_file=nginx_str(public / "ca.pem"),
        serve_ca_mobileconfig=inp.ca_mobileconfig is not None,
        ca_mobileconfig_file=nginx_str(public / "ca.mobileconfig"),
        proxy_timeout=ng.proxy_timeout_seconds,
        status_listen=nginx_str(f"unix:{layout.nginx_status_socket}"),
        default_tls=default_tls,
    )
    conf = fill(template("nginx.conf.tmpl"), **values, server_names=_names(server_hosts), server_tls="")
    if not acme_pair:
        return conf
    assert acme is not None
    # The same Jupyter server again, for the CA's names with the CA's certificate.
    other = fill(template("nginx.conf.tmpl"), **values, server_names=_names(acme.hosts), server_tls=acme_tls)
    begin, end = "    # The Jupyter server.", "    # End of the Jupyter server.\n"
    block = other[other.index(begin):other.index(end)]
    return conf.replace(end, end + block, 1)


def _names(hosts: tuple[str, ...]) -> str:
    return " ".join(_nginx_host(h) for h in hosts)


def nginx_command(inp: RenderInputs) -> list[str]:
    return [str(inp.nginx_executable), "-e", "stderr", "-c", str(inp.layout.nginx_conf)]

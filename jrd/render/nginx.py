"""nginx.conf: TLS, the Host allow-list, the login rate limit and the proxy to Jupyter."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from pathlib import Path

from jrd.render.base import RenderInputs, is_ip, comment_text, fill, source_name, template

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
                  "application/manifest+json image/svg+xml image/x-icon image/vnd.microsoft.icon")
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
    modules = brotli_modules(inp)
    login_limit = ng.login_rate_per_minute > 0
    values = dict(
        source=source_name(inp),
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
        load_modules="".join(f"load_module {nginx_str(m)};\n" for m in modules),
        compress_types=COMPRESS_TYPES,
        brotli=bool(modules),
        login_limit=login_limit,
        login_key=nginx_str(f"POST:{cfg.jupyter.base_url}login"),
        login_rate=ng.login_rate_per_minute,
        login_burst=ng.login_burst,
        jupyter_port=cfg.jupyter.port,
        status_listen=nginx_str(f"unix:{layout.nginx_status_socket}"),
    )
    return fill(template("nginx.conf.tmpl"), **values, servers="\n".join(_servers(inp)))


def _servers(inp: RenderInputs) -> list[str]:
    """The HTTPS server blocks (and the http-01 one), each filled from its own template.

    [tls] mode = "acme" with a pair in service: the Jupyter server twice, once for the CA's names and
    addresses with the CA's pair (SNI or the Host picks it) and once for the rest with jrd's own.
    A client that connects by IP address sends no SNI and gets the certificate of the default
    server for the address it connected to; when the CA's certificate holds a public address,
    loopback is therefore listened on by address too (nginx prefers a server on the exact address
    to one on the wildcard, and still opens only the wildcard socket), with jrd's own certificate.
    """
    cfg = inp.config
    ng = cfg.nginx
    acme = inp.acme
    pair = (acme.cert, acme.key) if acme is not None and acme.cert is not None and acme.key is not None else None
    source_text = _message_text(cfg.source or "built-in defaults")
    if pair is None:
        return [_default_server(inp, ng.listen, "", source_text), *_http01_server(inp),
                _jupyter_server(inp, ng.listen, cfg.accepted_hosts, "")]
    assert acme is not None
    acme_tls = f"        ssl_certificate {nginx_str(pair[0])};\n        ssl_certificate_key {nginx_str(pair[1])};\n"
    local_hosts = tuple(h for h in cfg.accepted_hosts if h not in acme.hosts)
    if not any(is_ip(h) for h in acme.hosts):
        defaults = [_default_server(inp, ng.listen, "", source_text)]
        listen = ng.listen
    else:
        public, loopback = _split_loopback(ng.listen, acme.hosts)
        defaults = [_default_server(inp, public, acme_tls, source_text)] if public else []
        if loopback:
            defaults.append(_default_server(inp, loopback, "", source_text))
        listen = (*public, *loopback)
    return [*defaults, *_http01_server(inp),
            _jupyter_server(inp, listen, acme.hosts, acme_tls),
            _jupyter_server(inp, listen, local_hosts, "")]


def _split_loopback(listen: tuple[str, ...], acme_hosts: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """([nginx] listen without its loopback addresses, the loopback addresses to listen on by themselves).

    A wildcard brings its family's loopback address (127.0.0.1, [::1]); a loopback address that the
    CA's certificate holds (only a test sets that up) counts as public.
    """
    public: list[str] = []
    loopback: list[str] = []
    for addr in listen:
        if addr in ("0.0.0.0", "*", "[::]"):
            public.append(addr)
            lo = "[::1]" if addr == "[::]" else "127.0.0.1"
            if lo.strip("[]") not in acme_hosts:
                loopback.append(lo)
        elif ipaddress.ip_address(addr.strip("[]")).is_loopback and addr.strip("[]") not in acme_hosts:
            loopback.append(addr)
        else:
            public.append(addr)
    return tuple(dict.fromkeys(public)), tuple(dict.fromkeys(loopback))


def _listen_lines(inp: RenderInputs, addrs: tuple[str, ...], port: int, suffix: str, https: bool = True) -> str:
    ng = inp.config.nginx
    if not https:
        return "\n".join(f"        listen {addr}:{port}{suffix};" for addr in addrs)
    http2_directive = inp.nginx_build.version >= (1, 25, 1)
    http2 = " http2" if ng.http2 and not http2_directive else ""
    http2_on = "\n        http2 on;" if ng.http2 and http2_directive else ""
    return "\n".join(f"        listen {addr}:{port} ssl{http2}{suffix};" for addr in addrs) + http2_on


def _default_server(inp: RenderInputs, addrs: tuple[str, ...], tls: str, source_text: str) -> str:
    return fill(template("nginx_default_server.tmpl"), source_text=source_text, tls=tls,
                listen=_listen_lines(inp, addrs, inp.config.nginx.port, " default_server"))


def _http01_server(inp: RenderInputs) -> list[str]:
    acme, ng = inp.acme, inp.config.nginx
    if acme is None:
        return []
    return [fill(template("nginx_http01_server.tmpl"),
                 listen=_listen_lines(inp, ng.listen, acme.http_port, "", https=False),
                 challenge_dir=nginx_str(f"{acme.challenge_dir}/"),
                 https_port="" if ng.port == 443 else f":{ng.port}")]


# What a preload hint may name: a bundle of JupyterLab's static dir, with its `?v=` version.
_BUNDLE = re.compile(r"^[\w.-]+\.js(\?v=[0-9a-f]+)?$")


def _preload_links(inp: RenderInputs) -> str:
    """`<link rel=preload>` tags for the bundles every page loads first, quoted for sub_filter's string."""
    base = f"{inp.config.jupyter.base_url}static/lab/"
    return "".join(f'<link rel=\\"preload\\" as=\\"script\\" href=\\"{base}{name}\\">'
                   for name in inp.static_preload if _BUNDLE.match(name))


def _jupyter_server(inp: RenderInputs, addrs: tuple[str, ...], hosts: tuple[str, ...], tls: str) -> str:
    cfg, public = inp.config, inp.layout.nginx_public_dir
    ng = cfg.nginx
    static = inp.static_bundles
    heal = inp.nginx_build.has("http_sub")
    precompressed = []
    if brotli_modules(inp):
        precompressed.append("            brotli_static on;")
    if inp.nginx_build.has("http_gzip_static"):
        precompressed.append("            gzip_static on;")
    return fill(
        template("nginx_jupyter_server.tmpl"),
        listen=_listen_lines(inp, addrs, ng.port, ""),
        server_names=_names(hosts),
        tls=tls,
        client_max_body_size=ng.client_max_body_size,
        serve_ca_pem=inp.ca_pem is not None,
        ca_pem_file=nginx_str(public / "ca.pem"),
        serve_ca_mobileconfig=inp.ca_mobileconfig is not None,
        ca_mobileconfig_file=nginx_str(public / "ca.mobileconfig"),
        retry_after=RETRY_AFTER,
        restarting_html_file=nginx_str(public / "restarting.html"),
        restarting_json_file=nginx_str(public / "restarting.json"),
        heal=heal,
        heal_js_file=nginx_str(public / "heal.js"),
        heal_js_hash=hashlib.sha256(heal_script()).hexdigest()[:16],
        preload_links=_preload_links(inp) if static is not None else "",
        static_bundles=static is not None,
        static_url=nginx_str(f"{cfg.jupyter.base_url}static/lab/"),
        static_bundles_dir=nginx_str(f"{static}/"),
        static_precompressed="\n".join(precompressed),
        login_limit=ng.login_rate_per_minute > 0,
        login_burst=ng.login_burst,
        proxy_timeout=ng.proxy_timeout_seconds,
    )


def _names(hosts: tuple[str, ...]) -> str:
    return " ".join(_nginx_host(h) for h in hosts)


def nginx_command(inp: RenderInputs) -> list[str]:
    return [str(inp.nginx_executable), "-e", "stderr", "-c", str(inp.layout.nginx_conf)]

"""Pure rendering: what the nginx, Jupyter and supervisord configs say, and that nginx accepts them."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

from jrd.config import parse_config
from jrd.layout import Layout
from jrd.nginx import NginxBuild
from jrd.render import (
    Account, RenderInputs, fill, render_all, render_jupyter_config, render_nginx_conf, render_supervisord_conf,
)

from render_parsers import nginx_args


def inputs(toml: str = "", root: bool = True, **kw: object) -> RenderInputs:
    cfg = parse_config(toml or '[tls]\nnames = ["lab.example.com"]\n')
    base = dict(
        config=cfg, layout=Layout(Path("/s"), Path("/r"), Path("/l")), jupyter_executable=Path("/v/bin/jupyter"),
        nginx_executable=Path("/usr/sbin/nginx"), python_executable=Path("/v/bin/python"),
        jupyter_account=Account("alice", 1000, 1000, Path("/home/alice")), hashed_password="argon2:HASH",
        internal_token="T" * 64, cert_file=Path("/s/tls/server.pem"), key_file=Path("/s/tls/server-key.pem"),
        running_as_root=root, ca_pem=b"PEM",
    )
    base.update(kw)
    return RenderInputs(**base)  # type: ignore[arg-type]


def code_lines(text: str) -> str:
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))


def test_fill_requires_every_value_and_uses_each() -> None:
    assert fill("a {{x}} b", x=1) == "a 1 b"
    with pytest.raises(KeyError):
        fill("a {{x}} {{y}}", x=1)
    with pytest.raises(KeyError):
        fill("a {{x}}", x=1, z=2)


def test_fill_fragments_are_kept_or_dropped_whole_and_values_are_not_rescanned() -> None:
    tmpl = "a\n{{#on}}\nb {{v}}\n{{/on}}\nc\n"
    assert fill(tmpl, on=True, v="{{x}}") == "a\nb {{x}}\nc\n"
    assert fill(tmpl, on=False, v=1) == "a\nc\n"
    with pytest.raises(KeyError):
        fill(tmpl, v=1)


def test_each_template_shows_its_whole_file() -> None:
    from importlib import resources

    templates = resources.files("jrd.render").joinpath("templates")
    assert "[eventlistener:jrd-events]" in templates.joinpath("supervisord.conf.tmpl").read_text()
    nginx = templates.joinpath("nginx.conf.tmpl").read_text()
    assert "limit_req_zone" in nginx and "upstream jupyter" in nginx
    # Each server block is a template of its own, filled once per use (the Jupyter server once per
    # certificate in [tls] mode = "acme"): whole blocks, not pieces cut out of a rendered file.
    for name, shows in (("nginx_jupyter_server.tmpl", "location = /jrd/ca.pem"),
                        ("nginx_default_server.tmpl", "return 421"),
                        ("nginx_http01_server.tmpl", "/.well-known/acme-challenge/")):
        block = templates.joinpath(name).read_text()
        assert shows in block and block.count("    server {") == 1 and block.rstrip().endswith("}")


def test_login_attempts_are_rate_limited_at_nginx_by_default() -> None:
    conf = render_nginx_conf(inputs('[jupyter]\nbase_url = "/jup/"\n'))
    assert nginx_args(conf, "limit_req_zone") == [["$jrd_login_key", "zone=jrd_login:1m", "rate=10r/m"]]
    assert nginx_args(conf, "limit_req") == [["zone=jrd_login", "burst=20", "nodelay"]]
    assert nginx_args(conf, "limit_req_status") == [["429"]]
    # Only a POST to the login URL has a key; everything else has "" and is not counted.
    assert ["POST:/jup/login", "$binary_remote_addr"] in [a for d, a in _map_body(conf)]
    off = render_nginx_conf(inputs('[nginx]\nlogin_rate_per_minute = 0\n'))
    assert "limit_req" not in off and "jrd_login" not in off


def _map_body(conf: str) -> list[tuple[str, list[str]]]:
    from render_parsers import nginx_directives

    out, inside = [], False
    for name, args in nginx_directives(conf):
        if name == "map" and args[1] == "$jrd_login_key":
            inside = True
        elif inside and name == "}":
            return out
        elif inside:
            out.append((name, [name, *args]))
    return out


def test_nginx_status_socket_is_in_a_private_directory() -> None:
    layout = Layout(Path("/s"), Path("/r"), Path("/l"))
    assert layout.nginx_status_socket.parent == layout.supervisor_dir  # made 0700 by build.make_dirs
    assert nginx_args(render_nginx_conf(inputs()), "listen")[-1] == [f"unix:{layout.nginx_status_socket}"]


def test_nginx_conf_follows_the_field_notes() -> None:
    conf = render_nginx_conf(inputs())
    assert "ssl on;" not in code_lines(conf)
    assert "listen 0.0.0.0:8888 ssl http2;" in conf
    assert "map $http_upgrade $connection_upgrade" in conf
    for line in (
        "proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;", "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_buffering off;", "client_max_body_size 1g;", "proxy_read_timeout 86400s;", "proxy_send_timeout 86400s;",
        "ssl_protocols TLSv1.2 TLSv1.3;", "gzip on;", "daemon off;",
    ):
        assert line in conf, line
    assert "application/javascript" in conf and "image/svg+xml" in conf and "text/css" in conf
    assert "server_name lab.example.com localhost 127.0.0.1 [::1];" in conf
    assert "return 421" in conf
    assert "user www-data;" not in conf  # worker user given explicitly below


def test_nginx_worker_user_only_as_root() -> None:
    assert "user nobody;" in render_nginx_conf(inputs(root=True, nginx_worker_user="nobody"))
    assert "\nuser " not in render_nginx_conf(inputs(root=False))


def test_nginx_ipv6_listen_and_http2_switch() -> None:
    conf = render_nginx_conf(inputs('[nginx]\nlisten = ["[::]", "127.0.0.1"]\nhttp2 = false\nport = 9443\n'))
    assert "listen [::]:9443 ssl;" in conf
    assert "listen 127.0.0.1:9443 ssl;" in conf


def test_jupyter_config_is_safe_python() -> None:
    text = render_jupyter_config(inputs('[tls]\nnames = ["lab.example.com"]\n'))
    ast.parse(text)
    assert "allow_origin" not in code_lines(text)
    assert 'c.ServerApp.ip = "127.0.0.1"' in text
    assert "c.ServerApp.port_retries = 0" in text
    assert "c.ServerApp.open_browser = False" in text
    assert "c.ServerApp.trust_xheaders = True" in text
    assert "c.PasswordIdentityProvider.hashed_password = 'argon2:HASH'" in text
    assert "c.ServerApp.local_hostnames = ['lab.example.com', 'localhost']" in text
    assert "c.ServerApp.allow_remote_access = False" in text
    assert "c.ServerApp.allow_root = False" in text


def test_public_ip_needs_remote_access_which_nginx_then_guards() -> None:
    text = render_jupyter_config(inputs('[tls]\nip_addresses = ["203.0.113.7"]\n'))
    assert "c.ServerApp.allow_remote_access = True" in text
    assert "203.0.113.7" in render_nginx_conf(inputs('[tls]\nip_addresses = ["203.0.113.7"]\n'))


def test_supervisord_conf_runs_jupyter_as_its_user_and_kills_the_group() -> None:
    parser = configparser.RawConfigParser()
    parser.read_string(render_supervisord_conf(inputs()))
    jup = parser["program:jupyter"]
    assert jup["user"] == "alice"
    assert jup["stopasgroup"] == "true" and jup["killasgroup"] == "true"
    assert jup["command"].startswith("/v/bin/jupyter lab --config=/r/jupyter/jupyter_server_config.py")
    assert 'HOME="/home/alice"' in jup["environment"]
    assert jup["stdout_logfile"] == "/l/jupyter.log"
    assert parser["program:nginx"]["stopsignal"] == "QUIT"
    assert parser["unix_http_server"]["chmod"] == "0700"
    assert parser["supervisord"]["nodaemon"] == "true"


def test_supervisord_conf_without_root_has_no_user_switch() -> None:
    parser = configparser.RawConfigParser()
    parser.read_string(render_supervisord_conf(inputs(root=False)))
    assert "user" not in parser["program:jupyter"]


def test_render_all_modes_and_owners() -> None:
    files = render_all(inputs())
    assert files["jupyter_server_config.py"].mode == 0o600
    assert files["jupyter_server_config.py"].owner == (1000, 1000)
    assert files["supervisord.conf"].mode == 0o600
    assert files["ca.pem"].content == b"PEM"
    assert "ca.mobileconfig" not in files


def test_current_nginx_gets_http2_on_instead_of_listen_http2() -> None:
    from jrd.nginx import parse_version

    assert parse_version("nginx version: nginx/1.27.3\n") == (1, 27, 3)
    conf = render_nginx_conf(inputs(nginx_build=NginxBuild(version=(1, 27, 3))))
    assert "listen 0.0.0.0:8888 ssl;" in conf
    assert "http2 on;" in conf
    assert "http2 on;" not in render_nginx_conf(inputs(nginx_build=NginxBuild(version=(1, 22, 1))))


# --- [gateway] ------------------------------------------------------------------------------------

GATEWAY_SECRET = "gw-s3cret-0123456789abcdef"


def gateway_inputs(tmp_path: Path, extra: str = "", token: str = GATEWAY_SECRET) -> RenderInputs:
    f = tmp_path / "gateway-token"
    f.write_text(token + "\n")
    f.chmod(0o600)
    return inputs(f'[gateway]\nurl = "https://gw.example.com:8888"\nauth_token_file = "{f}"\n{extra}',
                  gateway_token=token)


def test_gateway_off_renders_no_gateway_and_an_empty_token_copy() -> None:
    files = render_all(inputs())
    from render_parsers import jupyter_settings

    settings = jupyter_settings(files["jupyter_server_config.py"].content.decode())
    assert not any(key.startswith("GatewayClient.") for key in settings)
    assert "ServerApp.kernel_manager_class" not in settings
    assert files["gateway-token"].content == b""
    assert files["gateway-token"].path == Path("/r/jupyter/gateway-token")


def test_gateway_renders_url_managers_and_timeouts_but_never_the_token(tmp_path: Path) -> None:
    from render_parsers import jupyter_settings, supervisord_environment, supervisord_parser

    inp = gateway_inputs(tmp_path, "request_timeout_seconds = 310\nkernel_launch_timeout_seconds = 300\n")
    files = render_all(inp)
    for name, f in files.items():
        if name != "gateway-token":
            assert GATEWAY_SECRET.encode() not in f.content, f"the gateway token is in {name}"
    # The token only in the copy that Jupyter reads: 0600, the Jupyter account's.
    copy = files["gateway-token"]
    assert (copy.content, copy.mode, copy.owner) == (GATEWAY_SECRET.encode(), 0o600, (1000, 1000))
    assert GATEWAY_SECRET not in repr(inp) and GATEWAY_SECRET not in repr(files)
    text = files["jupyter_server_config.py"].content.decode()
    copy_path = tmp_path / "copy"
    copy_path.write_bytes(copy.content)
    settings = jupyter_settings(text.replace("'/r/jupyter/gateway-token'", repr(str(copy_path))))
    assert settings["GatewayClient.url"] == "https://gw.example.com:8888"
    assert settings["GatewayClient.auth_token"] == GATEWAY_SECRET  # read from the copy at Jupyter's start
    assert settings["ServerApp.kernel_manager_class"].startswith("jupyter_server.gateway.")
    assert settings["ServerApp.kernel_spec_manager_class"].startswith("jupyter_server.gateway.")
    # request_timeout == KERNEL_LAUNCH_TIMEOUT + launch_timeout_pad: GatewayClient keeps both as set.
    assert settings["GatewayClient.request_timeout"] == 310.0
    assert settings["GatewayClient.launch_timeout_pad"] == 10.0
    env = supervisord_environment(supervisord_parser(files["supervisord.conf"].content.decode()), "program:jupyter")
    assert env["KERNEL_LAUNCH_TIMEOUT"] == "300"


def test_gateway_timeouts_as_jupyter_applies_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jupyter's own GatewayClient, fed the rendered settings, ends with exactly the configured timeouts."""
    from jupyter_server.gateway.gateway_client import GatewayClient

    from render_parsers import jupyter_settings

    text = render_jupyter_config(inputs('[gateway]\nurl = "http://127.0.0.1:8888"\nrequest_timeout_seconds = 95\n'
                                        "kernel_launch_timeout_seconds = 90\n"))
    settings = jupyter_settings(text)
    monkeypatch.setattr(GatewayClient, "KERNEL_LAUNCH_TIMEOUT", 90)  # from KERNEL_LAUNCH_TIMEOUT at import
    monkeypatch.setenv("KERNEL_LAUNCH_TIMEOUT", "90")
    client = GatewayClient(url=settings["GatewayClient.url"], request_timeout=settings["GatewayClient.request_timeout"],
                           launch_timeout_pad=settings["GatewayClient.launch_timeout_pad"])
    client.init_connection_args()
    assert (client.request_timeout, GatewayClient.KERNEL_LAUNCH_TIMEOUT) == (95.0, 90)


def test_gateway_without_token_file_reads_no_token(tmp_path: Path) -> None:
    text = render_jupyter_config(inputs('[gateway]\nurl = "http://127.0.0.1:8888"\n'))
    assert "auth_token" not in text and "gateway-token" not in text
    assert "c.GatewayClient.url = 'http://127.0.0.1:8888'" in text


def test_jupyter_refuses_to_start_without_the_token_copy(tmp_path: Path) -> None:
    """The config exits (SystemExit, which Jupyter does not swallow) rather than run without the gateway."""
    from render_parsers import jupyter_settings

    text = render_jupyter_config(gateway_inputs(tmp_path))
    text = text.replace("'/r/jupyter/gateway-token'", repr(str(tmp_path / "missing")))
    with pytest.raises(SystemExit, match="cannot read the gateway token") as exc:
        jupyter_settings(text)
    assert GATEWAY_SECRET not in str(exc.value)

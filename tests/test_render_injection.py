"""Hostile config values never inject configuration: each is refused by the validators with an error
naming the key, or written so that nginx, supervisord and Python read back exactly the value."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from jrd.config import parse_config
from jrd.errors import ConfigError, JrdError
from jrd.layout import Layout
from jrd.render import (
    Account, RenderInputs, jupyter_command, jupyter_environment, render_jupyter_config, render_nginx_conf,
    render_supervisord_conf, supervisor_command,
)

from render_parsers import (
    jupyter_settings, nginx_args, nginx_directives, supervisord_command, supervisord_environment,
    supervisord_parser, supervisord_value,
)

# Each piece of text that means something to one of the three file formats.
HOSTILE = [
    "a b", 'a"b', "a'b", "a;b", "a ;b", "a{b", "a}b", "a\nb", "a\r\nb", "a$b", "a${x}b", "a#b", "a #b", "a%b",
    "%(here)s", "%(ENV_HOME)s", "%", "a\\b", "a\tb", "a\x00b", "a\u2028b", "a\x85b", "a ", " a", "a]b[c", "}\n}\nx {",
    '";\n    include /etc/passwd;\n#', "'; import os; '", "a\\",
]


def toml_str(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(text)


def inputs_for(toml: str, root: bool = False, **kw: object) -> RenderInputs:
    cfg = parse_config(toml)
    base = dict(
        config=cfg, layout=Layout.of(cfg), jupyter_executable=Path("/v/bin/jupyter"),
        nginx_executable=Path("/usr/sbin/nginx"), python_executable=Path("/v/bin/python"),
        jupyter_account=Account("alice", 1000, 1000, Path("/home/alice")), hashed_password="argon2:HASH",
        internal_token="T" * 64, cert_file=cfg.tls.cert_file or Layout.of(cfg).leaf_cert,
        key_file=cfg.tls.key_file or Layout.of(cfg).leaf_key, running_as_root=root, ca_pem=b"PEM",
        ca_mobileconfig=b"MC",
    )
    base.update(kw)
    return RenderInputs(**base)  # type: ignore[arg-type]


def refused_or_rendered(toml: str, section: str, key: str) -> RenderInputs | None:
    """The inputs for `toml`, or None when the validators refused it with an error that names the key."""
    try:
        return inputs_for(toml)
    except ConfigError as exc:
        msg = str(exc)
        assert f"[{section}]" in msg and key in msg, f"the error does not name [{section}] {key}: {msg}"
        assert "\n" not in msg.strip() or "\n" in toml, msg
        return None


def nginx_structure(text: str) -> list[str]:
    return [name for name, _ in nginx_directives(text)]


BASELINE = inputs_for("")


# --- values no real config needs: refused at the edge ------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("section, key, make", [
    ("tls", "names", lambda h: f"[{toml_str('lab' + h + '.example.com')}]"),
    ("nginx", "server_names", lambda h: f"[{toml_str('lab' + h + '.example.com')}]"),
    ("tls", "ip_addresses", lambda h: f"[{toml_str('fe80::1%' + h)}]"),
    ("nginx", "listen", lambda h: f"[{toml_str('127.0.0.1' + h)}]"),
    ("metrics", "listen", lambda h: toml_str("127.0.0.1" + h + ":9100")),
    ("jupyter", "base_url", lambda h: toml_str("/lab" + h + "/")),
    ("jupyter", "user", lambda h: toml_str("root" + h)),
    ("control", "group", lambda h: toml_str("root" + h)),
    ("nginx", "client_max_body_size", lambda h: toml_str("1g" + h)),
])
def test_names_addresses_and_urls_with_syntax_are_refused(section: str, key: str, make, hostile: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"[{section}]\n{key} = {make(hostile)}\n")
    assert f"[{section}] {key}" in str(err.value)


@pytest.mark.parametrize("arg", ["--ip=0.0.0.0", "--ServerApp.ip=0.0.0.0", "--ServerApp.allow_origin=*",
                                 "--IdentityProvider.token=x", "--port", "--ServerApp.base-url=/x/",
                                 "--NotebookApp.allow_remote_access=True", "a\nb", "--x=\x00"])
def test_extra_args_cannot_override_what_jrd_sets_or_break_lines(arg: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"[jupyter]\nextra_args = [{toml_str(arg)}]\n")
    assert "[jupyter] extra_args" in str(err.value)


# --- values a user may have: escaped, and read back exactly ---------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("key", ["state_dir", "runtime_dir", "log_dir", "cache_dir"])
def test_paths_round_trip_or_are_refused(key: str, hostile: str) -> None:
    path = f"/srv/jrd{hostile}dir"
    inp = refused_or_rendered(f"[paths]\n{key} = {toml_str(path)}\n", "paths", key)
    if inp is None:
        return
    layout = inp.layout
    nginx = render_nginx_conf(inp)
    assert nginx_structure(nginx) == nginx_structure(render_nginx_conf(BASELINE))
    assert nginx_args(nginx, "pid") == [[str(layout.nginx_pid_file)]]
    assert nginx_args(nginx, "ssl_certificate") == [[str(layout.leaf_cert)]]
    assert nginx_args(nginx, "ssl_certificate_key") == [[str(layout.leaf_key)]]
    assert nginx_args(nginx, "client_body_temp_path") == [[str(layout.nginx_temp_dir / "client_body")]]
    public = layout.nginx_public_dir
    assert [a for a in nginx_args(nginx, "alias")] == [[str(public / name)] for name in (
        "ca.pem", "ca.mobileconfig", "restarting.html", "restarting.json")]
    bundles = inp.config.paths.cache_dir / "lab-static" / "0123abcd"
    with_bundles = render_nginx_conf(dataclasses.replace(inp, static_bundles=bundles))
    assert nginx_args(with_bundles, "alias")[-1] == [f"{bundles}/"]
    assert nginx_args(nginx, "listen")[-1] == [f"unix:{layout.nginx_status_socket}"]
    assert "$" not in path, "nginx would expand a '$' in a path as a variable"

    sv = supervisord_parser(render_supervisord_conf(inp))
    assert sv.sections() == supervisord_parser(render_supervisord_conf(BASELINE)).sections()
    assert supervisord_value(sv, "unix_http_server", "file") == str(layout.supervisor_socket)
    assert supervisord_value(sv, "supervisorctl", "serverurl") == f"unix://{layout.supervisor_socket}"
    assert supervisord_value(sv, "supervisord", "logfile") == str(layout.log_dir / "supervisord.log")
    assert supervisord_value(sv, "supervisord", "childlogdir") == str(layout.log_dir)
    assert supervisord_value(sv, "supervisord", "pidfile") == str(layout.supervisor_dir / "supervisord.pid")
    assert supervisord_value(sv, "program:jupyter", "stdout_logfile") == str(layout.log_file("jupyter"))
    assert supervisord_command(sv, "program:jupyter") == jupyter_command(inp)
    assert supervisord_environment(sv, "program:jupyter") == jupyter_environment(inp)
    assert supervisord_command(sv, "program:nginx")[-1] == str(layout.nginx_conf)

    settings = jupyter_settings(render_jupyter_config(inp))
    assert settings["ServerApp.port"] == 8889 and settings["ServerApp.ip"] == "127.0.0.1"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_notebook_root_dir_round_trips_or_is_refused(hostile: str) -> None:
    root = f"/home/alice/my{hostile}notebooks"
    inp = refused_or_rendered(f"[jupyter]\nroot_dir = {toml_str(root)}\n", "jupyter", "root_dir")
    if inp is None:
        return
    assert jupyter_settings(render_jupyter_config(inp))["ServerApp.root_dir"] == root
    sv = supervisord_parser(render_supervisord_conf(inp))
    assert supervisord_value(sv, "program:jupyter", "directory") == root


@pytest.mark.parametrize("hostile", HOSTILE)
def test_external_certificate_paths_round_trip_or_are_refused(hostile: str) -> None:
    cert, key = f"/etc/le/live/x{hostile}/fullchain.pem", f"/etc/le/live/x{hostile}/privkey.pem"
    inp = refused_or_rendered(f"[tls]\ncert_file = {toml_str(cert)}\nkey_file = {toml_str(key)}\n", "tls", "_file")
    if inp is None:
        return
    nginx = render_nginx_conf(inp)
    assert nginx_args(nginx, "ssl_certificate") == [[cert]]
    assert nginx_args(nginx, "ssl_certificate_key") == [[key]]
    assert nginx_structure(nginx) == nginx_structure(render_nginx_conf(BASELINE))


@pytest.mark.parametrize("hostile", [h for h in HOSTILE if "\x00" not in h])
def test_extra_args_round_trip_through_supervisord_or_are_refused(hostile: str) -> None:
    args = [hostile, f"--ServerApp.terminals_enabled={hostile}", f"--KernelManager.x='{hostile}'"]
    inp = refused_or_rendered(f"[jupyter]\nextra_args = {json.dumps(args)}\n", "jupyter", "extra_args")
    if inp is None:
        return
    sv = supervisord_parser(render_supervisord_conf(inp))
    assert supervisord_command(sv, "program:jupyter")[-3:] == args
    assert sv.sections() == supervisord_parser(render_supervisord_conf(BASELINE)).sections()


@pytest.mark.parametrize("hostile", HOSTILE)
def test_secrets_and_urls_are_python_literals_in_the_jupyter_config(hostile: str) -> None:
    inp = dataclasses.replace(BASELINE, hashed_password=f"argon2:{hostile}", internal_token=hostile)
    settings = jupyter_settings(render_jupyter_config(inp))
    assert settings["PasswordIdentityProvider.hashed_password"] == f"argon2:{hostile}"
    assert settings["IdentityProvider.token"] == hostile
    assert settings["ServerApp.allow_root"] is False


@pytest.mark.parametrize("hostile", HOSTILE)
def test_config_file_path_in_comments_and_messages_changes_nothing(hostile: str) -> None:
    cfg = dataclasses.replace(BASELINE.config, source=Path(f"/etc/jrd/jrd{hostile}.toml"))
    inp = dataclasses.replace(BASELINE, config=cfg)
    assert nginx_structure(render_nginx_conf(inp)) == nginx_structure(render_nginx_conf(BASELINE))
    (refusal,) = [a for a in nginx_args(render_nginx_conf(inp), "return")]
    assert refusal[0] == "421" and "$" not in refusal[1]
    sv, base = supervisord_parser(render_supervisord_conf(inp)), supervisord_parser(render_supervisord_conf(BASELINE))
    assert {s: dict(sv[s]) for s in sv.sections()} == {s: dict(base[s]) for s in base.sections()}
    assert jupyter_settings(render_jupyter_config(inp)) == jupyter_settings(render_jupyter_config(BASELINE))


@pytest.mark.parametrize("hostile", [h for h in HOSTILE if "\x00" not in h])
def test_program_paths_from_the_machine_round_trip_or_are_refused(hostile: str) -> None:
    exe = Path(f"/opt/x{hostile}/bin/jupyter")
    inp = dataclasses.replace(BASELINE, jupyter_executable=exe, nginx_executable=exe.with_name("nginx"))
    try:
        text = render_supervisord_conf(inp)
    except JrdError as exc:
        assert "supervisord.conf" in str(exc)
        return
    sv = supervisord_parser(text)
    assert supervisord_command(sv, "program:jupyter")[0] == str(exe)
    nginx = supervisord_command(sv, "program:nginx")
    assert nginx[nginx.index("--") + 1] == str(exe.with_name("nginx"))  # after jrd.prestart


@pytest.mark.parametrize("hostile", [h for h in HOSTILE if "\x00" not in h])
def test_event_listener_command_is_a_supervisord_fragment_that_round_trips(hostile: str) -> None:
    argv = ["/v/bin/python", "-m", "jrd.events", f"/run/x{hostile}/events.sock"]
    try:
        command = supervisor_command(argv)
    except JrdError:
        return
    sv = supervisord_parser(render_supervisord_conf(dataclasses.replace(BASELINE, event_listener_command=command)))
    assert supervisord_command(sv, "eventlistener:jrd-events") == argv


# --- and nginx itself agrees -------------------------------------------------------------------


def make_cert(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.pem", directory / "server-key.pem"
    res = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-nodes", "-subj", "/CN=localhost", "-days", "2", "-keyout", str(key), "-out", str(cert)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return cert, key


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.mark.skipif(not Path(NGINX).exists(), reason="LOUD SKIP: nginx is not installed (scripts/install-system-deps)")
@pytest.mark.parametrize("hostile", ["a b", "a'b", "a;b", "a{b}", "a%b", "%(here)s", "a#b"])
def test_nginx_accepts_configs_with_hostile_paths(tmp_base: Path, hostile: str) -> None:
    # A short base: the status socket's path must stay within the 108 bytes of a unix socket address.
    base = tmp_base / f"jrd{hostile}x"
    cert, key = make_cert(base / "tls")
    toml = f"[paths]\nruntime_dir = {toml_str(str(base / 'run'))}\nstate_dir = {toml_str(str(base / 'state'))}\n"
    inp = inputs_for(toml, cert_file=cert, key_file=key)
    for d in (inp.layout.nginx_temp_dir, inp.layout.nginx_public_dir, inp.layout.supervisor_dir):
        d.mkdir(parents=True, exist_ok=True)
    conf = base / "nginx.conf"
    conf.write_text(render_nginx_conf(inp))
    res = subprocess.run([NGINX, "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr

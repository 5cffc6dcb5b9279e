"""Config loading and validation: every error names the file, the key and the value."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from jrd.config import Config, dev_defaults, load_config, parse_config
from jrd.errors import ConfigError

from conftest import JRD


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "jrd.toml"
    f.write_text("")
    cfg = load_config(f)
    assert cfg.nginx.port == 8888
    assert cfg.jupyter.port == 8889
    assert cfg.jupyter.app == "lab"
    assert cfg.source == f


def test_example_config_is_valid_and_documents_every_key() -> None:
    import dataclasses
    import re

    text = (Path(__file__).parent.parent / "etc" / "jrd.toml").read_text()
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name == "source":
            continue
        assert f"[{section.name}]" in text, f"[{section.name}] is not documented in etc/jrd.toml"
        for key in dataclasses.fields(getattr(defaults, section.name)):
            assert re.search(rf"^# {key.name} = ", text, re.M), f"[{section.name}] {key.name} is not documented"
    parse_config(text)  # as shipped: everything commented out
    # Every documented example value is itself valid.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    cfg = parse_config(uncommented)
    assert cfg.tls.names == ("jupyter.example.com",)


@pytest.mark.parametrize(
    "toml, must_mention",
    [
        ("[nginx]\nport = 70000\n", ["[nginx] port", "70000", "between 1 and 65535"]),
        ("[nginx]\nport = \"8888\"\n", ["[nginx] port", "'8888'"]),
        ("[nginx]\nprot = 1\n", ["unknown key", "prot"]),
        ("[ngnix]\n", ["unknown section", "ngnix"]),
        ("[jupyter]\napp = \"notebook\"\n", ["[jupyter] app", "'notebook'", "'lab'"]),
        ("[tls]\nip_addresses = [\"not-an-ip\"]\n", ["ip_addresses", "not-an-ip"]),
        ("[tls]\nnames = [\"1.2.3.4\"]\n", ["names", "ip_addresses"]),
        ("[tls]\nleaf_lifetime_days = 3650\n", ["leaf_lifetime_days", "825"]),
        ("[nginx]\nclient_max_body_size = \"1m\"\n", ["client_max_body_size", "512m"]),
        ("[jupyter]\nuser = \"no-such-user-here\"\n", ["[jupyter] user", "no-such-user-here"]),
        ("[nginx]\nport = 8889\n", ["[jupyter] port", "8889"]),
        ("[tls]\ncert_file = \"/x.pem\"\n", ["cert_file", "key_file"]),
        ("[nginx\nport = 1", ["not valid TOML"]),
        ("[metrics]\nlisten = \"9100\"\n", ["[metrics] listen", "'9100'"]),
        ("[metrics]\nlisten = \"127.0.0.1:8889\"\n", ["[metrics] listen", "[jupyter] port"]),
        ("[paths]\nlog_dir = \"var/log\"\n", ["[paths] log_dir", "'var/log'", "absolute"]),
        ("[tls]\nnames = [\"*.example.com\"]\n", ["[tls] names", "*.example.com"]),
        ("[nginx]\nlisten = [1]\n", ["[nginx] listen", "in quotes"]),
        ("[tls]\nip_addresses = [167772161]\n", ["ip_addresses", "in quotes"]),
        ("[nginx]\nlisten = [\"[nope]\"]\n", ["[nginx] listen", "'[nope]'"]),
        ("[gateway]\nurl = \"ftp://gw.example.com\"\n", ["[gateway] url", "'ftp://gw.example.com'", "https://"]),
        ("[gateway]\nurl = \"gw.example.com:8888\"\n", ["[gateway] url", "https://"]),
        ("[gateway]\nurl = \"https://me:pw@gw.example.com\"\n", ["[gateway] url", "auth_token_file"]),
        ("[gateway]\nurl = \"https://gw.example.com/?token=x\"\n", ["[gateway] url", "'?'"]),
        ("[gateway]\nrequest_timeout_seconds = 60\n", ["request_timeout_seconds", "kernel_launch_timeout_seconds",
                                                        "together"]),
        ("[gateway]\nkernel_launch_timeout_seconds = 60\n", ["kernel_launch_timeout_seconds", "together"]),
        ("[gateway]\nrequest_timeout_seconds = 40\nkernel_launch_timeout_seconds = 40\n",
         ["[gateway] request_timeout_seconds = 40", "more than kernel_launch_timeout_seconds (40)"]),
        ("[gateway]\nkernel_launch_timeout_seconds = 0\nrequest_timeout_seconds = 5\n",
         ["kernel_launch_timeout_seconds = 0"]),
        ("[gateway]\nurl = \"http://gw:8888\"\n[jupyter]\nextra_args = [\"--ServerApp.kernel_manager_class=x\"]\n",
         ["[jupyter] extra_args", "kernel_manager_class", "[gateway] url"]),
        ("[jupyter]\nextra_args = [\"--GatewayClient.url=http://elsewhere\"]\n", ["[jupyter] extra_args", "[gateway]"]),
        ("[jupyter]\nextra_args = [\"--gateway-url=http://elsewhere\"]\n", ["[jupyter] extra_args", "[gateway]"]),
    ],
)
def test_bad_values_name_file_key_and_value(tmp_path: Path, toml: str, must_mention: list[str]) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert str(f) in msg
    for part in must_mention:
        assert part in msg


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_derived_hosts_include_loopback() -> None:
    cfg = parse_config('[tls]\nnames = ["Lab.Example.COM"]\nip_addresses = ["203.0.113.7"]\n')
    assert cfg.dns_names == ("lab.example.com", "localhost")
    assert cfg.ip_addresses == ("203.0.113.7", "127.0.0.1", "::1")
    assert cfg.url == "https://lab.example.com:8888/lab"


def test_dev_defaults_keep_everything_in_the_checkout(tmp_path: Path) -> None:
    open_dir = Path(tempfile.mkdtemp(prefix="jrd-checkout-", dir="/tmp"))
    try:
        open_dir.chmod(0o755)
        cfg = dev_defaults(open_dir, hostname="box", as_root=True)
        assert cfg.paths.state_dir == open_dir / ".jrd" / "state"
        assert cfg.jupyter.root_dir == open_dir / "notebooks"
        assert cfg.jupyter.user == "jupyter"
    finally:
        open_dir.rmdir()
    # As another account, Jupyter runs as that account: a checkout of mode 0700 is no obstacle.
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    cfg = dev_defaults(closed, hostname="box", as_root=False)
    assert cfg.jupyter.user == "" and cfg.paths.runtime_dir == closed / ".jrd" / "run"


def test_dev_defaults_leave_a_checkout_other_accounts_cannot_enter(tmp_path: Path, request) -> None:
    """As root, a checkout in a 0700 directory keeps nothing that Jupyter or nginx's workers must reach."""
    from jrd.checkout import DEV_HOMES, dev_places

    base = Path(tempfile.mkdtemp(prefix="jrd-checkout-", dir="/tmp"))
    base.chmod(0o755)  # pytest's own tmp_path is under a 0700 directory
    parent = base / "home"
    parent.mkdir(mode=0o700)
    (parent / "my jrd").mkdir(mode=0o755)
    request.addfinalizer(lambda: shutil.rmtree(base))
    places = dev_places(parent / "my jrd", as_root=True, jupyter_home=Path("/home/someone"))
    cfg = dev_defaults(parent / "my jrd", hostname="box", as_root=True, places=places)
    assert places.closed_by == parent and places.home.parent == DEV_HOMES
    assert places.home.name.startswith("my-jrd-") and places.venv == places.home / "venv"
    assert cfg.paths.state_dir == places.home / "state" and cfg.paths.runtime_dir == places.home / "run"
    assert cfg.paths.cache_dir == places.home / "cache" and cfg.paths.log_dir == places.home / "log"
    assert cfg.jupyter.root_dir == Path("/home/someone/notebooks")
    assert f"{parent} is mode 0700" in places.explain() and str(places.home) in places.explain()
    # One home per checkout; the same one every time.
    assert dev_places(parent / "my jrd", as_root=True).home == places.home
    assert dev_places(tmp_path / "other", as_root=True).home != places.home


@pytest.mark.parametrize("command", ["check", "run"])
def test_cli_refuses_broken_config_without_traceback(tmp_path: Path, command: str) -> None:
    f = tmp_path / "jrd.toml"
    f.write_text("[nginx]\nport = 0\n")
    res = subprocess.run([JRD, command, "--config", str(f)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "[nginx] port = 0" in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_usage_error_exits_non_zero() -> None:
    res = subprocess.run([JRD, "frobnicate"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "invalid choice" in res.stderr


# --- [gateway] ------------------------------------------------------------------------------------


def gateway_toml(token_file: Path, extra: str = "") -> str:
    return f'[gateway]\nurl = "https://gw.example.com:8888/"\nauth_token_file = "{token_file}"\n{extra}'


def token_file(tmp_path: Path, content: str = "s3cret-token\n", mode: int = 0o600) -> Path:
    f = tmp_path / "gateway-token"
    f.write_text(content)
    f.chmod(mode)
    return f


def test_gateway_is_off_by_default_and_loads_when_set(tmp_path: Path) -> None:
    assert not Config().gateway.enabled
    f = token_file(tmp_path)
    cfg = parse_config(gateway_toml(f, "request_timeout_seconds = 310\nkernel_launch_timeout_seconds = 300\n"))
    gw = cfg.gateway
    assert gw.enabled and gw.url == "https://gw.example.com:8888"  # the trailing '/' dropped
    assert gw.auth_token_file == f
    assert (gw.request_timeout_seconds, gw.kernel_launch_timeout_seconds) == (310, 300)
    assert "s3cret" not in repr(cfg), "the config holds the token file's path, never the token"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_gateway_token_file_open_to_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    f = token_file(tmp_path, mode=mode)
    with pytest.raises(ConfigError) as err:
        load_config_text(tmp_path, gateway_toml(f))
    msg = str(err.value)
    assert f"[gateway] auth_token_file = '{f}'" in msg and f"mode {mode:04o}" in msg
    assert f"`chmod 600 {f}`" in msg
    assert "s3cret" not in msg
    assert "\n" not in msg


@pytest.mark.parametrize("content, must_mention", [
    ("", "is empty"),
    ("  \n", "is empty"),
    ("two words\n", "one line"),
    ("line1\nline2\n", "one line"),
    ("tok\x00en", "one line"),
])
def test_gateway_token_file_content_must_be_one_token(tmp_path: Path, content: str, must_mention: str) -> None:
    f = token_file(tmp_path, content)
    with pytest.raises(ConfigError, match=must_mention) as err:
        load_config_text(tmp_path, gateway_toml(f))
    assert "line1" not in str(err.value) and "words" not in str(err.value)


def test_gateway_token_file_missing_or_not_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"does not exist.*chmod 600") as err:
        load_config_text(tmp_path, gateway_toml(missing))
    assert str(err.value).startswith(str(tmp_path / "jrd.toml"))
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config_text(tmp_path, gateway_toml(tmp_path))


def test_gateway_token_file_is_read_only_while_the_gateway_is_on(tmp_path: Path) -> None:
    """`url = ""` switches the gateway off and keeps the rest of the section as it was."""
    cfg = parse_config(f'[gateway]\nurl = ""\nauth_token_file = "{tmp_path / "nope"}"\n')
    assert not cfg.gateway.enabled


def test_gateway_token_file_unreadable_by_jrd(tmp_path: Path) -> None:
    """jrd reads the file as its own account: root's 0600 file is out of another account's reach."""
    import os

    from conftest import ensure_test_user, python_as, venv_usable_by

    if os.geteuid() != 0 or not venv_usable_by(ensure_test_user()):
        pytest.skip("needs root, to read as another account")
    f = token_file(tmp_path)
    text = gateway_toml(f)
    code = "import sys; from jrd.config import parse_config; parse_config(sys.argv[1], source=None)"
    res = subprocess.run([*python_as(ensure_test_user()), "-c", code, text],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "cannot be read by jrd, which runs as jrdtest (Permission denied)" in res.stderr
    assert f"`chown jrdtest {f} && chmod 600 {f}`" in res.stderr


def load_config_text(tmp_path: Path, text: str) -> Config:
    f = tmp_path / "jrd.toml"
    f.write_text(text)
    return load_config(f)

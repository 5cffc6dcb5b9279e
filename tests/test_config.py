"""Config loading and validation: every error names the file, the key and the value."""

from __future__ import annotations

import subprocess
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
    cfg = dev_defaults(tmp_path, hostname="box", as_root=True)
    assert cfg.paths.state_dir == tmp_path / ".jrd" / "state"
    assert cfg.jupyter.user == "jupyter"
    assert dev_defaults(tmp_path, hostname="box", as_root=False).jupyter.user == ""


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

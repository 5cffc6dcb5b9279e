"""Load and validate jrd's TOML config into frozen dataclasses.

Every key has a default, so an empty file (or no file, with `--dev`) is a
working config.  Every error names the file, the key and the bad value, and
past `load_config` the rest of jrd trusts what it gets.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import pwd
import re
import socket
import stat
import tomllib
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jrd import checkout
from jrd.checkout import DEV_JUPYTER_USER
from jrd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/jrd/jrd.toml")

# --- validators -------------------------------------------------------------
# Each takes the raw TOML value and returns the checked value, or raises
# ValueError with a phrase that completes "must be ...".


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"an integer between {lo} and {hi}")
        if not lo <= value <= hi:
            raise ValueError(f"between {lo} and {hi}")
        return value

    return check


def _number_range(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"a number between {lo} and {hi}")
        if not lo <= value <= hi:
            raise ValueError(f"between {lo} and {hi}")
        return float(value)

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _has_control(text: str) -> bool:
    """Control characters (newlines, tabs, NUL, C1) and Unicode line or paragraph separators."""
    return any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    if _has_control(value):
        raise ValueError("a string without control characters (newlines, tabs, NUL)")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(repr(c) for c in choices))
        return value

    return check


def _string_list(item: Callable[[Any], str] = _string) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError("a list of strings")
        return tuple(item(v) for v in value)

    return check


# A path reaches nginx.conf (quoted there) and supervisord.conf (which has no
# quoting for a plain value: `;` or `#` after a blank starts a comment, and a
# trailing blank is stripped), so these are refused rather than escaped.
_PATH_REFUSED = re.compile(r'["\\$]|\s[;#]|\s$')


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty path string")
    if _has_control(value):
        raise ValueError("a path without control characters (newlines, tabs, NUL)")
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~nosuchuser/..."
        raise ValueError("an absolute path (starting with '/'); '~USER' names no known account") from None
    if not path.is_absolute():
        raise ValueError("an absolute path (starting with '/'), since a service has no working directory of its own")
    if _PATH_REFUSED.search(str(path)):
        raise ValueError(
            "a path without '\"', '\\' or '$', without ';' or '#' right after a blank, and not ending in a blank "
            "(nginx and supervisord configs cannot carry them)"
        )
    return path


def _optional_path(value: Any) -> Path | None:
    if value == "":
        return None
    return _path(value)


# No wildcards: Jupyter's own Host check compares names exactly, so a
# "*.example.com" certificate would pass nginx and then be refused by Jupyter.
# \Z, not $: `$` also matches before a trailing newline.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)


def _dns_name(value: Any) -> str:
    if not isinstance(value, str) or not _HOSTNAME.match(value):
        raise ValueError("a DNS host name such as 'jupyter.example.com'")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return value.lower()
    raise ValueError("a DNS name; put IP addresses in [tls] ip_addresses")


def _plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address without an IPv6 zone ('fe80::1%eth0'): a zone may hold any character, and no config needs one."""
    addr = ipaddress.ip_address(text)
    if getattr(addr, "scope_id", None) is not None:
        raise ValueError("zone")
    return addr


def _ip_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("an IP address in quotes, such as '203.0.113.7'")
    try:
        return str(_plain_ip(value))
    except ValueError:
        raise ValueError("an IP address such as '203.0.113.7' (without a %zone)") from None


def _listen_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("an IP address in quotes ('0.0.0.0', '127.0.0.1', '[::]')")
    if value in ("*", "0.0.0.0", "[::]"):
        return value
    if value.startswith("[") and value.endswith("]"):
        try:
            if _plain_ip(value[1:-1]).version == 6:
                return value
        except ValueError:
            pass
    try:
        addr = _plain_ip(value)
    except ValueError:
        raise ValueError("an IP address ('0.0.0.0', '127.0.0.1', '[::]')") from None
    return f"[{addr}]" if addr.version == 6 else str(addr)


def _listen_list(value: Any) -> tuple[str, ...]:
    addrs = _string_list(_listen_address)(value)
    seen = [{"*": "0.0.0.0"}.get(a, a) for a in addrs]
    for addr in seen:
        if seen.count(addr) > 1:
            raise ValueError(f"a list of different addresses ({addr!r} is listed twice, which nginx refuses)")
    return addrs


_SIZE = re.compile(r"^[0-9]{1,20}[kKmMgG]?\Z")
# nginx keeps sizes in an off_t.
_MAX_SIZE = 2**63 - 1


def _nginx_size(value: Any) -> str:
    if not isinstance(value, str) or not _SIZE.match(value):
        raise ValueError("an nginx size such as '512m' or '2g'")
    if _size_bytes(value) > _MAX_SIZE:
        raise ValueError("an nginx size of at most 8 EiB, such as '512m' or '2g'")
    return value


def _size_bytes(value: str) -> int:
    mult = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(value[-1].lower(), 1)
    digits = value[:-1] if value[-1].isalpha() else value
    return int(digits) * mult


def _min_body_size(value: Any) -> str:
    size = _nginx_size(value)
    if _size_bytes(size) < 512 * 1024**2:
        raise ValueError("at least '512m' (Jupyter itself accepts 512 MiB; smaller breaks saving large notebooks)")
    return size


def split_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:9839', '[::1]:9839', '*:9839' or '0.0.0.0:9839' -> (host, port).

    The host comes back as a bare address to bind to ('::1', not '[::1]'; '0.0.0.0' for '*').
    Raises ValueError with a phrase that completes "must be ...".
    """
    usage = "'HOST:PORT' such as '127.0.0.1:9839' or '[::1]:9839'"
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(usage)
    host, _, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ValueError(f"{usage}, with a port between 1 and 65535")
    try:
        host = _listen_address(host)
    except ValueError:
        raise ValueError(f"{usage}, with an IP address as HOST") from None
    return {"*": "0.0.0.0"}.get(host, host).strip("[]"), int(port)


def _host_port(value: Any) -> str:
    if value == "":
        return value
    try:
        split_host_port(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, or '' to turn metrics off") from None
    return value


# What useradd and groupadd accept by default, plus upper case; never a blank,
# `%`, `;` or a quote, which supervisord.conf would read as something else.
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?\Z")


def _user_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a user name")
    if value and not _ACCOUNT_NAME.match(value):
        raise ValueError("a user name of letters, digits, '_', '.' and '-'")
    if value:
        try:
            pwd.getpwnam(value)
        except KeyError:
            raise ValueError("an existing user (create it with `useradd --create-home NAME`)") from None
    return value


def is_account_name(name: str) -> bool:
    """A name that useradd accepts and supervisord.conf carries as it is (whether or not the account exists)."""
    return bool(_ACCOUNT_NAME.match(name))


def _group_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a group name")
    if value and not _ACCOUNT_NAME.match(value):
        raise ValueError("a group name of letters, digits, '_', '.' and '-'")
    if value:
        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError("an existing group (create it with `groupadd NAME`)") from None
    return value


# Settings that jrd itself gives Jupyter: an extra argument must not override
# them (`--ip=0.0.0.0` would put Jupyter on the network, past nginx).
_OWN_JUPYTER_OPTIONS = frozenset({
    "ip", "port", "port_retries", "base_url", "root_dir", "notebook_dir", "config", "allow_root",
    "allow_origin", "allow_origin_pat", "allow_credentials", "allow_remote_access", "local_hostnames",
    "trust_xheaders", "token", "password", "hashed_password", "password_required", "allow_password_change",
    "disable_check_xsrf", "allow_unauthenticated_access", "identity_provider_class", "authorizer_class",
    "sock", "sock_mode", "certfile", "keyfile", "custom_display_url",
})


# What [gateway] sets: on the command line they would win over it.
_OWN_GATEWAY_OPTIONS = frozenset({
    "gateway_url", "gatewayclient.url", "gatewayclient.auth_token", "gatewayclient.request_timeout",
    "gatewayclient.launch_timeout_pad",
})
# With a gateway, these must stay the gateway's own, or kernels would run on this machine.
_GATEWAY_MANAGER_OPTIONS = frozenset({
    "kernel_manager_class", "kernel_spec_manager_class", "session_manager_class", "kernel_websocket_connection_class",
})


def _option_name(arg: str) -> str:
    """'--ServerApp.port=1' -> 'serverapp.port'; '--gateway-url' -> 'gateway_url'; '' for a non-option."""
    return arg.lstrip("-").split("=", 1)[0].replace("-", "_").lower() if arg.startswith("-") else ""


def _jupyter_arg(value: Any) -> str:
    arg = _string(value)
    name = _option_name(arg)
    if name.rpartition(".")[2] in _OWN_JUPYTER_OPTIONS:
        raise ValueError(
            f"free of options that jrd sets itself ({arg!r}: set it through jrd's own keys, or not at all)"
        )
    if name in _OWN_GATEWAY_OPTIONS:
        raise ValueError(f"free of the gateway options that jrd sets itself ({arg!r}: set it in [gateway])")
    return arg


# A URL path of plain segments: it reaches nginx.conf, where it matches the login URL.
_BASE_URL = re.compile(r"^/([A-Za-z0-9._~-]+/)*\Z")


def _base_url(value: Any) -> str:
    if not isinstance(value, str) or not _BASE_URL.match(value):
        raise ValueError("a URL path that starts and ends with '/', of letters, digits, '.', '_', '~' and '-'")
    return value


def _gateway_url(value: Any) -> str:
    """'' (off) or an http(s) URL of a gateway, without credentials, query or fragment; no trailing '/'."""
    usage = "an http:// or https:// URL such as 'https://gateway.example.com:8888', or '' to run kernels here"
    if not isinstance(value, str) or _has_control(value) or " " in value:
        raise ValueError(usage)
    if value == "":
        return value
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(usage) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(usage)
    if parts.username is not None or parts.password is not None:
        raise ValueError("a URL without a user or password in it; put the token in auth_token_file")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"{usage}, without '?' or '#'")
    return value.rstrip("/")


def _program(value: Any) -> str:
    text = _string(value)
    if not text or text != text.strip():
        raise ValueError("a program name or path, without leading or trailing blanks")
    return text


# --- schema -----------------------------------------------------------------


def _key(check: Callable[[Any], Any], default: Any) -> Any:
    """A config key: its validator rides in the field metadata."""
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class JupyterConfig:
    app: str = _key(_choice("lab", "server"), "lab")
    root_dir: Path | None = _key(_optional_path, None)
    user: str = _key(_user_name, "")
    allow_root: bool = _key(_bool, False)
    port: int = _key(_int_range(1, 65535), 8889)
    extra_args: tuple[str, ...] = _key(_string_list(_jupyter_arg), ())
    base_url: str = _key(_base_url, "/")
    restart_policy: str = _key(_choice("idle", "immediate"), "idle")
    restart_max_wait_seconds: float = _key(_number_range(0, 7 * 86400), 3600.0)
    server_side_execution: bool = _key(_bool, False)


@dataclass(frozen=True)
class NginxConfig:
    binary: str = _key(_program, "nginx")
    listen: tuple[str, ...] = _key(_listen_list, ("0.0.0.0",))
    port: int = _key(_int_range(1, 65535), 8888)
    server_names: tuple[str, ...] = _key(_string_list(_dns_name), ())
    client_max_body_size: str = _key(_min_body_size, "1g")
    proxy_timeout_seconds: int = _key(_int_range(60, 7 * 86400), 86400)
    worker_shutdown_timeout_seconds: int = _key(_int_range(1, 7 * 86400), 86400)
    gzip: bool = _key(_bool, True)
    brotli: bool = _key(_bool, True)
    static_bundles: bool = _key(_bool, True)
    http2: bool = _key(_bool, True)
    login_rate_per_minute: int = _key(_int_range(0, 6000), 10)
    login_burst: int = _key(_int_range(0, 10000), 20)


@dataclass(frozen=True)
class TlsConfig:
    names: tuple[str, ...] = _key(_string_list(_dns_name), ())
    ip_addresses: tuple[str, ...] = _key(_string_list(_ip_address), ())
    key_type: str = _key(_choice("ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096"), "ecdsa-p256")
    leaf_lifetime_days: int = _key(_int_range(1, 825), 90)
    ca_lifetime_days: int = _key(_int_range(365, 20 * 365), 3650)
    renew_when_remaining: float = _key(_number_range(0.01, 0.99), 1 / 3)
    renew_before_days: float = _key(_number_range(0, 825), 30.0)
    cert_file: Path | None = _key(_optional_path, None)
    key_file: Path | None = _key(_optional_path, None)
    serve_ca: bool = _key(_bool, True)
    # Where the certificate for the public names and addresses comes from: "auto" is "files"
    # when cert_file is set, else "own" (jrd's CA); "acme" orders one from [acme] directory_url.
    mode: str = _key(_choice("auto", "own", "files", "acme"), "auto")


def _https_url(value: Any) -> str:
    usage = "an https:// URL such as 'https://acme-v02.api.letsencrypt.org/directory'"
    if not isinstance(value, str) or _has_control(value) or " " in value:
        raise ValueError(usage)
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(usage) from None
    if parts.scheme != "https" or not parts.hostname or parts.username is not None:
        raise ValueError(usage)
    return value


_EMAIL = re.compile(r"^[^@\s:/]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\Z")


def _email(value: Any) -> str:
    if value == "":
        return value
    if not isinstance(value, str) or not _EMAIL.match(value):
        raise ValueError("an e-mail address such as 'me@example.com', or '' for none")
    return value


_PROFILE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")


def _acme_profile(value: Any) -> str:
    if not isinstance(value, str) or not (value in ("auto", "") or _PROFILE.match(value)):
        raise ValueError("'auto', '' (none) or a profile name the CA offers, such as 'shortlived' or 'classic'")
    return value


def _eab_kid(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 256 or not re.match(r"^[\x21-\x7e]*\Z", value):
        raise ValueError("the key identifier your CA gave you (visible ASCII, no blanks), or '' for none")
    return value


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class AcmeConfig:
    """A publicly trusted certificate from an ACME CA ([tls] mode = "acme")."""

    directory_url: str = _key(_https_url, LETS_ENCRYPT)
    email: str = _key(_email, "")
    # External account binding, for CAs that require one: both or neither.
    eab_kid: str = _key(_eab_kid, "")
    eab_hmac_key_file: Path | None = _key(_optional_path, None)
    profile: str = _key(_acme_profile, "auto")
    # The port nginx answers http-01 challenges on; the CA always connects to 80.
    http_port: int = _key(_int_range(1, 65535), 80)
    # CA certificates that the ACME server's own HTTPS is checked against, beside the system's
    # (a private ACME server such as Pebble); "" for the system store only.
    directory_ca_file: Path | None = _key(_optional_path, None)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = _key(_host_port, "127.0.0.1:9839")


@dataclass(frozen=True)
class HealthConfig:
    interval_seconds: float = _key(_number_range(1, 3600), 15.0)
    timeout_seconds: float = _key(_number_range(0.5, 300), 10.0)
    failure_threshold: int = _key(_int_range(1, 100), 4)
    crash_loop_restarts: int = _key(_int_range(2, 100), 3)
    crash_loop_window_seconds: float = _key(_number_range(1, 3600), 60.0)
    backoff_max_seconds: float = _key(_number_range(1, 3600), 300.0)


@dataclass(frozen=True)
class PathsConfig:
    state_dir: Path = _key(_path, Path("/var/lib/jrd"))
    runtime_dir: Path = _key(_path, Path("/run/jrd"))
    log_dir: Path = _key(_path, Path("/var/log/jrd"))
    cache_dir: Path = _key(_path, Path("/var/cache/jrd"))


@dataclass(frozen=True)
class LogConfig:
    level: str = _key(_choice("debug", "info", "warning", "error"), "info")
    max_bytes: int = _key(_int_range(1024, 10 * 1024**3), 10 * 1024**2)
    backups: int = _key(_int_range(0, 100), 5)


@dataclass(frozen=True)
class ControlConfig:
    group: str = _key(_group_name, "")


def _command(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError("a non-empty list of non-empty strings, such as [\"systemctl\", \"poweroff\"]")
    return _string_list()(value)


@dataclass(frozen=True)
class IdleConfig:
    shutdown_after_minutes: float = _key(_number_range(0, 366 * 24 * 60), 0.0)
    warn_minutes: float = _key(_number_range(0, 366 * 24 * 60), 10.0)
    command: tuple[str, ...] = _key(_command, ("systemctl", "poweroff"))
    cpu_busy_percent: float = _key(_number_range(0.1, 100_000), 10.0)
    gpu_busy_percent: float = _key(_number_range(0.1, 100), 5.0)

    @property
    def enabled(self) -> bool:
        return self.shutdown_after_minutes > 0


@dataclass(frozen=True)
class GatewayConfig:
    """Kernels on a Jupyter (Enterprise) Gateway instead of this machine; off while `url` is empty."""

    url: str = _key(_gateway_url, "")
    auth_token_file: Path | None = _key(_optional_path, None)
    # Unset: Jupyter's own defaults (42 and 40 s).  Set: both, the request the longer.
    request_timeout_seconds: int | None = _key(_int_range(2, 7 * 86400), None)
    kernel_launch_timeout_seconds: int | None = _key(_int_range(1, 7 * 86400), None)

    @property
    def enabled(self) -> bool:
        return bool(self.url)


# A token goes into an HTTP header: visible ASCII only, so that it can neither
# end the header nor smuggle another one in.
_TOKEN = re.compile(r"^[\x21-\x7e]+\Z")
_MAX_TOKEN_FILE = 64 * 1024


def read_token_file(path: Path, what: str = "the gateway's token") -> str:
    """The token in `path`, a file that only its owner may read.

    Raises ValueError with a phrase that follows the file's name and says how to fix it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ValueError(f"does not exist; write {what} into it and `chmod 600 {path}`") from None
    except OSError as exc:
        account = _account_name(os.geteuid())
        raise ValueError(f"cannot be read by jrd, which runs as {account} ({exc.strerror}); fix it with "
                         f"`chown {account} {path} && chmod 600 {path}`") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"is not a regular file; put {what} in a file of its own")
        if st.st_mode & 0o077:
            raise ValueError(f"is open to other accounts (mode {stat.S_IMODE(st.st_mode):04o}), and it holds a "
                             f"secret; fix it with `chmod 600 {path}`")
        data = os.read(fd, _MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_TOKEN_FILE:
        raise ValueError(f"is larger than 64 KiB; it must hold only {what}, on one line")
    token = data.decode("ascii", errors="replace").strip()
    if not token:
        raise ValueError(f"is empty; write {what} into it")
    if not _TOKEN.match(token):
        raise ValueError(f"must hold only {what}, on one line, of visible ASCII characters "
                         "(no blanks inside it)")
    return token


def _account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True)
class Config:
    """The whole, validated config.  `source` is the file it came from."""

    jupyter: JupyterConfig = field(default_factory=JupyterConfig)
    nginx: NginxConfig = field(default_factory=NginxConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    source: Path | None = None

    # --- derived values, so that every consumer agrees on them ----------
    @property
    def dns_names(self) -> tuple[str, ...]:
        """DNS names for the certificate and the Host check, localhost included."""
        return _unique((*self.tls.names, "localhost"))

    @property
    def ip_addresses(self) -> tuple[str, ...]:
        """IP addresses for the certificate and the Host check, loopback included."""
        return _unique((*self.tls.ip_addresses, "127.0.0.1", "::1"))

    @property
    def accepted_hosts(self) -> tuple[str, ...]:
        """Every Host that nginx passes on to Jupyter."""
        return _unique((*self.dns_names, *self.nginx.server_names, *self.ip_addresses))

    @property
    def external_tls(self) -> bool:
        return self.tls.cert_file is not None

    @property
    def acme_tls(self) -> bool:
        """The public names and addresses get a certificate from an ACME CA; the rest jrd's own."""
        return self.tls.mode == "acme"

    @property
    def acme_identifiers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(DNS names, IP addresses) a public CA can certify: no localhost, loopback or private addresses."""
        names = tuple(n for n in self.tls.names if n != "localhost" and "." in n)
        ips = tuple(i for i in self.tls.ip_addresses if ipaddress.ip_address(i).is_global)
        return names, ips

    @property
    def url(self) -> str:
        """The URL a person opens: the first configured name, else loopback."""
        host = (self.tls.names or self.tls.ip_addresses or ("127.0.0.1",))[0]
        if ":" in host:
            host = f"[{host}]"
        base = self.jupyter.base_url.rstrip("/")
        app = "/lab" if self.jupyter.app == "lab" else "/tree"
        return f"https://{host}:{self.nginx.port}{base}{app}"

    @property
    def local_probe_host(self) -> str:
        """Where jrd itself reaches nginx: loopback if nginx listens there."""
        for addr in self.nginx.listen:
            if addr in ("0.0.0.0", "*", "127.0.0.1"):
                return "127.0.0.1"
            if addr in ("[::]", "[::1]"):
                return "::1"
        return self.nginx.listen[0].strip("[]")


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


_SECTIONS: dict[str, type] = {
    "jupyter": JupyterConfig,
    "nginx": NginxConfig,
    "tls": TlsConfig,
    "metrics": MetricsConfig,
    "health": HealthConfig,
    "paths": PathsConfig,
    "log": LogConfig,
    "control": ControlConfig,
    "idle": IdleConfig,
    "gateway": GatewayConfig,
    "acme": AcmeConfig,
}


def check_value(section: str, key: str, value: Any) -> Any:
    """One key's TOML value checked as the loader checks it; ValueError with a phrase that completes "must be"."""
    fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])}
    return fields[key].metadata["check"](value)


def _build_section(where: str, name: str, cls: type, raw: Any, base: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{name}] must be a table, not {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key [{name}] {key}; known keys are: {known}")
        try:
            values[key] = fields[key].metadata["check"](value)
        except ValueError as exc:
            raise ConfigError(f"{where}: [{name}] {key} = {_show(value)} is invalid: it must be {exc}") from None
    return dataclasses.replace(base, **values)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_config(text: str, source: Path | None = None, base: Config | None = None) -> Config:
    """Parse TOML text into a Config layered over `base` (the defaults)."""
    where = str(source) if source else "<config>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}; fix the syntax and try again") from None
    base = base or Config()
    sections = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            known = ", ".join(f"[{s}]" for s in _SECTIONS)
            raise ConfigError(f"{where}: unknown section [{name}]; known sections are: {known}")
        sections[name] = _build_section(where, name, _SECTIONS[name], value, getattr(base, name))
    config = dataclasses.replace(base, source=source, **sections)
    _check_whole(where, config)
    return config


def _check_whole(where: str, config: Config) -> None:
    """Checks that involve more than one key."""
    tls = config.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(
            f"{where}: [tls] cert_file and key_file must be set together (or both left empty for jrd's own CA)"
        )
    _check_tls_mode(where, config)
    if config.metrics.listen:
        metrics_port = split_host_port(config.metrics.listen)[1]
        for key, port in (("[nginx] port", config.nginx.port), ("[jupyter] port", config.jupyter.port)):
            if metrics_port == port:
                raise ConfigError(
                    f"{where}: [metrics] listen = {config.metrics.listen!r} uses the same port as {key}; "
                    "give metrics its own port"
                )
    if config.jupyter.port == config.nginx.port:
        raise ConfigError(
            f"{where}: [jupyter] port = {config.jupyter.port} is the same as [nginx] port; "
            "give Jupyter its own loopback port"
        )
    if not config.nginx.listen:
        raise ConfigError(f"{where}: [nginx] listen = [] is invalid: it must name at least one address")
    idle = config.idle
    if idle.enabled and idle.warn_minutes >= idle.shutdown_after_minutes:
        raise ConfigError(
            f"{where}: [idle] warn_minutes = {_show(idle.warn_minutes)} is invalid: it must be less than "
            f"shutdown_after_minutes ({_show(idle.shutdown_after_minutes)}), or the warning would come before "
            "any idle time"
        )
    base = config.jupyter.base_url
    if not (base.startswith("/") and base.endswith("/")):
        raise ConfigError(f"{where}: [jupyter] base_url = {base!r} is invalid: it must start and end with '/'")
    _check_gateway(where, config.gateway)
    if config.gateway.enabled:
        for arg in config.jupyter.extra_args:
            if _option_name(arg).rpartition(".")[2] in _GATEWAY_MANAGER_OPTIONS:
                raise ConfigError(
                    f"{where}: [jupyter] extra_args holds {arg!r}, which would take kernels off the gateway set in "
                    "[gateway] url; remove it, or set url = \"\" to run kernels here"
                )


def _check_tls_mode(where: str, config: Config) -> None:
    tls, acme = config.tls, config.acme
    if tls.mode == "files" and tls.cert_file is None:
        raise ConfigError(f"{where}: [tls] mode = 'files' needs cert_file and key_file")
    if tls.mode in ("own", "acme") and tls.cert_file is not None:
        raise ConfigError(
            f"{where}: [tls] mode = {tls.mode!r} takes no cert_file/key_file; remove them, or set mode = 'files'")
    if (acme.eab_kid == "") != (acme.eab_hmac_key_file is None):
        raise ConfigError(f"{where}: [acme] eab_kid and eab_hmac_key_file must be set together (or neither)")
    if tls.mode != "acme":
        return
    names, ips = config.acme_identifiers
    if not names and not ips:
        raise ConfigError(
            f"{where}: [tls] mode = 'acme' needs a public DNS name in [tls] names or a public IP address in "
            "[tls] ip_addresses; a public CA signs nothing else (loopback and private addresses keep jrd's own CA)")
    if acme.http_port == config.nginx.port:
        raise ConfigError(f"{where}: [acme] http_port = {acme.http_port} is the same as [nginx] port; the http-01 "
                          "challenges need a plain-HTTP port of their own (80 for a public CA)")
    if acme.eab_hmac_key_file is not None:
        eab_hmac_key(where, acme)


def eab_hmac_key(where: str, acme: AcmeConfig) -> str:
    """The external account binding's HMAC key (base64url), from a file only its owner may read."""
    assert acme.eab_hmac_key_file is not None
    try:
        return read_token_file(acme.eab_hmac_key_file, "the CA's HMAC key")
    except ValueError as exc:
        raise ConfigError(
            f"{where}: [acme] eab_hmac_key_file = '{acme.eab_hmac_key_file}' is unusable: the file {exc}") from None


def _check_gateway(where: str, gw: GatewayConfig) -> None:
    request, launch = gw.request_timeout_seconds, gw.kernel_launch_timeout_seconds
    if (request is None) != (launch is None):
        given = "request_timeout_seconds" if launch is None else "kernel_launch_timeout_seconds"
        raise ConfigError(
            f"{where}: [gateway] {given} is set alone: set request_timeout_seconds and "
            "kernel_launch_timeout_seconds together (or neither, for Jupyter's defaults of 42 and 40 seconds)"
        )
    if request is not None and launch is not None and request <= launch:
        raise ConfigError(
            f"{where}: [gateway] request_timeout_seconds = {request} is invalid: it must be more than "
            f"kernel_launch_timeout_seconds ({launch}), or Jupyter gives up on a kernel the gateway is still starting"
        )
    gateway_token(where, gw)


def gateway_token(where: str, gw: GatewayConfig) -> str:
    """The gateway's token, "" without one; read only when the gateway is on (`url = ""` keeps the rest)."""
    if not gw.enabled or gw.auth_token_file is None:
        return ""
    try:
        return read_token_file(gw.auth_token_file)
    except ValueError as exc:
        raise ConfigError(
            f"{where}: [gateway] auth_token_file = '{gw.auth_token_file}' is unusable: the file {exc}"
        ) from None


def load_config(path: Path, base: Config | None = None) -> Config:
    """Read and validate the config at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; create it (see etc/jrd.toml) or pass --config PATH") from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__}: {exc})") from None
    return parse_config(text, source=path, base=base)


def dev_defaults(project_dir: Path, hostname: str | None = None, as_root: bool | None = None,
                 places: checkout.DevPlaces | None = None) -> Config:
    """The defaults `make run` uses: everything under the checkout, no file needed.

    As root, Jupyter runs as the `jupyter` account that `make run` creates,
    never as root; and if other accounts cannot enter the checkout, jrd's
    files and the notebooks live where they can (see jrd.checkout).
    """
    hostname = hostname or socket.gethostname()
    names = (hostname.lower(),) if _HOSTNAME.match(hostname) else ()
    as_root = running_as_root() if as_root is None else as_root
    places = places or checkout.dev_places(project_dir, as_root)
    home = places.home
    return Config(
        jupyter=JupyterConfig(root_dir=places.notebooks, user=DEV_JUPYTER_USER if as_root else ""),
        tls=TlsConfig(names=names),
        paths=PathsConfig(state_dir=home / "state", runtime_dir=home / "run", log_dir=home / "log",
                          cache_dir=home / "cache"),
    )


def system_defaults(hostname: str | None = None) -> Config:
    """Defaults for a system install: the host's own name in the certificate."""
    hostname = hostname or socket.gethostname()
    names = (hostname.lower(),) if _HOSTNAME.match(hostname) else ()
    return Config(tls=TlsConfig(names=names))


def resolve_config(path: Path | None, dev: bool, cwd: Path | None = None) -> Config:
    """The config `jrd` and `jrdctl` use: `--dev` defaults (under `cwd`), else the system ones, plus the file."""
    if dev:
        base = dev_defaults(cwd or Path.cwd())
        return load_config(path, base=base) if path else base
    return load_config(path or DEFAULT_CONFIG_PATH, base=system_defaults())


def running_as_root() -> bool:
    return os.geteuid() == 0

"""What every renderer shares: its inputs, its output, and the template filler.

Nothing here touches the file system or the environment.  The caller
gathers the facts (`RenderInputs`), and `render_all` returns every derived
file with the mode and owner it must have; `jrd.fsutil.atomic_write` puts
them in place.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from jrd.config import Config
from jrd.layout import Layout
from jrd.nginx import NginxBuild


@dataclass(frozen=True)
class Account:
    """A Unix account that a program runs as."""

    name: str
    uid: int
    gid: int
    home: Path


@dataclass(frozen=True)
class AcmeServing:
    """[tls] mode = "acme": where nginx answers http-01, and the ACME pair in service (if any)."""

    challenge_dir: Path
    http_port: int
    # None while there is no usable ACME certificate: then everything is served with jrd's own.
    cert: Path | None = None
    key: Path | None = None
    # The names and addresses the ACME certificate covers (SNI picks it for these).
    hosts: tuple[str, ...] = ()


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
    # Already in supervisord's syntax (a literal % written %%): jrd.events builds it.
    event_listener_command: str | None = None
    # The nginx binary's version (1.25.1 replaced `listen ... http2` with `http2 on;`) and modules.
    nginx_build: NginxBuild = NginxBuild()
    # A complete compressed copy of JupyterLab's bundles (jrd.static_cache), for nginx to serve.
    static_bundles: Path | None = None
    # Of those, what every page loads first (jrd.preload), named in the page's head for a head start.
    static_preload: tuple[str, ...] = ()
    # The token in [gateway] auth_token_file, read at build time; "" when there is none.
    gateway_token: str = field(default="", repr=False)
    # Added by jrd.tls.acme_service in [tls] mode = "acme".
    acme: AcmeServing | None = None


@dataclass(frozen=True)
class RenderedFile:
    path: Path
    # Out of repr: some hold secrets (the internal token, the gateway's token).
    content: bytes = field(repr=False)
    mode: int = 0o644
    owner: tuple[int, int] | None = None


_MARKER = re.compile(r"\{\{([#/]?)(\w+)\}\}")


def fill(template: str, **values: object) -> str:
    """Replace each `{{name}}` in `template`; every name must be given and used.

    A boolean value names a conditional fragment instead: the lines between
    `{{#name}}` and `{{/name}}` (each marker alone on its line) are kept when
    it is true and dropped when it is false; the marker lines always go.
    Values are put in in one pass, so a value that itself holds `{{...}}` stays as it is.
    """
    out = template
    for name, value in values.items():
        if not isinstance(value, bool) and "{{" + name + "}}" not in template:
            raise KeyError(f"template has no {{{{{name}}}}}")
    for name, value in values.items():
        if isinstance(value, bool):
            opening, closing = "{{#" + name + "}}\n", "{{/" + name + "}}\n"
            if opening not in out or closing not in out:
                raise KeyError(f"template has no {opening.strip()} ... {closing.strip()} fragment")
            pattern = re.compile(re.escape(opening) + r"(.*?)" + re.escape(closing), re.S)
            out = pattern.sub((lambda m: m.group(1)) if value else "", out)

    def value_of(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if kind or name not in values or isinstance(values[name], bool):
            raise KeyError(f"template value missing: {match.group(0)}")
        return str(values[name])

    return _MARKER.sub(value_of, out)


def template(name: str) -> str:
    return resources.files("jrd.render").joinpath("templates", name).read_text(encoding="utf-8")


def is_ip(host: str) -> bool:
    """Whether a host is an IP address (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def comment_text(text: object) -> str:
    """`text` made safe for a one-line comment: no character that could end the line."""
    return "".join("?" if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in str(text))


def source_name(inp: RenderInputs) -> str:
    return comment_text(inp.config.source or "built-in defaults")

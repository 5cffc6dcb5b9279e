"""`jrd init`: set a machine up in one step, asked on a terminal or given as flags.

What it decides is kept apart from what it does:

- `suggest` (pure) turns what the machine says (its host name, its interfaces'
  addresses from `machine_addresses`, a cloud's public address from
  `public_ip_from_metadata`) into the names and addresses to offer;
- `config_text` (pure) writes a config with only the keys that differ from the
  defaults, each under its comment from etc/jrd.toml (`key_descriptions`);
- `run_init` asks, checks every answer before it changes anything, then creates
  the account, writes the config, makes the CA, certificate and password, and
  prints what to do next (the CA's fingerprint, the URL, the firewall, the
  devices).  Run again, it changes nothing without `--force`; `--force` keeps
  the CA (devices stay trusted) unless `--new-ca` is given.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import http.client
import ipaddress
import json
import os
import pwd
import re
import socket
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, TextIO

from jrd import firewall, passwords
from jrd import config as config_module
from jrd.config import DEFAULT_CONFIG_PATH, Config
from jrd.errors import ConfigError, JrdError, UsageError
from jrd.fsutil import atomic_write, ensure_dir
from jrd.layout import Layout
from jrd.tls import certs, profiles
from jrd.tls.bootstrap import ensure_tls

# --- what the machine says -------------------------------------------------------------------

METADATA_ADDRESS = ("169.254.169.254", 80)
METADATA_TIMEOUT = 1.5

# Each cloud's metadata service answers its own question on the link-local address; the first
# answer that is a public address wins.  (AWS asks for an IMDSv2 token first: see _aws_token.)
_METADATA_QUERIES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("aws", "/latest/meta-data/public-ipv4", {}),
    ("gce", "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip",
     {"Metadata-Flavor": "Google"}),
    ("azure", "/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress"
              "?api-version=2021-02-01&format=text", {"Metadata": "true"}),
    ("digitalocean", "/metadata/v1/interfaces/public/0/ipv4/address", {}),
    ("hetzner", "/hetzner/v1/metadata/public-ipv4", {}),
)

# Interfaces whose addresses no other device uses to reach this one: containers and bridges.
_PRIVATE_LINKS = re.compile(r"^(lo|docker\d*|br-|veth|virbr|cni|flannel|cali|kube|podman)")


def _http(host: str, port: int, method: str, path: str, headers: dict[str, str], timeout: float) -> str | None:
    """One request's body on a 200, None otherwise (including no answer within `timeout`)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers={**headers, "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read(4096).decode("ascii", errors="replace")
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def public_ip_from_metadata(address: tuple[str, int] = METADATA_ADDRESS, timeout: float = METADATA_TIMEOUT,
                            clock: Callable[[], float] = time.monotonic) -> str | None:
    """This VM's public IP address as its cloud's metadata service gives it; None when none answers in time.

    The whole question takes at most about `timeout` seconds: a machine
    outside any cloud (nothing answers on the link-local address) never hangs.
    """
    deadline = clock() + timeout
    host, port = address
    try:
        socket.create_connection(address, timeout=min(timeout, 0.5)).close()
    except OSError:
        return None
    token = None
    left = deadline - clock()
    if left > 0:
        token = _http(host, port, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"},
                      left)
    for provider, path, headers in _METADATA_QUERIES:
        left = deadline - clock()
        if left <= 0:
            return None
        if provider == "aws" and token:
            headers = {"X-aws-ec2-metadata-token": token.strip()}
        answer = _http(host, port, "GET", path, headers, left)
        if answer is not None and (ip := _public_ip(answer.strip())):
            return ip
    return None


def _public_ip(text: str) -> str | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(addr) if addr.is_global else None


def interface_addresses(ip_json: str) -> list[str]:
    """The addresses other devices may use to reach this machine, from `ip -j address show`.

    Global-scope addresses only (no loopback, no link-local, no IPv6
    temporary ones), and none of container or bridge interfaces.
    """
    try:
        links = json.loads(ip_json)
    except ValueError:
        return []
    out = []
    for link in links if isinstance(links, list) else []:
        if _PRIVATE_LINKS.match(str(link.get("ifname", ""))):
            continue
        for addr in link.get("addr_info", []):
            if addr.get("scope") != "global" or addr.get("temporary") or addr.get("deprecated"):
                continue
            if addr.get("family") in ("inet", "inet6") and addr.get("local"):
                out.append(str(addr["local"]))
    return out


def machine_addresses(run: firewall.Run = firewall.run_tool) -> list[str]:
    """This machine's addresses from `ip`; without it, the one its default route leaves from."""
    out = run(["ip", "-j", "address", "show"])
    if out is not None and out[0] == 0:
        return interface_addresses(out[1])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # a UDP "connect" only picks the route; nothing is sent
            addr = s.getsockname()[0]
    except OSError:
        return []
    return [] if ipaddress.ip_address(addr).is_loopback else [addr]


def suggest(hostname: str, addresses: list[str], public_ip: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses) to offer for the certificate: the host name, the public address first."""
    names: tuple[str, ...] = ()
    try:
        name = config_module.check_value("tls", "names", [hostname])
        if name and name[0] != "localhost":
            names = name
    except ValueError:
        pass
    ips = []
    for text in ([public_ip] if public_ip else []) + addresses:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not (addr.is_loopback or addr.is_link_local or addr.is_unspecified) and str(addr) not in ips:
            ips.append(str(addr))
    return names, tuple(ips)


# --- the config file, written back --------------------------------------------------------------

_KEY_LINE = re.compile(r"^# ([a-z_][a-z0-9_]*) = ")


def key_descriptions(example: str) -> dict[tuple[str, str], list[str]]:
    """Each key's comment in etc/jrd.toml: the prose right above it (or above the group of keys it is in)."""
    out: dict[tuple[str, str], list[str]] = {}
    section, prose, after_key = "", [], False
    for line in example.splitlines():
        if line.startswith("["):
            section, prose, after_key = line.strip("[]"), [], False
        elif not line.startswith("#"):
            prose, after_key = [], False
        elif match := _KEY_LINE.match(line):
            out[(section, match.group(1))] = list(prose)
            after_key = True
        elif section:
            if after_key:
                prose, after_key = [], False
            prose.append(line)
    return out


def example_config() -> str:
    """etc/jrd.toml, every key with its default and comment, as installed with jrd."""
    return (resources.files("jrd") / "example.toml").read_text(encoding="utf-8")


def toml_value(value: Any) -> str:
    """A config value as TOML: strings (and paths) quoted with escapes, lists, booleans, numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if value is None:
        return '""'
    if isinstance(value, str):
        return json.dumps(value).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def differing(config: Config, base: Config) -> list[tuple[str, str, Any]]:
    """(section, key, value) for every key whose value in `config` differs from `base`, in the file's order."""
    out = []
    for sec in dataclasses.fields(Config):
        if sec.name == "source":
            continue
        mine, theirs = getattr(config, sec.name), getattr(base, sec.name)
        for key in dataclasses.fields(mine):
            if getattr(mine, key.name) != getattr(theirs, key.name):
                out.append((sec.name, key.name, getattr(mine, key.name)))
    return out


def config_text(config: Config, base: Config, descriptions: dict[tuple[str, str], list[str]], header: str) -> str:
    """The TOML for `config` over `base`: only the keys that differ, each under its comment."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    section = ""
    for sec, key, value in differing(config, base):
        if sec != section:
            lines += ["", f"[{sec}]"]
            section = sec
        lines += descriptions.get((sec, key)) or [f"# {key}: see etc/jrd.toml"]
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def header_for(path: Path, now: dt.datetime) -> str:
    return (f"jrd configuration, written by `jrd init` on {now:%Y-%m-%d}.\n"
            "Only what differs from the defaults is here; etc/jrd.toml in jrd's source lists every key\n"
            "with its default. Check an edit with: jrd check --config " + str(path))


# --- asking -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """`jrd init`'s command line; None means "not given"."""

    config_path: Path = DEFAULT_CONFIG_PATH
    names: tuple[str, ...] | None = None
    ips: tuple[str, ...] | None = None
    user: str | None = None
    root_dir: str | None = None
    port: int | None = None
    state_dir: str | None = None
    password_stdin: bool = False
    yes: bool = False
    force: bool = False
    new_ca: bool = False
    # A publicly trusted certificate over ACME ([tls] mode = "acme"), with these [acme] keys when given.
    acme: bool = False
    email: str | None = None
    acme_directory: str | None = None


@dataclass
class Console:
    """Where `jrd init` asks and speaks; tests give it strings."""

    ask: Callable[[str], str] = input
    ask_secret: Callable[[str], str] = getpass.getpass
    stdin: TextIO = sys.stdin
    out: Callable[[str], None] = print


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeated flags or a comma-separated answer as one list; "-" alone means none."""
    items = [v.strip() for text in values for v in text.split(",") if v.strip()]
    return [] if items == ["-"] else items


def _checked(flag: str, section: str, key: str, value: Any) -> Any:
    try:
        return config_module.check_value(section, key, value)
    except ValueError as exc:
        raise UsageError(f"{flag} {_shown(value)} is invalid: it must be {exc}") from None


def _shown(value: Any) -> str:
    return ", ".join(map(repr, value)) if isinstance(value, list) else repr(value)


class Asker:
    """One answer per setting: the flag if given, else the question on a terminal, else the suggestion."""

    def __init__(self, console: Console, interactive: bool):
        self.console = console
        self.interactive = interactive

    def value(self, flag: str, given: Any, question: str, default: Any, shown: str,
              parse: Callable[[str], Any]) -> Any:
        if given is not None:
            return parse(given)
        if not self.interactive:
            return default
        while True:
            try:
                answer = self.console.ask(f"{question} [{shown}]: ").strip()
            except EOFError:
                raise UsageError(f"no answer for {flag} (end of input); give it as a flag, with --yes") from None
            if not answer:
                return default
            try:
                return parse(answer)
            except UsageError as exc:
                self.console.out(f"  {str(exc).split(' is invalid: ', 1)[-1]}; try again")

    def confirm(self, question: str) -> bool:
        if not self.interactive:
            return True
        try:
            return self.console.ask(f"{question} [Y/n]: ").strip().lower() in ("", "y", "yes")
        except EOFError:
            return False


# --- carrying it out ---------------------------------------------------------------------------


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def create_account(name: str, run: firewall.Run) -> None:
    out = run(["useradd", "--create-home", "--shell", "/bin/bash", name])
    if out is None or out[0] != 0:
        why = out[1].strip() if out else "useradd is not installed"
        raise JrdError(f"could not create the account {name!r} ({why}); create it yourself with "
                       f"`useradd --create-home {name}` and run jrd init again")


@dataclass(frozen=True)
class Plan:
    """Everything decided before anything changes."""

    config: Config           # the config as it will be loaded (the account may not exist yet)
    text: str                # the file to write
    create_user: str         # an account to create first, or ""
    hashed_password: str     # a new password's hash, or "" to keep the one set (or generate one)
    base_loaded: bool        # the existing file was the starting point (--force)


def plan(opts: Options, console: Console, now: dt.datetime, *, as_root: bool, hostname: str,
         addresses: Callable[[], list[str]], public_ip: Callable[[], str | None]) -> Plan:
    """Ask and check everything; change nothing."""
    path = opts.config_path
    if path.exists() and not opts.force:
        raise UsageError(f"{path} already exists, so jrd init changed nothing; to set this machine up again, run "
                         "`jrd init --force` (it keeps the CA, so devices stay trusted; add --new-ca for a new one)")
    interactive = not opts.yes
    if opts.password_stdin and interactive:
        raise UsageError("--password-stdin needs --yes: standard input carries the password, so nothing can be asked")
    if interactive and not console.stdin.isatty():
        raise UsageError("no terminal to ask on; give the answers as flags and add --yes (see `jrd init --help`)")
    hashed = ""
    if opts.password_stdin:
        hashed = passwords.hash_password(console.stdin.readline().rstrip("\n"))

    system = config_module.system_defaults(hostname)
    base, base_loaded = system, False
    if path.exists():
        try:
            base, base_loaded = config_module.load_config(path, base=system), True
        except ConfigError as exc:
            console.out(f"note: the existing config does not load ({exc}); starting from the defaults")
    asker = Asker(console, interactive)

    if base_loaded:
        names_default, ips_default = base.tls.names, base.tls.ip_addresses
    else:
        names_default, ips_default = suggest(hostname, addresses() if opts.ips is None else [],
                                             public_ip() if opts.ips is None else None)
    names = asker.value("--name", opts.names, "DNS names for the certificate (comma-separated; - for none)",
                        names_default, ", ".join(names_default) or "-",
                        lambda v: _checked("--name", "tls", "names", _split(v if isinstance(v, tuple) else (v,))))
    ips = asker.value("--ip", opts.ips, "IP addresses for the certificate (comma-separated; - for none)",
                      ips_default, ", ".join(ips_default) or "-",
                      lambda v: _checked("--ip", "tls", "ip_addresses", _split(v if isinstance(v, tuple) else (v,))))
    port = asker.value("--port", opts.port, "HTTPS port", base.nginx.port, str(base.nginx.port),
                       lambda v: _checked("--port", "nginx", "port", int(v) if str(v).isdigit() else v))
    user_default = base.jupyter.user if base_loaded else ("jupyter" if as_root else "")
    user = asker.value("--user", opts.user, "Account that Jupyter (and every notebook) runs as", user_default,
                       user_default or pwd.getpwuid(os.geteuid()).pw_name, lambda v: _account_name(v))
    if as_root and not user and not base.jupyter.allow_root:
        raise UsageError("as root, Jupyter needs an account of its own: pass --user NAME (jrd init creates it), "
                         "or set [jupyter] allow_root = true by hand if you really mean root")
    home = _home_of(user)
    root_default = base.jupyter.root_dir
    root_dir = asker.value("--root-dir", opts.root_dir, "Notebook directory", root_default,
                           str(root_default or home or "the account's home"),
                           lambda v: _checked("--root-dir", "jupyter", "root_dir", v))
    if root_dir is not None and home is not None and root_dir == home:
        root_dir = None  # the default: the account's home
    state_dir = _checked("--state-dir", "paths", "state_dir", opts.state_dir) if opts.state_dir is not None \
        else base.paths.state_dir

    create_user = user if user and not _account_exists(user) else ""
    if create_user:
        if not as_root:
            raise UsageError(f"the account {user!r} does not exist; create it as root "
                             f"(`useradd --create-home {user}`) or leave --user empty")
        if not asker.confirm(f"The account {user!r} does not exist. Create it"):
            raise UsageError(f"the account {user!r} does not exist; create it (`useradd --create-home {user}`) "
                             "or choose another, and run jrd init again")

    acme = base.acme
    tls_mode = base.tls.mode
    if opts.acme or opts.email is not None or opts.acme_directory is not None:
        if not opts.acme and tls_mode != "acme":
            raise UsageError("--email and --acme-directory go with --acme (a certificate from an ACME CA such as "
                             "Let's Encrypt); add --acme")
        tls_mode = "acme"
        acme = dataclasses.replace(
            acme,
            email=_checked("--email", "acme", "email", opts.email) if opts.email is not None else acme.email,
            directory_url=_checked("--acme-directory", "acme", "directory_url", opts.acme_directory)
            if opts.acme_directory is not None else acme.directory_url,
        )
    desired = dataclasses.replace(
        base,
        tls=dataclasses.replace(base.tls, names=names, ip_addresses=ips, mode=tls_mode),
        acme=acme,
        nginx=dataclasses.replace(base.nginx, port=port),
        jupyter=dataclasses.replace(base.jupyter, user=user, root_dir=root_dir),
        paths=dataclasses.replace(base.paths, state_dir=state_dir),
        source=None,
    )
    descriptions = key_descriptions(example_config())
    text = config_text(desired, system, descriptions, header_for(path, now))
    # Every key and the keys together, checked as `jrd run` will load them; an account that is
    # still to be made is checked once it exists.
    probe = desired if not create_user else dataclasses.replace(
        desired, jupyter=dataclasses.replace(desired.jupyter, user=""))
    config_module.parse_config(config_text(probe, system, descriptions, ""), source=path, base=system)

    if not hashed and interactive and passwords.read_password_hash(Layout.of(desired).password_file) is None:
        hashed = _ask_password(console)
    return Plan(desired, text, create_user, hashed, base_loaded)


def _account_name(value: str) -> str:
    if value and not config_module.is_account_name(value):
        raise UsageError(f"--user {value!r} is invalid: it must be a user name of letters, digits, '_', '.' and '-'")
    return value


def _home_of(user: str) -> Path | None:
    try:
        return Path((pwd.getpwnam(user) if user else pwd.getpwuid(os.geteuid())).pw_dir)
    except KeyError:
        return Path("/home") / user  # what `useradd --create-home` will make


def _ask_password(console: Console) -> str:
    """A password typed twice; "" to have one generated."""
    while True:
        first = console.ask_secret("Login password (empty: generate one): ")
        if not first:
            return ""
        if console.ask_secret("Again: ") != first:
            console.out("  the two passwords differ; try again")
            continue
        try:
            return passwords.hash_password(first)
        except JrdError as exc:
            console.out(f"  {exc}; try again")


@dataclass(frozen=True)
class Outcome:
    config: Config
    ca_state: str            # "created", "kept", "replaced", or "external"
    ca: Any                  # the CA certificate (None for an external pair)
    leaf: Any
    issued: str | None       # why a leaf was issued, None if the current one was kept
    password_note: str
    user_created: bool


def carry_out(p: Plan, opts: Options, now: dt.datetime, run: firewall.Run) -> Outcome:
    """Make the account, the config, the directories, the CA, the certificate and the password."""
    if p.create_user:
        create_account(p.create_user, run)
    path = opts.config_path
    config = config_module.parse_config(p.text, source=path, base=config_module.system_defaults())
    ensure_dir(path.parent, 0o755, force=False)
    atomic_write(path, p.text, 0o644)
    layout = Layout.of(config)
    ensure_dir(layout.state_dir, 0o700, force=False)
    root = config.jupyter.root_dir
    if root is not None and not root.exists():
        acct = pwd.getpwnam(config.jupyter.user) if config.jupyter.user else pwd.getpwuid(os.geteuid())
        ensure_dir(root, 0o755, (acct.pw_uid, acct.pw_gid), force=False)

    ca = leaf = None
    issued = None
    if config.external_tls:
        ca_state = "external"
        ensure_tls(config, layout, now)
    else:
        had_ca = layout.ca_cert.exists() or layout.ca_key.exists()
        if opts.new_ca:
            for f in (layout.ca_cert, layout.ca_key, layout.leaf_cert, layout.leaf_key):
                f.unlink(missing_ok=True)
        _, issued = ensure_tls(config, layout, now)
        ca_state = ("replaced" if opts.new_ca else "kept") if had_ca else "created"
        ca = certs.load_cert(layout.ca_cert)
        leaf = certs.load_cert(layout.leaf_cert)

    if p.hashed_password:
        passwords.write_password_hash(layout.password_file, p.hashed_password)
        layout.initial_password_file.unlink(missing_ok=True)
        note = f"Login password set; only its hash is stored, in {layout.password_file}."
    else:
        note = passwords.ensure_initial_password(layout.password_file, layout.initial_password_file, show=True)
    return Outcome(config, ca_state, ca, leaf, issued, note, bool(p.create_user))


# --- telling ------------------------------------------------------------------------------------


def report(o: Outcome, opts: Options, fw: firewall.Firewall | None, now: dt.datetime, written: bool) -> list[str]:
    """What `jrd init` prints at the end: what it did, then what the person does next."""
    config, path = o.config, opts.config_path
    on = "" if path == DEFAULT_CONFIG_PATH else f" --config {path}"
    changed = len(differing(config, config_module.system_defaults()))
    lines = [f"Wrote {path} ({changed} setting{'s' if changed != 1 else ''} that differ from the defaults, "
             "each with its comment)." if written else f"Kept {path} as it was."]
    acct = config.jupyter.user or pwd.getpwuid(os.geteuid()).pw_name
    lines.append(f"Jupyter runs as {acct}{' (account created)' if o.user_created else ''}; notebooks in "
                 f"{config.jupyter.root_dir or _home_of(config.jupyter.user)}.")
    layout = Layout.of(config)
    if o.ca_state == "external":
        lines.append(f"Certificate: the external {config.tls.cert_file}; devices already trust its issuer.")
    else:
        what = {"created": "created", "kept": "kept, so devices that trust it still do",
                "replaced": "NEW: every device must trust it again"}[o.ca_state]
        lines.append(f"Local CA: {layout.ca_cert} ({what})")
        lines.append(f"  SHA-256 fingerprint: {certs.fingerprint(o.ca)}")
        sans = ", ".join(certs.describe(o.leaf, now)["sans"])  # type: ignore[arg-type]
        lines.append(f"Certificate for {sans}, valid until {o.leaf.not_valid_after_utc:%Y-%m-%d}"
                     + (" (issued now)" if o.issued else " (kept)"))
    if config.acme_tls:
        names, ips = config.acme_identifiers
        public = ", ".join((*names, *ips)) or "none (only loopback or private ones are configured)"
        lines.append(f"ACME: jrd orders a certificate every device trusts from {config.acme.directory_url} for "
                     f"{public} when it starts; the CA connects to port 80 of those to validate (http-01), so "
                     f"let TCP port 80 in too. Until it is issued, and for loopback, jrd's own CA's certificate "
                     f"is served. `jrdctl cert show` tells how it goes.")
    lines.append(o.password_note)
    host = config.local_probe_host if ":" not in config.local_probe_host else f"[{config.local_probe_host}]"
    local = config.url.replace(config.url.split("/")[2], f"{host}:{config.nginx.port}")
    lines += ["", f"URL: {config.url}  (from this machine: {local})"]
    port = config.nginx.port
    if fw is None:
        lines.append("Firewall: nginx listens on loopback only, so no port needs opening.")
    elif fw.kind and fw.allows is not True:
        lines.append(f"Firewall: {fw.detail}; let TCP port {port} in"
                     + (f": `{fw.open_command}`" if fw.open_command else ""))
    elif fw.kind:
        lines.append(f"Firewall: {fw.detail}.")
    else:
        lines.append(f"Firewall: {fw.detail}. Devices connect to TCP port {port}: on a cloud VM, allow it "
                     "in the VM's security group or firewall rules too.")
    if o.ca_state != "external":
        lines += ["", "Trust the CA once on each device, and check that its fingerprint is the one above.",
                  "Get it over the network once jrd runs: "
                  + (f"{'/'.join(config.url.split('/')[:3])}/jrd/ca.pem (ca.mobileconfig for an iPad or iPhone), "
                     if config.tls.serve_ca else "")
                  + "or as files to copy: `jrd ca export -o DIR" + on + "`. Then:",
                  profiles.trust_steps_text()]
    lines += ["", f"Next: `systemctl enable --now jrd` (or `jrd run{on}` in the foreground), "
                  f"then `jrd doctor{on}` checks the machine."]
    return lines


def run_init(opts: Options, console: Console | None = None, *, now: dt.datetime | None = None,
             run: firewall.Run = firewall.run_tool,
             public_ip: Callable[[], str | None] = public_ip_from_metadata) -> int:
    """`jrd init`: ask, check, then set everything up and say what to do next."""
    console = console or Console()
    now = now or certs.utcnow()
    p = plan(opts, console, now, as_root=os.geteuid() == 0, hostname=socket.gethostname(),
             addresses=lambda: machine_addresses(run), public_ip=public_ip)
    before = opts.config_path.read_bytes() if opts.config_path.exists() else None
    outcome = carry_out(p, opts, now, run)
    listens_beyond_loopback = any(a not in ("127.0.0.1", "[::1]") for a in outcome.config.nginx.listen)
    fw = firewall.detect(outcome.config.nginx.port, run) if listens_beyond_loopback else None
    for line in report(outcome, opts, fw, now, written=before != p.text.encode()):
        console.out(line)
    return 0

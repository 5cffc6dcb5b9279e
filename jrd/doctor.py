"""`jrd doctor`: check what usually goes wrong, one finding per check, each with its fix.

Every check is a small function of a `Machine` (the config, its layout, the
clock and the tools it asks, which tests replace) returning `Finding`s.  The
verdicts that take thought (certificates, ports, owners and modes, the clock,
the distribution's nginx) are pure functions beside the checks that gather
their facts.  Nothing here changes anything.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import socket
import ssl
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from jrd import build, firewall, gateway, health, leftovers, preflight, serving
from jrd.config import Config
from jrd.errors import ConfigError, JrdError
from jrd.layout import Layout
from jrd.render import Account
from jrd.supervisor import Supervisor
from jrd.tls import certs

OK, WARNING, PROBLEM = "ok", "warning", "problem"
_LABELS = {OK: "ok", WARNING: "WARNING", PROBLEM: "PROBLEM"}

# Debian's nginx.service writes its master's PID here.
DISTRO_NGINX_PID_FILE = Path("/run/nginx.pid")
# A certificate someone else renews: warn this long before it expires (as the JrdCertificateExpiringSoon alert).
EXPIRY_WARNING = dt.timedelta(days=14)
CA_EXPIRY_WARNING = dt.timedelta(days=90)
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Finding:
    """One check's answer: `level` is ok, warning or problem; `fix` says what to do (empty when ok)."""

    name: str
    level: str
    message: str
    fix: str = ""


@dataclass
class Machine:
    """What the checks look at, and how they ask; tests replace the parts that reach outside."""

    config: Config
    layout: Layout
    now: dt.datetime
    run: firewall.Run = firewall.run_tool
    # The PID of the jrd that runs on this config's runtime dir (0: unknown), None when none does.
    jrd_pid: int | None = None

    @property
    def running(self) -> bool:
        return self.jrd_pid is not None

    @property
    def on(self) -> str:
        """The `--config` a command in a fix needs."""
        src = self.config.source
        return f" --config {src}" if src is not None and src != Path("/etc/jrd/jrd.toml") else ""


# --- the checks ---------------------------------------------------------------------------------


def check_rendered(m: Machine) -> list[Finding]:
    """nginx (and supervisord, and Jupyter) accept what the config renders."""
    try:
        build.check_rendered(m.config)
    except JrdError as exc:
        return [Finding("nginx config", PROBLEM, str(exc),
                        f"fix the config (or [nginx] binary) and test it with `jrd check{m.on}`")]
    return [Finding("nginx config", OK, "nginx, supervisord and Jupyter accept what the config renders")]


def check_gateway(m: Machine) -> list[Finding]:
    if not m.config.gateway.enabled:
        return []
    try:
        gateway.check_reachable(m.config)
    except JrdError as exc:
        return [Finding("gateway", PROBLEM, str(exc), "start the gateway or fix [gateway] url and auth_token_file")]
    return [Finding("gateway", OK, f"the gateway at {m.config.gateway.url} answers")]


def check_running(m: Machine) -> list[Finding]:
    if m.running:
        return [Finding("jrd", OK, f"jrd runs{f' (pid {m.jrd_pid})' if m.jrd_pid else ''} on "
                        f"{m.layout.runtime_dir}")]
    return [Finding("jrd", WARNING, f"jrd is not running on {m.layout.runtime_dir}, so what it serves was not "
                    "checked (supervisord, Jupyter, nginx, the served certificate)",
                    "start it: `systemctl start jrd`" + (f" (or `jrd run{m.on}`)" if m.on else ""))]


def check_supervisord(m: Machine) -> list[Finding]:
    if not m.running:
        return []
    try:
        procs = Supervisor(m.layout.supervisor_socket, timeout=PROBE_TIMEOUT).processes()
    except JrdError as exc:
        return [Finding("supervisord", PROBLEM, str(exc), "restart jrd: `systemctl restart jrd`")]
    states = ", ".join(f"{p.name} {p.state}" for p in procs.values() if p.name != "jrd-events")
    return [Finding("supervisord", OK, f"supervisord answers ({states})")]


def check_answers(m: Machine) -> list[Finding]:
    """Jupyter on its loopback port, nginx's own status, and Jupyter through nginx over HTTPS."""
    if not m.running:
        return []
    out = []
    jupyter = health.probe_jupyter(m.config, m.layout, PROBE_TIMEOUT)
    log = m.layout.log_file
    if jupyter.ok:
        out.append(Finding("jupyter", OK, f"Jupyter answers on 127.0.0.1:{m.config.jupyter.port}"))
    else:
        out.append(Finding("jupyter", PROBLEM, f"Jupyter does not answer on 127.0.0.1:{m.config.jupyter.port} "
                           f"({jupyter.error})", f"see {log('jupyter')} and `jrdctl status`; "
                           "`jrdctl restart jupyter`"))
    ngx = health.probe_nginx(m.config, m.layout, PROBE_TIMEOUT)
    through = serving.probe_through_nginx(m.config, PROBE_TIMEOUT)
    where = f"https://{m.config.local_probe_host}:{m.config.nginx.port}"
    if ngx.ok and through.ok:
        out.append(Finding("nginx", OK, f"nginx answers, and Jupyter answers through it at {where}"))
    elif through.ok:
        out.append(Finding("nginx", WARNING, f"Jupyter answers through nginx at {where}, but nginx's status "
                           f"does not ({ngx.error})", f"see {log('nginx')}; `jrdctl restart nginx`"))
    else:
        why = through.error or f"HTTP {through.status}"
        out.append(Finding("nginx", PROBLEM, f"Jupyter does not answer through nginx at {where} ({why})",
                           f"see {log('nginx')} and `jrdctl status`; `jrdctl restart nginx`"))
    return out


def check_ports(m: Machine) -> list[Finding]:
    port = m.config.nginx.port
    if not m.running:
        busy = preflight.busy_ports(m.config)
        if busy:
            return [Finding("port", PROBLEM, what, fix) for what, fix in busy]
        return [Finding("port", OK, f"port {port} (and Jupyter's and the metrics' ports) are free for jrd")]
    holder = leftovers.tcp_listener(port)
    master = leftovers.read_pid(m.layout.nginx_pid_file)
    return [port_verdict(port, holder, master, _pgid(holder[0]) if holder else None)]


def port_verdict(port: int, holder: tuple[int, str] | None, master: int | None, holder_pgid: int | None) -> Finding:
    """While jrd runs, its port must be held by its own nginx (the master or a worker of its group)."""
    if holder is None:
        return Finding("port", WARNING, f"no process can be seen listening on port {port}",
                       "see `jrdctl status` and `ss -ltnp 'sport = :" + str(port) + "'`")
    pid, name = holder
    if master is not None and master in (pid, holder_pgid):
        return Finding("port", OK, f"port {port} is held by jrd's own nginx (master pid {master})")
    return Finding("port", PROBLEM, f"port {port} is held by pid {pid} ({name}), not by jrd's nginx",
                   f"stop that program (`ss -ltnp 'sport = :{port}'` shows it), or give jrd another [nginx] port")


def check_distro_nginx(m: Machine) -> list[Finding]:
    """Debian's own nginx.service must not hold jrd's port."""
    port = m.config.nginx.port
    active, main_pid = _distro_nginx(m)
    holder = leftovers.tcp_listener(port)
    return [distro_nginx_verdict(port, active, main_pid, holder, _pgid(holder[0]) if holder else None)]


def distro_nginx_verdict(port: int, active: bool | None, main_pid: int | None, holder: tuple[int, str] | None,
                         holder_pgid: int | None) -> Finding:
    fix = f"`systemctl disable --now nginx` if nothing else uses it, or move it off port {port} in /etc/nginx"
    if main_pid is not None and holder is not None and main_pid in (holder[0], holder_pgid):
        return Finding("nginx.service", PROBLEM, f"the distribution's nginx (pid {main_pid}) holds port {port}, "
                       "so jrd's nginx cannot listen there", fix)
    if active:
        return Finding("nginx.service", OK, f"the distribution's nginx.service runs, but not on port {port}")
    return Finding("nginx.service", OK, "the distribution's nginx.service is not running")


def _distro_nginx(m: Machine) -> tuple[bool | None, int | None]:
    """(whether nginx.service is active, its main PID), from systemd, else from Debian's pid file."""
    out = m.run(["systemctl", "show", "--property=ActiveState,MainPID", "nginx.service"])
    if out is not None and out[0] == 0 and "ActiveState=" in out[1]:
        props = dict(line.split("=", 1) for line in out[1].splitlines() if "=" in line)
        pid = int(props.get("MainPID", "0") or 0)
        return props.get("ActiveState") == "active", pid or None
    pid = leftovers.read_pid(DISTRO_NGINX_PID_FILE)
    if pid is not None and leftovers.alive(pid):
        return True, pid
    return None, None


def check_certificates(m: Machine) -> list[Finding]:
    """The CA, the chain and its days left, and the names it covers."""
    config, layout = m.config, m.layout
    if config.external_tls:
        assert config.tls.cert_file and config.tls.key_file
        try:
            chain, _ = certs.load_pair(config.tls.cert_file, config.tls.key_file)
        except JrdError as exc:
            return [Finding("certificate", PROBLEM, str(exc), "renew or fix the external pair ([tls] cert_file "
                            "and key_file)")]
        wanted = (*config.tls.names, *config.nginx.server_names, *config.tls.ip_addresses)
        return [external_chain_verdict(chain, m.now), names_verdict(chain[0], wanted, external=True, on=m.on)]
    if not layout.ca_cert.exists() and not layout.ca_key.exists():
        return [Finding("certificate", PROBLEM, f"there is no local CA or certificate in {layout.tls_dir} yet",
                        f"`jrd init{m.on}` (or the first start of jrd) makes them")]
    try:
        ca = certs.load_cert(layout.ca_cert)
        ca_key = certs.load_key(layout.ca_key)
    except JrdError as exc:
        return [Finding("CA", PROBLEM, f"the local CA is unusable: {exc}",
                        f"`jrd init --force --new-ca{m.on}`, then trust the new CA on every device")]
    out = [ca_verdict(ca, certs.key_matches(ca, ca_key), m.now, m.on)]
    try:
        chain, _ = certs.load_pair(layout.leaf_cert, layout.leaf_key)
    except JrdError as exc:
        fix = "jrd issues a new one within seconds" if m.running else "jrd issues a new one when it starts"
        return out + [Finding("certificate", PROBLEM, str(exc), f"{fix}; or now: `jrdctl cert renew --force`")]
    policy = certs.policy_from_config(config)
    out.append(own_chain_verdict(chain, ca, m.now, certs.renewal_due(chain[0], m.now, policy, ca), m.running))
    out.append(names_verdict(chain[0], (*config.dns_names, *config.ip_addresses), external=False, on=m.on))
    return out


def ca_verdict(ca: x509.Certificate, key_matches: bool, now: dt.datetime, on: str = "") -> Finding:
    new_ca = f"`jrd init --force --new-ca{on}`, then trust the new CA on every device"
    if not key_matches:
        return Finding("CA", PROBLEM, "the local CA's key does not match its certificate", new_ca)
    left = ca.not_valid_after_utc - now
    if left <= dt.timedelta(0):
        return Finding("CA", PROBLEM, f"the local CA expired on {ca.not_valid_after_utc:%Y-%m-%d}", new_ca)
    if left < CA_EXPIRY_WARNING:
        return Finding("CA", WARNING, f"the local CA expires in {left.days} days "
                       f"({ca.not_valid_after_utc:%Y-%m-%d})", f"plan a new one: {new_ca}")
    return Finding("CA", OK, f"the local CA is valid until {ca.not_valid_after_utc:%Y-%m-%d} "
                   f"(SHA-256 {certs.fingerprint(ca)})")


def own_chain_verdict(chain: list[x509.Certificate], ca: x509.Certificate, now: dt.datetime,
                      due: certs.Renewal, running: bool) -> Finding:
    """The leaf verifies up to the CA on disk, now; how many days it has left."""
    leaf = chain[0]
    until = f"{leaf.not_valid_after_utc:%Y-%m-%d}"
    days = (leaf.not_valid_after_utc - now).total_seconds() / 86400
    renew = "`jrdctl cert renew --force`" if running else "start jrd (it renews the certificate first)"
    if now >= leaf.not_valid_after_utc:
        return Finding("certificate", PROBLEM, f"the certificate expired on {until}", renew)
    if now < leaf.not_valid_before_utc:
        return Finding("certificate", PROBLEM, f"the certificate is not valid before "
                       f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: the clock is behind it",
                       f"set the clock (`timedatectl set-ntp true`), then {renew}")
    if not certs.issued_by(leaf, ca):
        return Finding("certificate", PROBLEM, "the certificate was not issued by the local CA on disk", renew)
    error = _verify(leaf, chain[1:], [ca], now)
    if error:
        return Finding("certificate", PROBLEM, f"the chain does not verify: {error}", renew)
    if due.due:
        when = "at its next check" if running else "when it starts"
        return Finding("certificate", WARNING, f"the certificate is due for renewal ({due.reason}); jrd renews "
                       f"it {when}", renew)
    return Finding("certificate", OK, f"the chain verifies up to the local CA; valid until {until} "
                   f"({days:.0f} days left)")


def external_chain_verdict(chain: list[x509.Certificate], now: dt.datetime) -> Finding:
    """An external pair: each certificate issued by the next, and how long it has left."""
    leaf = chain[0]
    until = f"{leaf.not_valid_after_utc:%Y-%m-%d}"
    renew = "renew it (for Let's Encrypt: `certbot renew`); jrd reloads nginx when the files change"
    for cert, issuer in zip(chain, chain[1:]):
        if not certs.issued_by(cert, issuer):
            return Finding("certificate", PROBLEM, f"the chain is out of order or broken: "
                           f"{cert.subject.rfc4514_string()} was not issued by the next certificate in the file",
                           "put the leaf first, then its intermediates (certbot's fullchain.pem)")
    if now >= leaf.not_valid_after_utc:
        return Finding("certificate", PROBLEM, f"the external certificate expired on {until}", renew)
    if now < leaf.not_valid_before_utc:
        return Finding("certificate", PROBLEM, "the external certificate is not valid yet: the clock is behind it",
                       "set the clock (`timedatectl set-ntp true`)")
    left = leaf.not_valid_after_utc - now
    if left < EXPIRY_WARNING:
        return Finding("certificate", WARNING, f"the external certificate expires in {left.days} days ({until})",
                       renew)
    return Finding("certificate", OK, f"the external certificate is valid until {until} ({left.days} days left)")


def _verify(leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate],
            now: dt.datetime) -> str:
    """"" when `leaf` verifies up to `roots` at `now` as a server certificate, else why not.

    It is verified for one of its own names: whether it covers the configured ones is `names_verdict`'s.
    """
    names, ips = certs.san_of(leaf)
    if names:
        subject: verification.DNSName | verification.IPAddress = verification.DNSName(sorted(names)[0])
    elif ips:
        subject = verification.IPAddress(ipaddress.ip_address(sorted(ips)[0]))
    else:
        return "the certificate has no subjectAltName"
    verifier = verification.PolicyBuilder().store(verification.Store(roots)).time(now).build_server_verifier(subject)
    try:
        verifier.verify(leaf, intermediates)
    except verification.VerificationError as exc:
        return str(exc)
    return ""


def names_verdict(leaf: x509.Certificate, wanted: Iterable[str], *, external: bool, on: str = "") -> Finding:
    """Every configured name and address is in the certificate's subjectAltName."""
    names, ips = certs.san_of(leaf)
    missing = [w for w in dict.fromkeys(wanted) if not _covered(w, names, ips)]
    if missing:
        fix = ("get a certificate that covers them, or remove them from [tls] names, ip_addresses and [nginx] "
               "server_names") if external else (
            "`jrdctl reload` (jrd issues a certificate for the configured names), or start jrd")
        return Finding("certificate names", PROBLEM, "the certificate does not cover " + ", ".join(missing)
                       + ", so browsers warn there", fix)
    shown = ", ".join(sorted(names) + sorted(ips))
    return Finding("certificate names", OK, f"the certificate covers every configured name ({shown})")


def _covered(wanted: str, names: frozenset[str], ips: frozenset[str]) -> bool:
    try:
        return str(ipaddress.ip_address(wanted)) in ips
    except ValueError:
        pass
    wanted = wanted.lower()
    if wanted in names:
        return True
    head, _, rest = wanted.partition(".")
    return bool(rest) and f"*.{rest}" in names


def check_served(m: Machine) -> list[Finding]:
    """The certificate nginx serves on the port is the one on disk (TLS to loopback, DER compared)."""
    if not m.running:
        return []
    disk_path = m.config.tls.cert_file if m.config.external_tls else m.layout.leaf_cert
    try:
        disk = certs.load_cert(disk_path).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]
    except JrdError:
        return []  # already a problem of the certificate check
    try:
        served = _served_der(m)
    except (OSError, ssl.SSLError) as exc:
        return [Finding("served certificate", PROBLEM, f"no TLS answer on {m.config.local_probe_host}:"
                        f"{m.config.nginx.port} ({exc})", "see `jrdctl status`; `jrdctl restart nginx`")]
    return [served_verdict(served, disk, m.config.nginx.port)]


def served_verdict(served: bytes, disk: bytes, port: int) -> Finding:
    if served == disk:
        return Finding("served certificate", OK, f"nginx serves the certificate on disk on port {port}")
    return Finding("served certificate", PROBLEM, f"nginx serves another certificate on port {port} (serial "
                   f"{_serial(served)}) than the one on disk (serial {_serial(disk)})",
                   "`jrdctl restart nginx` makes nginx load the files on disk (gracefully)")


def _serial(der: bytes) -> str:
    try:
        return format(x509.load_der_x509_certificate(der).serial_number, "x")
    except ValueError:
        return "unreadable"


def _served_der(m: Machine, name: str | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if name is None:
        # In ACME mode the public names get the CA's certificate; the local one is served for localhost.
        name = "localhost" if m.config.acme_tls else (m.config.tls.names or ("localhost",))[0]
    with socket.create_connection((m.config.local_probe_host, m.config.nginx.port), timeout=PROBE_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("nginx sent no certificate")
    return der


def check_acme(m: Machine) -> list[Finding]:
    """ACME mode: the http-01 port is jrd's, and the certificate served for the public name is the CA's one on disk."""
    if not m.config.acme_tls:
        return []
    from jrd.tls.acme import AcmeStore

    port = m.config.acme.http_port
    holder = leftovers.tcp_listener(port)
    out: list[Finding] = []
    if m.running:
        master = leftovers.read_pid(m.layout.nginx_pid_file)
        verdict = port_verdict(port, holder, master, _pgid(holder[0]) if holder else None)
        out.append(Finding("http-01 port", verdict.level, verdict.message.replace("port ", "the http-01 port ", 1),
                           verdict.fix))
    elif holder is not None:
        out.append(Finding("http-01 port", PROBLEM, f"the http-01 port {port} is held by {holder[1]} (pid "
                           f"{holder[0]}), so the CA cannot validate this machine",
                           f"stop it (`systemctl disable --now nginx` if it is Debian's nginx) or set [acme] "
                           f"http_port{m.on}"))
    else:
        out.append(Finding("http-01 port", OK, f"the http-01 port {port} is free for jrd's nginx"))
    store = AcmeStore(m.layout.acme_dir)
    pair = store.current_pair(store.load_record())
    if pair is None:
        out.append(Finding("ACME certificate", WARNING, "no certificate from the CA yet; jrd serves its own CA's "
                           "certificate until one is issued", "see `jrdctl cert show` for the last order's error"))
        return out
    acme_der = pair[2].public_bytes(serialization.Encoding.DER)
    out.append(acme_served_verdict(_served_der(m, acme_sni(m.config)) if m.running and acme_sni(m.config) else None,
                                   acme_der, pair[2], m.now))
    return out


def acme_sni(config: Config) -> str | None:
    names, _ = config.acme_identifiers
    return names[0] if names else None


def acme_served_verdict(served: bytes | None, acme_der: bytes, cert: x509.Certificate, now: dt.datetime) -> Finding:
    left = (cert.not_valid_after_utc - now).total_seconds() / 86400
    issuer = cert.issuer.rfc4514_string()
    if left <= 0:
        return Finding("ACME certificate", PROBLEM, f"the certificate from {issuer} expired {-left:.1f} days ago",
                       "see `jrdctl cert show` for why renewing fails; `jrdctl cert renew --force`")
    if served is None:
        return Finding("ACME certificate", OK, f"a certificate from {issuer} is on disk, {left:.1f} days left")
    if served != acme_der:
        return Finding("ACME certificate", PROBLEM, f"nginx serves another certificate for the public name (serial "
                       f"{_serial(served)}) than the CA's on disk (serial {_serial(acme_der)})",
                       "`jrdctl restart nginx`; if it stays, see `jrdctl cert show`")
    return Finding("ACME certificate", OK, f"nginx serves the certificate from {issuer} for the public name, "
                   f"{left:.1f} days left")


def check_notebook_dir(m: Machine) -> list[Finding]:
    try:
        account = preflight.jupyter_account(m.config)
    except (JrdError, KeyError) as exc:
        return [Finding("notebook dir", PROBLEM, str(exc), "set [jupyter] user to an existing normal account")]
    path = m.config.jupyter.root_dir or account.home
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    return [notebook_dir_verdict(path, st, account, preflight.writable_by(path, account) if st else False)]


def notebook_dir_verdict(path: Path, st: os.stat_result | None, account: Account, writable: bool) -> Finding:
    chown = f"`chown -R {account.name}: {path}`"
    if st is None:
        return Finding("notebook dir", WARNING, f"{path} does not exist yet; jrd creates it at its start, owned "
                       f"by {account.name}", f"or create it now: `install -d -o {account.name} {path}`")
    if not stat.S_ISDIR(st.st_mode):
        return Finding("notebook dir", PROBLEM, f"{path} is not a directory", "set [jupyter] root_dir to a directory")
    owner = _user(st.st_uid)
    if st.st_uid != account.uid and not writable:
        return Finding("notebook dir", PROBLEM, f"{path} is owned by {owner}, not by {account.name}, which Jupyter "
                       "runs as: notebooks cannot be saved there", chown)
    if st.st_uid != account.uid:
        return Finding("notebook dir", WARNING, f"{path} is owned by {owner}, not by {account.name}, though "
                       f"{account.name} may write there", chown)
    if not writable:
        return Finding("notebook dir", PROBLEM, f"{path} is owned by {account.name} but not writable by it "
                       f"(mode {stat.S_IMODE(st.st_mode):04o})", f"`chmod u+rwx {path}`")
    return Finding("notebook dir", OK, f"{path} is owned by {account.name}, which Jupyter runs as")


@dataclass(frozen=True)
class FileFacts:
    path: Path
    mode: int
    uid: int
    secret: bool  # a key, the password hash, the token: 0600 or stricter


def check_modes(m: Machine) -> list[Finding]:
    """The state dir keeps other accounts out; keys and the password are 0600 and not the Jupyter account's."""
    layout = m.layout
    entries = [(layout.state_dir, False)]
    secrets = [layout.password_file, layout.initial_password_file, layout.internal_token_file]
    if m.config.external_tls:
        assert m.config.tls.key_file
        secrets.append(m.config.tls.key_file)
    else:
        entries.append((layout.tls_dir, False))
        secrets += [layout.ca_key, layout.leaf_key]
    facts = []
    for path, secret in entries + [(p, True) for p in secrets]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        facts.append(FileFacts(path, stat.S_IMODE(st.st_mode), st.st_uid, secret))
    try:
        jupyter_uid: int | None = preflight.jupyter_account(m.config).uid
    except (JrdError, KeyError):
        jupyter_uid = None
    return [modes_verdict(facts, jupyter_uid, os.geteuid())]


def modes_verdict(facts: list[FileFacts], jupyter_uid: int | None, jrd_uid: int) -> Finding:
    problems, warnings = [], []
    fixes = []
    for f in facts:
        if f.secret and f.mode & 0o077:
            problems.append(f"{f.path} holds a secret and is open to other accounts (mode {f.mode:04o})")
            fixes.append(f"chmod 600 {f.path}")
        elif not f.secret and f.mode & 0o077:
            warnings.append(f"{f.path} is open to other accounts (mode {f.mode:04o})")
            fixes.append(f"chmod 700 {f.path}")
        if jupyter_uid is not None and jupyter_uid != jrd_uid and f.uid == jupyter_uid:
            problems.append(f"{f.path} belongs to the Jupyter account, so every notebook can read or replace it")
            fixes.append(f"chown {_user(jrd_uid)} {f.path}")
    if not facts:
        return Finding("state dir", WARNING, "the state dir does not exist yet", "`jrd init` or the first start "
                       "of jrd makes it")
    if problems or warnings:
        return Finding("state dir", PROBLEM if problems else WARNING, "; ".join(problems + warnings),
                       "`" + " && ".join(fixes) + "`")
    return Finding("state dir", OK, f"{facts[0].path} and the keys and password in it are private "
                   "(0700 and 0600)")


def check_firewall(m: Machine) -> list[Finding]:
    port = m.config.nginx.port
    if all(addr in ("127.0.0.1", "[::1]") for addr in m.config.nginx.listen):
        return [Finding("firewall", OK, "nginx listens on loopback only; no port needs opening")]
    return [firewall_verdict(firewall.detect(port, m.run), port)]


def firewall_verdict(fw: firewall.Firewall, port: int) -> Finding:
    if not fw.kind:
        return Finding("firewall", OK, f"{fw.detail}; on a cloud VM, its security group or firewall rules must "
                       f"also let TCP port {port} in")
    if fw.allows is True:
        return Finding("firewall", OK, fw.detail)
    fix = f"`{fw.open_command}`" if fw.open_command else f"let TCP port {port} in"
    if fw.allows is False:
        return Finding("firewall", PROBLEM, f"{fw.detail}, so other devices cannot connect", fix)
    return Finding("firewall", WARNING, fw.detail, fix)


def check_clock(m: Machine) -> list[Finding]:
    out = m.run(["timedatectl", "show", "--property=NTPSynchronized", "--value"])
    synced = None
    if out is not None and out[0] == 0 and out[1].strip() in ("yes", "no"):
        synced = out[1].strip() == "yes"
    not_before = None
    path = m.config.tls.cert_file if m.config.external_tls else m.layout.leaf_cert
    try:
        not_before = certs.load_cert(path).not_valid_before_utc  # type: ignore[arg-type]
    except JrdError:
        pass
    return [clock_verdict(synced, m.now, not_before)]


def clock_verdict(synced: bool | None, now: dt.datetime, not_before: dt.datetime | None) -> Finding:
    if not_before is not None and now < not_before:
        return Finding("clock", PROBLEM, f"the clock ({now:%Y-%m-%d %H:%M} UTC) is behind the certificate's start "
                       f"({not_before:%Y-%m-%d %H:%M} UTC), so browsers refuse it",
                       "set the clock: `timedatectl set-ntp true`")
    if synced is False:
        return Finding("clock", WARNING, "the clock is not synchronised (timedatectl: NTPSynchronized=no)",
                       "`timedatectl set-ntp true` (needs systemd-timesyncd or chrony)")
    if synced is None:
        return Finding("clock", OK, "not behind the certificate (timedatectl cannot say whether it is "
                       "synchronised here)")
    return Finding("clock", OK, "synchronised, and not behind the certificate")


def _pgid(pid: int) -> int | None:
    fields = leftovers.stat_fields(pid)
    return int(fields[2]) if fields else None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


CHECKS: tuple[Callable[[Machine], list[Finding]], ...] = (
    check_rendered, check_gateway, check_running, check_supervisord, check_answers, check_ports,
    check_distro_nginx, check_certificates, check_served, check_acme, check_notebook_dir, check_modes,
    check_firewall, check_clock,
)


# --- running them -------------------------------------------------------------------------------


def diagnose(load: Callable[[], Config], *, now: dt.datetime | None = None,
             run: firewall.Run = firewall.run_tool) -> list[Finding]:
    """Every check's findings, the config's first: a config that does not load stops the rest."""
    try:
        config = load()
    except ConfigError as exc:
        return [Finding("config", PROBLEM, str(exc), "fix the file; `jrd check --config FILE` tests it")]
    layout = Layout.of(config)
    m = Machine(config, layout, now or certs.utcnow(), run, preflight.InstanceLock.holder(layout.lock_file))
    findings = [Finding("config", OK, f"{config.source or 'the built-in defaults'} is valid")]
    for check in CHECKS:
        try:
            findings += check(m)
        except (JrdError, OSError) as exc:
            findings.append(Finding(check.__name__.removeprefix("check_").replace("_", " "), PROBLEM,
                                    f"the check failed: {exc}", "see the message"))
    return findings


def exit_code(findings: list[Finding]) -> int:
    """0 when no check found a problem (warnings allowed), else 1."""
    return 1 if any(f.level == PROBLEM for f in findings) else 0


def lines(findings: list[Finding]) -> list[str]:
    out = []
    for f in findings:
        fix = f" -- fix: {f.fix}" if f.fix and f.level != OK else ""
        out.append(f"{_LABELS[f.level]:<8} {f.name}: {f.message}{fix}")
    problems = sum(f.level == PROBLEM for f in findings)
    warnings = sum(f.level == WARNING for f in findings)
    out.append(f"{problems} problem{'s' if problems != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}")
    return out


def as_json(findings: list[Finding]) -> dict[str, Any]:
    return {"ok": exit_code(findings) == 0, "problems": sum(f.level == PROBLEM for f in findings),
            "warnings": sum(f.level == WARNING for f in findings), "findings": [asdict(f) for f in findings]}

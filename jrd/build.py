"""Turn a config into files: gather the facts, render, make the directories, test, install.

`build` is the one path from a config to tested files, shared by the
daemon's start, every reload, and `jrd check`: it gathers the facts that
rendering needs (`gather_inputs`), lets extensions add theirs, renders
(`jrd.render.render_all`, pure), makes the runtime directories and runs
`nginx -t` on a staged copy.  Nothing is installed until `install`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import pwd
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jrd import gateway, nginx, passwords, preflight
from jrd.config import Config, gateway_token
from jrd.errors import ConfigError, JrdError, PreflightError
from jrd.fsutil import atomic_write, ensure_dir
from jrd.layout import Layout
from jrd.render import RenderedFile, RenderInputs, render_all
from jrd.tls import certs, profiles
from jrd.tls.bootstrap import TlsFiles, ensure_tls

log = logging.getLogger("jrd")

Contribute = Callable[[RenderInputs], RenderInputs]


@dataclass(frozen=True)
class Build:
    """A config rendered and tested, not yet installed."""

    inputs: RenderInputs
    files: dict[str, RenderedFile]
    # Why a new leaf certificate was issued for it, or None.
    issued: str | None = None


def gather_inputs(config: Config, layout: Layout, tls: TlsFiles, hashed_password: str,
                  token: str) -> RenderInputs:
    ca_cert = None
    mobileconfig = None
    if tls.ca_pem is not None and config.tls.serve_ca:
        from cryptography import x509

        ca_cert = x509.load_pem_x509_certificate(tls.ca_pem)
        mobileconfig = profiles.mobileconfig(ca_cert, profiles.profile_label(config))
    nginx_exe = nginx.find_nginx(config.nginx.binary)
    return RenderInputs(
        config=config,
        layout=layout,
        jupyter_executable=preflight.find_jupyter(),
        nginx_executable=nginx_exe,
        nginx_build=nginx.probe(nginx_exe),
        python_executable=preflight.python_executable(),
        jupyter_account=preflight.jupyter_account(config),
        hashed_password=hashed_password,
        internal_token=token,
        cert_file=tls.cert,
        key_file=tls.key,
        running_as_root=os.geteuid() == 0,
        nginx_worker_user=preflight.nginx_worker_user(),
        ca_pem=tls.ca_pem if config.tls.serve_ca else None,
        ca_mobileconfig=mobileconfig,
        event_listener_command=None,
        # Read again at every build: a rotated token reaches Jupyter at the next reload.
        gateway_token=gateway_token(str(config.source or "the config"), config.gateway),
    )


def build(config: Config, layout: Layout, tls: TlsFiles, hashed_password: str, token: str, *,
          contribute: Contribute | None = None, staging: Path | None = None,
          create_root_dir: bool = True) -> Build:
    """Render every derived file for `config`, make its directories, and `nginx -t` a staged copy."""
    inputs = gather_inputs(config, layout, tls, hashed_password, token)
    if contribute is not None:
        inputs = contribute(inputs)
    files = render_all(inputs)
    make_dirs(inputs, create_root_dir)
    stage(files, inputs.nginx_executable, staging or ensure_dir(layout.staging_dir, 0o700))
    return Build(inputs, files)


def build_to_run(config: Config, layout: Layout, now: dt.datetime, contribute: Contribute | None = None) -> Build:
    """The build a running jrd installs: its certificate issued if due, its password and token from the state dir."""
    tls, issued = ensure_tls(config, layout, now)
    hashed = passwords.read_password_hash(layout.password_file)
    if hashed is None:
        raise JrdError(f"no login password is set ({layout.password_file} is missing); set one with `jrd passwd`")
    token = passwords.ensure_internal_token(layout.internal_token_file)
    done = build(config, layout, tls, hashed, token, contribute=contribute)
    return Build(done.inputs, done.files, issued)


def check(config: Config) -> None:
    """What `jrd check` does: everything `jrd run` would start, built and tested aside; nothing real changes.

    nginx.conf through `nginx -t`, supervisord.conf through supervisord's own
    parser, Jupyter's config through Python's compiler, a gateway ([gateway]) asked
    whether it answers, and, when no jrd runs on these directories, the ports.
    """
    check_rendered(config)
    # The gateway answers: a config that would leave Jupyter unable to start any kernel is refused.
    gateway.check_reachable(config)
    lock = preflight.InstanceLock(Layout.of(config).lock_file)
    try:
        lock.acquire()
    except PreflightError:
        return  # jrd runs on these directories: the ports are its own
    except OSError:
        pass  # no runtime dir yet: no jrd has run here
    try:
        preflight.check_ports(config)
    finally:
        lock.release()


def check_rendered(config: Config) -> None:
    """Render everything for `config` into a temporary directory and test it as its programs would.

    nginx.conf through `nginx -t`, supervisord.conf through supervisord's own parser, and
    Jupyter's config through Python's compiler; the state dir's certificate is used if it is
    current, else a throwaway one.  Nothing real changes.
    """
    real = Layout.of(config)
    with tempfile.TemporaryDirectory(prefix="jrd-check-") as tmp:
        layout = Layout(Path(tmp) / "state", Path(tmp) / "run", Path(tmp) / "log")
        if not config.external_tls and certs.current_leaf(real.leaf_cert, real.leaf_key) is not None:
            tls = TlsFiles(real.leaf_cert, real.leaf_key, real.ca_cert.read_bytes())
        else:
            # External: the pair checked, nothing written.  No certificate yet: a throwaway one
            # in the temporary layout, the state dir left alone.
            tls, _ = ensure_tls(config, layout, certs.utcnow())
        hashed = passwords.read_password_hash(real.password_file) if real.password_file.exists() else None
        built = build(config, layout, tls, hashed or "argon2:placeholder", "0" * 64, staging=Path(tmp),
                      create_root_dir=False)
        check_supervisord_conf(built.files["supervisord.conf"].content, Path(tmp))
        check_jupyter_conf(built.files["jupyter_server_config.py"].content)


def check_supervisord_conf(content: bytes, into: Path) -> None:
    """supervisord's own parser on the rendered file: what it would refuse at start, refused now."""
    # Only in `jrd check`: supervisor.options costs the daemon some 13 MB that it never needs otherwise.
    from supervisor.options import ServerOptions

    staged = into / "supervisord.conf"
    atomic_write(staged, content, 0o600)
    opts = ServerOptions()
    opts.configfile = str(staged)
    try:
        opts.process_config(do_usage=False)
    except ValueError as exc:
        raise ConfigError(f"supervisord would refuse the rendered config: {exc}") from None


def check_jupyter_conf(content: bytes) -> None:
    try:
        compile(content, "jupyter_server_config.py", "exec")
    except SyntaxError as exc:
        raise ConfigError(f"the rendered Jupyter config is not valid Python: {exc}") from None


def make_dirs(inp: RenderInputs, create_root_dir: bool = True) -> None:
    """The runtime and log directories, each with the narrowest mode that works."""
    layout = inp.layout
    acct = inp.jupyter_account
    root = inp.running_as_root
    # The configured directories get a mode when jrd creates them, and are left
    # alone otherwise; what jrd keeps inside them has its mode forced.
    ensure_dir(layout.state_dir, 0o700, force=False)
    ensure_dir(layout.runtime_dir, 0o755, force=False)
    ensure_dir(layout.log_dir, 0o750, force=False)
    ensure_dir(layout.supervisor_dir, 0o700)
    ensure_dir(layout.nginx_dir, 0o755)
    ensure_dir(layout.nginx_public_dir, 0o755)
    worker = pwd.getpwnam(inp.nginx_worker_user) if root else None
    ensure_dir(layout.nginx_temp_dir, 0o700, (worker.pw_uid, worker.pw_gid) if worker else None)
    owner = (acct.uid, acct.gid) if root else None
    # Jupyter makes its runtime dir inside this one itself, as its own account.
    ensure_dir(layout.jupyter_dir, 0o700, owner)
    root_dir = inp.config.jupyter.root_dir
    if create_root_dir and root_dir is not None and not root_dir.exists():
        where = inp.config.source or "the config"
        try:
            ensure_dir(root_dir, 0o755, owner, force=False)
        except OSError as exc:
            raise ConfigError(
                f"{where}: [jupyter] root_dir = '{root_dir}' cannot be created ({exc.strerror}); create it "
                "yourself, owned by the Jupyter account, and under systemd allow writing to it with a drop-in "
                "(`systemctl edit jrd`: [Service] ReadWritePaths=" + str(root_dir) + ")"
            ) from None
    if root:
        preflight.check_jupyter_reach(root_dir, inp.jupyter_executable, acct)
    if root_dir is not None and root_dir.exists() and not preflight.writable_by(root_dir, acct):
        # Jupyter starts and serves, but nothing can be saved: say so, and how to fix it.
        log.warning("the notebook dir %s is not writable by the Jupyter account %s: notebooks cannot be saved; "
                    "fix it with `chown -R %s %s`", root_dir, acct.name, acct.name, root_dir)


def stage(files: dict[str, RenderedFile], nginx_exe: Path, into: Path) -> Path:
    """Write a copy of the rendered nginx.conf into `into` and `nginx -t` it; return its path."""
    staged = into / "nginx.conf"
    atomic_write(staged, files["nginx.conf"].content, 0o644)
    nginx.test_config(nginx_exe, staged)
    return staged


def install(files: dict[str, RenderedFile]) -> list[str]:
    """Write every rendered file atomically; return the names of those that changed."""
    changed = []
    for name, f in files.items():
        ensure_dir(f.path.parent, 0o755, force=False)
        if atomic_write(f.path, f.content, f.mode, f.owner):
            changed.append(name)
    return changed

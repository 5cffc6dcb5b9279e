"""Turn a config into files on disk: gather the facts, render, test, write.

This is the I/O half of rendering.  `gather_inputs` reads the machine and
the state dir (the TLS files come from `jrd.tls.bootstrap.ensure_tls`),
`jrd.render.render_all` (pure) makes the text, `stage` writes it to a
scratch directory and runs `nginx -t` there, and `install` moves it into
the runtime dir with atomic writes.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from jrd import nginx
from jrd.config import Config
from jrd.errors import ConfigError, PreflightError
from jrd.fsutil import atomic_write, ensure_dir
from jrd.layout import Layout
from jrd.render import Account, RenderedFile, RenderInputs, render_all
from jrd.tls import profiles
from jrd.tls.bootstrap import TlsFiles


def venv_bin() -> Path:
    return Path(sys.executable).parent


def find_jupyter() -> Path:
    exe = venv_bin() / "jupyter"
    if not exe.exists():
        raise PreflightError(
            f"Jupyter is not installed beside jrd (no {exe}); install it with `pip install jupyterlab` "
            "in the same environment, or run `make install`"
        )
    return exe


def jupyter_account(config: Config) -> Account:
    """The account Jupyter runs as; root only by explicit opt-in."""
    where = config.source or "the built-in defaults"
    name = config.jupyter.user
    if name:
        pw = pwd.getpwnam(name)
    else:
        pw = pwd.getpwuid(os.geteuid())
    if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
        raise ConfigError(
            f"{where}: [jupyter] user = {name!r} needs jrd to run as root; run jrd as root or leave user empty"
        )
    if pw.pw_uid == 0 and not config.jupyter.allow_root:
        raise ConfigError(
            f"{where}: Jupyter would run as root; set [jupyter] user to a normal account "
            "(for example `useradd --create-home jupyter` and user = \"jupyter\"), "
            "or set [jupyter] allow_root = true if you really mean it"
        )
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def nginx_worker_user() -> str:
    for name in ("www-data", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return "nobody"


def gather_inputs(
    config: Config, layout: Layout, tls: TlsFiles, hashed_password: str, token: str
) -> RenderInputs:
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
        jupyter_executable=find_jupyter(),
        nginx_executable=nginx_exe,
        nginx_version=nginx.version(nginx_exe),
        python_executable=Path(sys.executable),
        jupyter_account=jupyter_account(config),
        hashed_password=hashed_password,
        internal_token=token,
        cert_file=tls.cert,
        key_file=tls.key,
        running_as_root=os.geteuid() == 0,
        nginx_worker_user=nginx_worker_user(),
        ca_pem=tls.ca_pem if config.tls.serve_ca else None,
        ca_mobileconfig=mobileconfig,
        event_listener_command=None,
    )


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


def install(files: dict[str, RenderedFile]) -> list[str]:
    """Write every rendered file atomically; return the names of those that changed."""
    changed = []
    for name, f in files.items():
        ensure_dir(f.path.parent, 0o755, force=False)
        if atomic_write(f.path, f.content, f.mode, f.owner):
            changed.append(name)
    return changed


def render_checked(inputs: RenderInputs, staging: Path, create_root_dir: bool = True) -> dict[str, RenderedFile]:
    """Every derived file for `inputs`, its directories made, its nginx.conf accepted by `nginx -t` in `staging`."""
    files = render_all(inputs)
    make_dirs(inputs, create_root_dir)
    stage(files, inputs.nginx_executable, staging)
    return files


def stage(files: dict[str, RenderedFile], nginx_exe: Path, into: Path) -> Path:
    """Write a copy of the rendered nginx.conf into `into` and `nginx -t` it; return its path."""
    staged = into / "nginx.conf"
    atomic_write(staged, files["nginx.conf"].content, 0o644)
    nginx.test_config(nginx_exe, staged)
    return staged

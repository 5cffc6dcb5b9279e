"""`jrd`: run the daemon, check a config, set the password, manage the CA.

Each subcommand parses, calls one function, prints, and returns an exit
code.  Expected failures (`JrdError`) print one line without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from jrd import __version__, build, passwords
from jrd import config as config_module
from jrd.config import DEFAULT_CONFIG_PATH, Config
from jrd.errors import JrdError, UsageError
from jrd.layout import Layout
from jrd.tls import certs, profiles
from jrd.tls.bootstrap import ensure_tls

log = logging.getLogger("jrd")


def project_dir() -> Path:
    """The checkout `--dev` keeps its state in (the current directory)."""
    return Path.cwd()


def resolve_config(args: argparse.Namespace) -> Config:
    return config_module.resolve_config(args.config, getattr(args, "dev", False), project_dir())


def config_loader(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return lambda: resolve_config(args)


def setup_logging(level: str) -> None:
    # Under systemd the journal stamps time and pid itself.
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=("%(levelname)s %(message)s" if under_journal
                else "%(asctime)s jrd[%(process)d] %(levelname)s %(message)s"),
        stream=sys.stderr,
    )


# --- subcommands -----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from jrd.app import build_daemon

    config = resolve_config(args)
    setup_logging(config.log.level)
    daemon = build_daemon(config, config_loader(args), interactive=sys.stdout.isatty() or args.dev)
    return daemon.run()


def cmd_check(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    build.check(config)
    print(f"{config.source or 'the built-in defaults'}: OK (config valid; nginx, supervisord and Jupyter "
          "accept what it renders; its ports are free or jrd's own)")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    layout = Layout.of(config)
    password = passwords.read_new_password(args.stdin, "jrd passwd")
    passwords.write_password_hash(layout.password_file, passwords.hash_password(password))
    layout.initial_password_file.unlink(missing_ok=True)
    print(f"Password hash saved in {layout.password_file}; a running jrd applies it by itself.")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    layout = Layout.of(config)
    _, reason = ensure_tls(config, layout, certs.utcnow())
    if config.external_tls:
        print(f"Using the external certificate {config.tls.cert_file}; no local CA is needed.")
        return 0
    ca = certs.load_cert(layout.ca_cert)
    print(f"Local CA: {layout.ca_cert} (SHA-256 {certs.fingerprint(ca)})")
    print(f"Certificate: {layout.leaf_cert}" + (f" (issued: {reason})" if reason else " (current)"))
    return 0


def cmd_ca_export(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    layout = Layout.of(config)
    if config.external_tls:
        raise UsageError("this jrd uses an external certificate; there is no local CA to export")
    ca, _, _ = certs.own_ca(config, layout, certs.utcnow())
    files = profiles.export_ca(ca, config, Path(args.output))
    print(f"Wrote {files['pem']} and {files['mobileconfig']}")
    print(f"CA SHA-256 fingerprint: {certs.fingerprint(ca)}")
    return 0


# --- parsing ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jrd", description="Jupyter remote daemon")
    parser.add_argument("--version", action="version", version=f"jrd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str, epilog: str = "") -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help, description=help, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_CONFIG_PATH})")
        p.add_argument("--dev", action="store_true",
                       help="development defaults: state under ./.jrd, notebooks in ./notebooks, no config file needed")
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "run the daemon in the foreground", "example:\n  jrd run --config /etc/jrd/jrd.toml")
    add("check", cmd_check, "validate the config and test the nginx config it renders",
        "example:\n  jrd check --config /etc/jrd/jrd.toml && systemctl reload jrd")
    p = add("passwd", cmd_passwd, "set the Jupyter login password (only its argon2 hash is stored)",
            "examples:\n  jrd passwd\n  echo 'long passphrase' | jrd passwd --stdin")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    add("init", cmd_init, "create the local CA and the TLS certificate if they do not exist")
    ca = sub.add_parser("ca", help="the local CA").add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    p = ca.add_parser("export", help="write the CA as PEM and as an iOS/iPadOS .mobileconfig",
                      description="write the CA as PEM and as an iOS/iPadOS .mobileconfig",
                      epilog="example:\n  jrd ca export -o ~/jrd-ca",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--dev", action="store_true", help="use the development defaults")
    p.add_argument("-o", "--output", default=".", help="directory to write into (default: current)")
    p.set_defaults(func=cmd_ca_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except JrdError as exc:
        print(f"jrd: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # The machine said no (read-only file system, disk full, permission denied):
        # one line that names the file, not a traceback.
        log.debug("OS error", exc_info=True)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"jrd: {exc.strerror or exc}{where}; check the path's permissions and free space", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

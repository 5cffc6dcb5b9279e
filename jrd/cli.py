"""`jrd`: run the daemon, check a config, set the password, manage the CA.

Each subcommand parses, calls one function, prints, and returns an exit
code.  Expected failures (`JrdError`) print one line without a traceback.
"""

from __future__ import annotations

import argparse
import json
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
    from jrd import init

    if args.dev:
        raise UsageError("jrd init sets up a system install; `make run` (jrd run --dev) needs no setup")
    opts = init.Options(
        config_path=args.config or DEFAULT_CONFIG_PATH,
        names=tuple(args.name) if args.name is not None else None,
        ips=tuple(args.ip) if args.ip is not None else None,
        user=args.user, root_dir=args.root_dir, port=args.port, state_dir=args.state_dir,
        password_stdin=args.password_stdin, yes=args.yes, force=args.force, new_ca=args.new_ca,
        acme=args.acme, email=args.email, acme_directory=args.acme_directory,
    )
    return init.run_init(opts)


def cmd_doctor(args: argparse.Namespace) -> int:
    from jrd import doctor

    # What the build logs on its way (an unwritable notebook dir) is a finding of its own here.
    logging.getLogger("jrd").addHandler(logging.NullHandler())
    findings = doctor.diagnose(lambda: resolve_config(args))
    if args.json:
        print(json.dumps(doctor.as_json(findings), indent=2))
    else:
        for line in doctor.lines(findings):
            print(line)
    return doctor.exit_code(findings)


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
    p = add("init", cmd_init, "set this machine up: the config, the Jupyter account, the CA and certificate, "
            "the password",
            "Asks on a terminal, suggesting this machine's names and addresses; --yes takes the suggestions\n"
            "and the flags given instead.  Run again, it changes nothing without --force; --force keeps the CA\n"
            "(devices stay trusted) unless --new-ca is given.\n\n"
            "examples:\n  jrd init\n"
            "  echo 'long passphrase' | jrd init --yes --password-stdin --name vm.example.com --ip 203.0.113.7 "
            "--user jupyter\n  jrd init --force --port 9443\n"
            "  jrd init --acme --email me@example.com --name vm.example.com --ip 203.0.113.7")
    p.add_argument("--name", action="append", metavar="NAME",
                   help="a DNS name for the certificate (repeat, or comma-separated; '-' for none)")
    p.add_argument("--ip", action="append", metavar="ADDRESS",
                   help="an IP address for the certificate (repeat, or comma-separated; '-' for none)")
    p.add_argument("--user", help="the account Jupyter runs as (created if missing; default: jupyter as root)")
    p.add_argument("--root-dir", metavar="DIR", help="the notebook directory (default: the account's home)")
    p.add_argument("--port", type=int, help="the HTTPS port (default 8888)")
    p.add_argument("--state-dir", metavar="DIR", help="where the CA, certificate and password live "
                   "(default /var/lib/jrd)")
    p.add_argument("--password-stdin", action="store_true", help="read the login password from standard input "
                   "(needs --yes); without it, a password is generated and shown once")
    p.add_argument("-y", "--yes", action="store_true", help="ask nothing: take the flags given and the suggestions")
    p.add_argument("--force", action="store_true", help="set up again over an existing config (keeps the CA)")
    p.add_argument("--new-ca", action="store_true", help="make a new CA: every device must trust it again")
    p.add_argument("--acme", action="store_true", help="a certificate every device trusts, from Let's Encrypt "
                   "(or --acme-directory) for the public names and addresses; port 80 must reach this machine")
    p.add_argument("--email", help="with --acme: the contact address the CA writes to about expiring certificates")
    p.add_argument("--acme-directory", metavar="URL", help="with --acme: another ACME CA's directory URL "
                   "(default: Let's Encrypt; staging: https://acme-staging-v02.api.letsencrypt.org/directory)")
    p = add("doctor", cmd_doctor, "check what usually goes wrong; one line per check, with the fix",
            "exit status: 0 when no check found a problem (warnings allowed), 1 when one did.\n\n"
            "examples:\n  jrd doctor\n  jrd doctor --json | jq '.findings[] | select(.level == \"problem\")'")
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
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

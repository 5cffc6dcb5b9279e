"""`jrdctl`: control a running jrd through its private control socket.

Each verb parses, sends one or a few requests (jrd.control.request), prints
a table or `--json`, and returns an exit code a shell script can rely on:

    0  done; for `status`: every program is running
    1  jrd refused or failed the request (the reason is printed)
    2  the command line is wrong (unknown verb, program or option)
    3  `status` only: a program is not running
    4  permission denied on the control socket
    7  jrd itself is not running
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tomllib
import time
from pathlib import Path
from typing import Any, Callable

from jrd import __version__, control
from jrd import config as config_module
from jrd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, dev_defaults, system_defaults
from jrd.errors import JrdError, UsageError
from jrd.layout import Layout

PROGRAM_CHOICES = (*control.PROGRAMS, "all")
FOLLOW_INTERVAL = 0.5


# --- finding the daemon ----------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> Config:
    """The config as `jrd` resolves it (see jrd.cli.resolve_config), without its heavier imports.

    Without --config, an absent or unreadable system config means the
    system defaults: a member of the control group may not read the file.
    """
    config_path = getattr(args, "config", None)
    dev = getattr(args, "dev", False)
    if dev or config_path:
        return config_module.resolve_config(config_path, dev)
    try:
        return config_module.resolve_config(None, False)
    except ConfigError:
        if DEFAULT_CONFIG_PATH.is_file() and _readable(DEFAULT_CONFIG_PATH):
            raise
        return system_defaults()


def find_socket(args: argparse.Namespace) -> Path:
    """The control socket: from --socket, else from the config's [paths] runtime_dir.

    A config that does not validate (mid-edit, or just refused by a reload)
    still names the runtime dir of the daemon that runs on the previous one,
    so jrdctl reads that one key leniently rather than failing.
    """
    if getattr(args, "socket", None):
        return Path(args.socket)
    try:
        return Layout.of(resolve_config(args)).control_socket
    except ConfigError as exc:
        path = getattr(args, "config", None) or DEFAULT_CONFIG_PATH
        base = dev_defaults(Path.cwd()) if getattr(args, "dev", False) else system_defaults()
        try:
            text = path.read_text(errors="replace")
        except OSError:
            raise exc from None
        runtime = lenient_runtime_dir(text) or base.paths.runtime_dir
        return Layout(base.paths.state_dir, runtime, base.paths.log_dir).control_socket


def lenient_runtime_dir(text: str) -> Path | None:
    """[paths] runtime_dir from config text that may be invalid TOML."""
    try:
        value = tomllib.loads(text).get("paths", {}).get("runtime_dir")
    except tomllib.TOMLDecodeError:
        match = re.search(r"""^\s*runtime_dir\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
        value = match.group(1) if match else None
    return Path(value).expanduser() if isinstance(value, str) and value else None


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


class Client:
    """The control socket of one jrd, found from the command line."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._config: Config | None = None
        self.socket = find_socket(args)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = resolve_config(self.args)
        return self._config

    def call(self, command: str, **args: Any) -> Any:
        return control.request(self.socket, command, **args)


# --- output helpers ---------------------------------------------------------------------


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def duration(seconds: float | None) -> str:
    """A short human duration: 45s, 12m05s, 3h02m, 4d03h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def when(epoch: float | None, now: float) -> str:
    if not epoch:
        return "never"
    stamp = dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({duration(max(0.0, now - epoch))} ago)"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# --- status -------------------------------------------------------------------------------


def status_exit_code(status: dict[str, Any]) -> int:
    """0 when supervisord answers and every program is RUNNING, else 3."""
    programs = status.get("programs") or {}
    if not status.get("supervisor", True) or "error" in programs:
        return control.EXIT_NOT_ALL_RUNNING
    for name in control.PROGRAMS:
        if (programs.get(name) or {}).get("state") != "RUNNING":
            return control.EXIT_NOT_ALL_RUNNING
    return control.EXIT_OK


def format_status(st: dict[str, Any], now: float) -> str:
    """The `jrdctl status` table: programs, URL, certificates, last reload, pending actions."""
    lines = [f"jrd {st.get('version', '?')} (pid {st.get('pid', '?')}) serving {st.get('url', '?')}", ""]
    programs = st.get("programs") or {}
    if "error" in programs:
        lines.append(f"supervisord is not answering: {programs['error']}")
    else:
        rows = [["PROGRAM", "STATE", "PID", "UPTIME", "RESTARTS"]]
        for name, p in programs.items():
            rows.append([name, str(p.get("state", "?")), str(p.get("pid") or "-"),
                         duration(p.get("uptime_seconds")) if p.get("state") == "RUNNING" else "-",
                         str(p.get("restarts", 0))])
        lines.append(table(rows))
    lines.append("")
    facts: list[list[str]] = []
    for role, c in (st.get("certificates") or {}).items():
        if not isinstance(c, dict):
            continue
        label = {"leaf": "certificate", "ca": "local CA"}.get(role, role)
        if "error" in c:
            facts.append([label, f"PROBLEM: {c['error']}"])
        elif "days_left" in c:
            until = dt.datetime.fromtimestamp(c["not_after"]).strftime("%Y-%m-%d") if c.get("not_after") else "?"
            facts.append([label, f"{c['days_left']:.1f} days left (until {until})"])
    reload = st.get("reload") or {}
    if reload.get("last_ok") is None:
        facts.append(["last reload", "none since start"])
    elif reload.get("last_ok"):
        facts.append(["last reload", f"ok, {when(reload.get('last_at'), now)}"])
    else:
        facts.append(["last reload", f"REFUSED {when(reload.get('last_at'), now)}: {reload.get('error', '')}"])
    pending = st.get("pending") or []
    facts.append(["pending", "; ".join(pending) if pending else "nothing"])
    lines.append(table(facts))
    return "\n".join(lines)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    st = client.call("status")
    if args.json:
        emit_json(st)
    else:
        print(format_status(st, time.time()))
    return status_exit_code(st)


# --- restart, start, stop -------------------------------------------------------------------


def program_arg(value: str | None, default: str = "all", allow_all: bool = True) -> str:
    try:
        return control.check_program(value or default, allow_all=allow_all)
    except UsageError:
        valid = PROGRAM_CHOICES if allow_all else control.PROGRAMS
        raise UsageError(f"unknown program {value!r}; valid names are: {', '.join(valid)}") from None


def confirm_kernels(client: Client, ask: Callable[[str], str] = input) -> bool:
    """On a terminal, warn that restarting Jupyter stops running kernels; True to go ahead."""
    try:
        kernels = client.call("kernels")
    except control.ControlError:
        return True  # Jupyter is not answering: there is nothing to lose
    if not kernels.get("running"):
        return True
    busy = kernels.get("busy", 0)
    sys.stderr.write(
        f"{kernels['running']} kernel(s) running ({busy} busy). Restarting Jupyter stops them and "
        "loses their state.\n")
    sys.stderr.flush()
    try:
        answer = ask("Restart Jupyter anyway? [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _pids(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    programs = status.get("programs") or {}
    return {n: p for n, p in programs.items() if isinstance(p, dict)}


def cmd_restart(client: Client, args: argparse.Namespace) -> int:
    program = program_arg(args.program)
    if program in ("jupyter", "all") and not args.yes and sys.stdin.isatty() and sys.stderr.isatty():
        if not confirm_kernels(client):
            print("Nothing was restarted.", file=sys.stderr)
            return control.EXIT_FAILED
    return act(client, args, "restart", program)


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    return act(client, args, "start", program_arg(args.program))


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    return act(client, args, "stop", program_arg(args.program))


def act(client: Client, args: argparse.Namespace, verb: str, program: str) -> int:
    """restart/start/stop one program or all, and report PIDs and restart counters before and after."""
    before = _pids(client.call("status"))
    extra = {"wait": True, "timeout": args.timeout} if verb in ("restart", "start") else {}
    result = client.call(verb, program=program, **extra)
    after = _pids(client.call("status"))
    names = list(control.PROGRAMS) if program == "all" else [program]
    report = {
        "verb": verb,
        "programs": {
            n: {"pid_before": (before.get(n) or {}).get("pid"), "pid": (after.get(n) or {}).get("pid"),
                "state": (after.get(n) or {}).get("state"), "restarts": (after.get(n) or {}).get("restarts")}
            for n in names
        },
        **{k: v for k, v in result.items() if k in ("serving", "seconds", "note")},
    }
    if args.json:
        emit_json(report)
        return control.EXIT_OK
    done = {"restart": "restarted", "start": "started", "stop": "stopped"}[verb]
    for name, p in report["programs"].items():
        if verb == "restart" and name == "nginx" and p["pid"] == p["pid_before"]:
            what = f"nginx reloaded gracefully (HUP to master pid {p['pid']}; new workers took over)"
        elif verb == "stop":
            what = f"{name} {done} (was pid {p['pid_before'] or '-'})"
        else:
            what = f"{name} {done}: pid {p['pid_before'] or '-'} -> {p['pid'] or '-'}"
        if verb == "restart":
            what += f", restarts {p['restarts']}"
        print(what)
    if report.get("serving"):
        print(f"Jupyter answers through nginx again after {report['seconds']:.1f} s")
    elif report.get("note"):
        print(report["note"])
    return control.EXIT_OK


# --- reload, logs --------------------------------------------------------------------------------


def cmd_reload(client: Client, args: argparse.Namespace) -> int:
    result = client.call("reload")
    if args.json:
        emit_json(result)
    else:
        actions = result.get("actions") or []
        print("Reload applied: " + ("; ".join(actions) if actions else "nothing changed"))
    return control.EXIT_OK


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    program = program_arg(args.program, allow_all=False)
    if args.lines < 0:
        raise UsageError("-n takes a number of lines, 0 or more")
    chunk = client.call("logs", program=program, lines=args.lines)

    def show(text: str) -> None:
        if args.json:
            print(json.dumps({"program": program, "lines": text.splitlines()}), flush=True)
        elif text:
            sys.stdout.write(text)
            sys.stdout.flush()

    show(chunk["text"])
    offset = chunk["offset"]
    while args.follow:
        time.sleep(FOLLOW_INTERVAL)
        chunk = client.call("logs", program=program, offset=offset)
        if chunk["text"]:
            show(chunk["text"])
        offset = chunk["offset"]
    return control.EXIT_OK


# --- certificates ----------------------------------------------------------------------------------


def certificate_details(client: Client) -> dict[str, Any]:
    """Leaf and CA details: from the daemon, filled in from the files where it gave less."""
    from jrd.tls import certs

    given = client.call("status").get("certificates") or {}
    out: dict[str, Any] = {}
    layout = Layout.of(client.config)
    paths = {"leaf": client.config.tls.cert_file or layout.leaf_cert}
    if not client.config.external_tls:
        paths["ca"] = layout.ca_cert
    for role in ("leaf", "ca"):
        entry = dict(given.get(role) or {})
        if "sha256" not in entry and "error" not in entry and role in paths:
            try:
                entry.update(certs.describe(certs.load_cert(paths[role]), certs.utcnow()))
            except (JrdError, OSError) as exc:
                entry.setdefault("error", f"cannot read {paths[role]}: {exc}")
        if entry:
            out[role] = entry
    return out


def format_certificate(role: str, c: dict[str, Any]) -> str:
    label = {"leaf": "Certificate (leaf)", "ca": "Local CA"}.get(role, role)
    if "error" in c and "sha256" not in c:
        return f"{label}\n  PROBLEM: {c['error']}"

    def stamp(epoch: float | None) -> str:
        return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if epoch else "?"

    rows = [
        ["subject", c.get("subject", "?")],
        ["SANs", ", ".join(c.get("sans") or []) or "-"],
        ["issuer", c.get("issuer", "?")],
        ["not before", stamp(c.get("not_before"))],
        ["not after", stamp(c.get("not_after"))],
        ["days left", f"{c['days_left']:.1f}" if "days_left" in c else "?"],
        ["SHA-256", c.get("sha256", "?")],
    ]
    return label + "\n" + "\n".join("  " + line for line in table(rows).splitlines())


def cmd_cert(client: Client, args: argparse.Namespace) -> int:
    if args.cert_command == "show":
        details = certificate_details(client)
        if args.json:
            emit_json(details)
        else:
            print("\n\n".join(format_certificate(role, c) for role, c in details.items()))
        return control.EXIT_OK
    if args.cert_command == "renew":
        result = client.call("renew_cert", force=args.force)
        if args.json:
            emit_json(result)
        elif result.get("renewed"):
            print(f"Certificate renewed ({result.get('reason', '')}); nginx reloaded gracefully.")
        else:
            print(f"Not renewed: {result.get('reason', '')}. Use --force to renew anyway.")
        return control.EXIT_OK
    return export_ca(client, Path(args.output), args.json)


def export_ca(client: Client, out: Path, as_json: bool) -> int:
    """Write the CA as PEM and as an iOS/iPadOS .mobileconfig, as `jrd ca export` does."""
    from jrd.tls import certs, profiles

    config = client.config
    if config.external_tls:
        raise UsageError("this jrd uses an external certificate; there is no local CA to export")
    path = Layout.of(config).ca_cert
    try:
        ca = certs.load_cert(path)
    except JrdError as exc:
        raise JrdError(f"{exc} (reading the CA needs root, or use the copy nginx serves at https://HOST:PORT/jrd/ca.pem)") from None
    files = profiles.export_ca(ca, config, out)
    if as_json:
        emit_json({**{k: str(v) for k, v in files.items()}, "sha256": certs.fingerprint(ca)})
    else:
        print(f"Wrote {files['pem']} and {files['mobileconfig']}")
        print(f"CA SHA-256 fingerprint: {certs.fingerprint(ca)}")
    return control.EXIT_OK


# --- passwd, version, completion ---------------------------------------------------------------------


def cmd_passwd(client: Client, args: argparse.Namespace) -> int:
    from jrd import passwords

    # Hash here, so that the password itself never crosses the socket.
    hashed = passwords.hash_password(passwords.read_new_password(args.stdin, "jrdctl passwd"))
    result = client.call("passwd", hashed=hashed)
    if args.json:
        emit_json(result)
        return control.EXIT_OK
    jupyter = [a for a in result.get("actions") or [] if a.startswith("jupyter restart")]
    print("Password changed; " + (jupyter[0] if jupyter else "Jupyter already uses it") + ".")
    return control.EXIT_OK


def cmd_version(client: Client | None, args: argparse.Namespace) -> int:
    daemon: dict[str, Any] = {"running": False}
    if client is not None:
        try:
            st = client.call("status")
            daemon = {"running": True, "version": st.get("version"), "pid": st.get("pid")}
        except JrdError as exc:
            daemon["error"] = str(exc)
    if args.json:
        emit_json({"jrdctl": __version__, "daemon": daemon})
    elif daemon["running"]:
        print(f"jrdctl {__version__}\njrd {daemon['version']} (pid {daemon['pid']})")
    else:
        print(f"jrdctl {__version__}\njrd: {daemon.get('error', 'not running')}")
    return control.EXIT_OK


BASH_COMPLETION = r"""# bash completion for jrdctl: eval "$(jrdctl completion bash)"
_jrdctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    case $prev in
        restart|start|stop) COMPREPLY=($(compgen -W "jupyter nginx all" -- "$cur")); return;;
        logs) COMPREPLY=($(compgen -W "jupyter nginx" -- "$cur")); return;;
        cert) COMPREPLY=($(compgen -W "show renew ca" -- "$cur")); return;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return;;
        --config|--socket|-o|--output) COMPREPLY=($(compgen -f -- "$cur")); return;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "--help --json --config --socket --dev --yes --timeout --force --follow --lines --stdin --output" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "status restart start stop reload logs cert passwd version completion" -- "$cur"))
    fi
}
complete -F _jrdctl jrdctl
"""

ZSH_COMPLETION = "# zsh completion for jrdctl: eval \"$(jrdctl completion zsh)\"\n" \
    "autoload -U +X bashcompinit && bashcompinit\n" + BASH_COMPLETION.split("\n", 1)[1]


def cmd_completion(client: Client | None, args: argparse.Namespace) -> int:
    sys.stdout.write(BASH_COMPLETION if args.shell == "bash" else ZSH_COMPLETION)
    return control.EXIT_OK


# --- parsing ----------------------------------------------------------------------------------------

EXIT_CODES = """exit codes:
  0  done; for status: every program is running
  1  jrd refused or failed the request (the reason is printed)
  2  wrong command line
  3  status: a program is not running
  4  permission denied on the control socket
  7  jrd is not running"""


def common_options() -> argparse.ArgumentParser:
    # SUPPRESS: given before or after the verb, an option keeps its value.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                   help=f"jrd's config file, to find the socket (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--dev", action="store_true", default=argparse.SUPPRESS,
                   help="talk to the jrd that `jrd run --dev` started in this directory")
    p.add_argument("--socket", type=Path, default=argparse.SUPPRESS, help="the control socket itself")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="jrdctl", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Control a running jrd through its private control socket.",
        epilog="examples:\n  jrdctl status\n  jrdctl restart jupyter\n  jrdctl logs jupyter -f\n\n" + EXIT_CODES)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, func: Callable[..., int], help: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help,
                           epilog="examples:\n" + examples + "\n\n" + EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    add("status", cmd_status, "programs, PIDs, uptime, restarts, URL, certificates, last reload, pending actions",
        "  jrdctl status\n  jrdctl status --json | jq .programs\n  jrdctl status >/dev/null || echo degraded")
    for verb, help, func in (
        ("restart", "restart a program and return only when Jupyter serves through nginx again "
                    "(nginx restarts gracefully, with HUP)", cmd_restart),
        ("start", "start a stopped program and wait until Jupyter serves again", cmd_start),
        ("stop", "stop a program (supervisord stops it gracefully; it stays stopped)", cmd_stop),
    ):
        p = add(verb, func, help, f"  jrdctl {verb} jupyter\n  jrdctl {verb} nginx\n  jrdctl {verb} all")
        p.add_argument("program", nargs="?" if verb == "restart" else None, metavar="PROGRAM",
                       help="jupyter, nginx or all" + (" (default all)" if verb == "restart" else ""))
        if verb == "restart":
            p.add_argument("-y", "--yes", action="store_true",
                           help="do not ask for confirmation when kernels are running")
        if verb != "stop":
            p.add_argument("--timeout", type=float, default=120.0,
                           help="seconds to wait for Jupyter to serve again (default 120)")
    add("reload", cmd_reload, "re-read the config and apply it; refused configs leave the running one in place",
        "  jrdctl reload\n  jrdctl reload || echo 'config refused, see above'")
    p = add("logs", cmd_logs, "show a program's log", "  jrdctl logs jupyter\n  jrdctl logs nginx -n 200\n"
            "  jrdctl logs jupyter -f")
    p.add_argument("program", metavar="PROGRAM", help="jupyter or nginx")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended (Ctrl-C stops)")
    p.add_argument("-n", "--lines", type=int, default=50, help="how many of the last lines to show (default 50)")
    p = add("cert", cmd_cert, "inspect and renew the TLS certificate, export the local CA",
            "  jrdctl cert show\n  jrdctl cert renew --force\n  jrdctl cert ca -o ~/jrd-ca")
    cert = p.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    cert.add_parser("show", parents=[common], help="subject, SANs, issuer, validity and SHA-256 of leaf and CA",
                    description="subject, SANs, issuer, validity, days left and SHA-256 of the leaf and the CA",
                    epilog="example:\n  jrdctl cert show --json", formatter_class=argparse.RawDescriptionHelpFormatter)
    renew = cert.add_parser("renew", parents=[common], help="renew the leaf now if due (or with --force)",
                            description="renew the leaf certificate through the scheduled-renewal path",
                            epilog="example:\n  jrdctl cert renew --force",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    renew.add_argument("--force", action="store_true", help="renew even if not due")
    ca = cert.add_parser("ca", parents=[common], help="write the CA as PEM and as an iOS/iPadOS .mobileconfig",
                         description="write the CA as PEM and as an iOS/iPadOS .mobileconfig (like `jrd ca export`)",
                         epilog="example:\n  jrdctl cert ca -o ~/jrd-ca", formatter_class=argparse.RawDescriptionHelpFormatter)
    ca.add_argument("-o", "--output", default=".", help="directory to write into (default: current)")
    p = add("passwd", cmd_passwd, "change the login password; Jupyter applies it under its restart policy",
            "  jrdctl passwd\n  echo 'long passphrase' | jrdctl passwd --stdin")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    add("version", cmd_version, "versions of jrdctl and of the running jrd", "  jrdctl version --json")
    p = add("completion", cmd_completion, "print a bash or zsh completion script",
            "  eval \"$(jrdctl completion bash)\"   # in ~/.bashrc\n  eval \"$(jrdctl completion zsh)\"    # in ~/.zshrc")
    p.add_argument("shell", choices=("bash", "zsh"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        if args.func in (cmd_version, cmd_completion):
            client: Client | None = None
            if args.func is cmd_version:
                try:
                    client = Client(args)
                except JrdError:
                    client = None
            return args.func(client, args)
        return args.func(Client(args), args)
    except JrdError as exc:
        if args.json:
            emit_json({"ok": False, "error": str(exc), "exit_code": exc.exit_code})
        print(f"jrdctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0 if getattr(args, "follow", False) else 130
    except BrokenPipeError:
        return control.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

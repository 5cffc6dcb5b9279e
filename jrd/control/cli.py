"""`jrdctl`: control a running jrd through its private control socket.

Its verbs for control commands, their arguments and the shell completion
come from the command table (jrd.control.commands); this module adds how
each result is printed, the verbs that need no daemon (`cert show`,
`cert ca`, `version`, `completion`), and exit codes from
jrd.control.protocol.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from jrd import __version__, states
from jrd.config import DEFAULT_CONFIG_PATH, Config
from jrd.control import client as control_client
from jrd.control.commands import COMMANDS, Arg, CommandSpec
from jrd.control.protocol import EXIT_FAILED, EXIT_NOT_ALL_RUNNING, EXIT_OK, exit_codes_help
from jrd.errors import ControlError, JrdError, UsageError
from jrd.layout import Layout

FOLLOW_INTERVAL = 0.5


class Client:
    """The control socket of one jrd, found from the command line."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._config: Config | None = None
        self.socket = control_client.find_socket(getattr(args, "socket", None), getattr(args, "config", None),
                                                 getattr(args, "dev", False))

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = control_client.config_for_client(getattr(self.args, "config", None),
                                                            getattr(self.args, "dev", False))
        return self._config

    def call(self, command: str, **args: Any) -> Any:
        return control_client.request(self.socket, command, args)


# --- output helpers ------------------------------------------------------------------------------


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


def span(seconds: float) -> str:
    """A rounded span for a sentence: 40 s, 2 min, 3 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def when(epoch: float | None, now: float) -> str:
    if not epoch:
        return "never"
    stamp = dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({duration(max(0.0, now - epoch))} ago)"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


# --- status --------------------------------------------------------------------------------------


def serving_ok(status: Mapping[str, Any]) -> bool:
    """False only when the daemon says Jupyter does not serve through nginx."""
    serving = status.get("serving")
    return not isinstance(serving, dict) or bool(serving.get("ok"))


def status_exit_code(status: Mapping[str, Any]) -> int:
    """0 when supervisord answers, every program is RUNNING and Jupyter serves through nginx; else 3."""
    programs = status.get("programs") or {}
    if not status.get("supervisor", True) or "error" in programs or not serving_ok(status):
        return EXIT_NOT_ALL_RUNNING
    for name in states.PROGRAMS:
        if (programs.get(name) or {}).get("state") != states.RUNNING:
            return EXIT_NOT_ALL_RUNNING
    return EXIT_OK


def status_headline(st: Mapping[str, Any]) -> str:
    head = f"jrd {st.get('version', '?')} (pid {st.get('pid', '?')})"
    if serving_ok(st):
        return f"{head} serving {st.get('url', '?')}"
    return f"{head} NOT serving {st.get('url', '?')}: {st['serving'].get('error') or 'no answer'}"


def crash_loop_line(name: str, loop: Mapping[str, Any]) -> str:
    """One sentence on a program that keeps crashing: how often, when the next try is, the last error."""
    text = f"{name}: crash loop, {loop.get('restarts', '?')} restarts in {span(loop.get('window_seconds') or 0)}"
    if loop.get("next_try_in") is not None:
        text += f", next try in {span(loop['next_try_in'])}"
    if loop.get("last_error"):
        text += f", last error: {loop['last_error']}"
    return text


def format_status(st: Mapping[str, Any], now: float) -> str:
    """The `jrdctl status` table: serving, programs, certificates, last reload, pending actions."""
    lines = [status_headline(st), ""]
    programs = st.get("programs") or {}
    if "error" in programs:
        lines.append(f"supervisord is not answering: {programs['error']}")
    else:
        rows = [["PROGRAM", "STATE", "PID", "UPTIME", "RESTARTS"]]
        loops = []
        for name, p in programs.items():
            state = str(p.get("state", "?"))
            if p.get("crash_loop"):
                state = "crash loop"
                loops.append(crash_loop_line(name, p["crash_loop"]))
            rows.append([name, state, str(p.get("pid") or "-"),
                         duration(p.get("uptime_seconds")) if p.get("state") == states.RUNNING else "-",
                         str(p.get("restarts", 0))])
        lines.append(table(rows))
        lines += loops
    lines.append("")
    facts: list[list[str]] = []
    for role, c in (st.get("certificates") or {}).items():
        if not isinstance(c, dict):
            continue
        if role == "acme":
            facts.append(["ACME", acme_line(c)])
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
    if st.get("idle"):
        facts.append(["idle stop", idle_line(st["idle"], now)])
    lines.append(table(facts))
    return "\n".join(lines)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    st = client.call("status")
    if args.json:
        emit_json(st)
    else:
        print(format_status(st, time.time()))
    return status_exit_code(st)


# --- restart, start, stop ------------------------------------------------------------------------


def request_args(spec: CommandSpec, args: argparse.Namespace) -> dict[str, Any]:
    """A command's socket arguments from jrdctl's command line, as the table declares them."""
    out = {a.name: getattr(args, a.name) for a in spec.accepted if on_command_line(a) and hasattr(args, a.name)}
    if spec.waits_serving:
        out["wait"] = True
    return out


def confirm_kernels(client: Client, ask: Callable[[str], str] = input) -> bool:
    """On a terminal, warn that restarting Jupyter stops running kernels; True to go ahead."""
    try:
        kernels = client.call("kernels")
    except ControlError:
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


def cmd_act(client: Client, args: argparse.Namespace) -> int:
    """restart/start/stop one program or all, in one request; print PIDs before and after."""
    spec: CommandSpec = args.spec
    if (spec.name == "restart" and args.program in ("jupyter", "all") and not args.yes
            and sys.stdin.isatty() and sys.stderr.isatty()):
        if not confirm_kernels(client):
            print("Nothing was restarted.", file=sys.stderr)
            return EXIT_FAILED
    result = client.call(spec.name, **request_args(spec, args))
    report = {"verb": spec.name, "programs": result.get("programs") or {},
              **{k: v for k, v in result.items() if k in ("serving", "seconds", "note")}}
    if args.json:
        emit_json(report)
    else:
        print(format_act(report))
    return EXIT_OK


def format_act(report: Mapping[str, Any]) -> str:
    """What restart/start/stop did to each program, and whether Jupyter serves again."""
    verb = report["verb"]
    done = {"restart": "restarted", "start": "started", "stop": "stopped"}[verb]
    lines = []
    for name, p in report["programs"].items():
        if verb == "restart" and name == "nginx" and p.get("pid") == p.get("pid_before"):
            what = f"nginx reloaded gracefully (HUP to master pid {p.get('pid')}; new workers took over)"
        elif verb == "stop":
            what = f"{name} {done} (was pid {p.get('pid_before') or '-'})"
        else:
            what = f"{name} {done}: pid {p.get('pid_before') or '-'} -> {p.get('pid') or '-'}"
        if verb == "restart":
            what += f", restarts {p.get('restarts')}"
        lines.append(what)
    if report.get("serving"):
        lines.append(f"Jupyter answers through nginx again after {report['seconds']:.1f} s")
    elif report.get("note"):
        lines.append(report["note"])
    return "\n".join(lines)


# --- reload, logs, renew, passwd -----------------------------------------------------------------


def cmd_reload(client: Client, args: argparse.Namespace) -> int:
    result = client.call("reload")
    if args.json:
        emit_json(result)
    else:
        actions = result.get("actions") or []
        print("Reload applied: " + ("; ".join(actions) if actions else "nothing changed"))
    return EXIT_OK


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    chunk = client.call("logs", program=args.program, lines=args.lines)

    def show(text: str) -> None:
        if args.json:
            print(json.dumps({"program": args.program, "lines": text.splitlines()}), flush=True)
        elif text:
            sys.stdout.write(text)
            sys.stdout.flush()

    show(chunk["text"])
    offset = chunk["offset"]
    while args.follow:
        time.sleep(FOLLOW_INTERVAL)
        chunk = client.call("logs", program=args.program, offset=offset)
        if chunk["text"]:
            show(chunk["text"])
        offset = chunk["offset"]
    return EXIT_OK


def cmd_renew(client: Client, args: argparse.Namespace) -> int:
    result = client.call("renew_cert", force=args.force)
    if args.json:
        emit_json(result)
        return EXIT_OK
    if result.get("renewed"):
        print(f"Certificate renewed ({result.get('reason', '')}); nginx reloaded gracefully.")
    else:
        print(f"Not renewed: {result.get('reason', '')}. Use --force to renew anyway.")
    acme = result.get("acme")
    if acme and acme.get("ordered"):
        print(f"ACME: ordering a new certificate ({acme.get('reason', '')}); it is installed with a graceful "
              "nginx reload when the CA issues it: see `jrdctl cert show`.")
    elif acme and args.force:
        print(f"ACME: no new certificate ordered: {acme.get('reason', '')}.")
        return EXIT_FAILED
    return EXIT_OK


def cmd_passwd(client: Client, args: argparse.Namespace) -> int:
    from jrd import passwords

    # Hash here, so that the password itself never crosses the socket.
    hashed = passwords.hash_password(passwords.read_new_password(args.stdin, "jrdctl passwd"))
    result = client.call("passwd", hashed=hashed)
    if args.json:
        emit_json(result)
        return EXIT_OK
    jupyter = [a for a in result.get("actions") or [] if a.startswith("jupyter restart")]
    print("Password changed; " + (jupyter[0] if jupyter else "Jupyter already uses it") + ".")
    return EXIT_OK


def cmd_generic(client: Client, args: argparse.Namespace) -> int:
    """A command without its own printer: its result as `key: value` lines (or JSON)."""
    result = client.call(args.spec.name, **request_args(args.spec, args))
    if args.json or not isinstance(result, dict):
        emit_json(result)
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return EXIT_OK


# --- idle stop and holds -------------------------------------------------------------------------


def idle_line(idle: Mapping[str, Any], now: float) -> str:
    """One sentence: idle for how long, when the machine stops, and whether a warning or hold is out."""
    if not idle.get("enabled", True) and "stop_at" not in idle:
        return "off"
    if idle.get("stopping"):
        return "STOPPING the machine now"
    text = f"idle {duration(idle.get('idle_seconds'))}"
    if idle.get("stop_at"):
        stamp = dt.datetime.fromtimestamp(idle["stop_at"]).strftime("%H:%M:%S")
        text += f", stops at {stamp} (in {duration(max(0.0, idle['stop_at'] - now))})"
    if idle.get("warned"):
        text = "WARNING: " + text
    hold = idle.get("hold")
    if hold:
        text += f"; held until {dt.datetime.fromtimestamp(hold['until']).strftime('%Y-%m-%d %H:%M')}"
        text += f" ({hold['reason']})" if hold.get("reason") else ""
    return text


def format_idle(idle: Mapping[str, Any], now: float) -> str:
    """`jrdctl idle`: the verdict, then each signal, its last value and when it last saw activity."""
    if not idle.get("enabled"):
        head = "idle stop: off ([idle] shutdown_after_minutes = 0)"
    else:
        head = (f"idle stop: after {idle.get('shutdown_after_minutes', 0):g} min idle, runs "
                f"{' '.join(idle.get('command') or [])}\n{idle_line(idle, now)}")
    rows = [["SIGNAL", "VALUE", "LAST ACTIVE"]]
    for name, sig in (idle.get("signals") or {}).items():
        value = sig.get("value", "")
        if sig.get("error"):
            value += f" ({sig['error']})"
        rows.append([name, value, when(sig.get("last_active"), now)])
    stops = idle.get("stops") or {}
    tail = f"stops: {stops.get('success', 0)} succeeded, {stops.get('failure', 0)} failed"
    if idle.get("last_error"):
        tail += f"; last error: {idle['last_error']}"
    return "\n".join([head, "", table(rows) if len(rows) > 1 else "no sample yet", "", tail])


def cmd_idle(client: Client, args: argparse.Namespace) -> int:
    idle = client.call("idle")
    if args.json:
        emit_json(idle)
    else:
        print(format_idle(idle, time.time()))
    return EXIT_OK


def cmd_hold(client: Client, args: argparse.Namespace) -> int:
    from jrd.idle import parse_duration

    if args.release:
        result = client.call("hold", release=True)
    else:
        if not args.duration:
            raise UsageError("hold needs a duration such as 3h or 90m, or --release")
        try:
            seconds = parse_duration(args.duration)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        result = client.call("hold", seconds=seconds, reason=args.reason or "")
    if args.json:
        emit_json(result)
    elif args.release:
        print("Hold released." if result.get("released") else "There was no hold.")
    else:
        print(f"Held: {idle_line(result, time.time())}")
    return EXIT_OK


def _duration(p: argparse.ArgumentParser) -> None:
    p.add_argument("duration", nargs="?", help="how long: 3h, 90m, 1h30m, 2d")


# --- certificates, version, completion: no control command of their own --------------------------


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
    if given.get("acme"):
        out["acme"] = given["acme"]
    return out


def acme_line(a: Mapping[str, Any]) -> str:
    """One line on the ACME certificate for `jrdctl status`."""
    if a.get("serving") == "acme" and a.get("certificate"):
        c = a["certificate"]
        line = f"serving the CA's certificate, {c.get('days_left', 0):.1f} days left"
    else:
        line = f"NOT serving the CA's certificate (jrd's own CA instead): {a.get('why_local') or '?'}"
    if a.get("last_error") and a.get("serving") == "acme":
        line += f"; last order failed: {a['last_error']}"
    return line


def format_acme(a: Mapping[str, Any]) -> str:
    def stamp(epoch: float | None) -> str:
        return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if epoch else "-"

    c = a.get("certificate") or {}
    orders = a.get("orders") or {}
    rows = [
        ["serving", "the CA's certificate" if a.get("serving") == "acme"
         else f"jrd's own CA's certificate ({a.get('why_local') or '?'})"],
        ["directory", a.get("directory", "?")],
        ["issuer", c.get("issuer", "-")],
        ["SANs", ", ".join(c.get("sans") or []) or "-"],
        ["profile", a.get("profile") or "the CA's default"],
        ["not after", stamp(c.get("not_after"))],
        ["next order", f"{stamp(a.get('next_order_at'))} ({a.get('next_order_reason') or '?'})"],
        ["orders", f"{orders.get('success', 0)} succeeded, {orders.get('failure', 0)} failed"],
        ["last error", a.get("last_error") or "-"],
    ]
    body = "\n".join("  " + line for line in table(rows).splitlines())
    return "ACME certificate (public names and addresses)\n" + body


def format_certificate(role: str, c: Mapping[str, Any]) -> str:
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


def cmd_cert_show(client: Client, args: argparse.Namespace) -> int:
    details = certificate_details(client)
    if args.json:
        emit_json(details)
    else:
        print("\n\n".join(format_acme(c) if role == "acme" else format_certificate(role, c)
                           for role, c in details.items()))
    return EXIT_OK


def cmd_cert_ca(client: Client, args: argparse.Namespace) -> int:
    """Write the CA as PEM and as an iOS/iPadOS .mobileconfig, as `jrd ca export` does."""
    from jrd.tls import certs, profiles

    config = client.config
    if config.external_tls:
        raise UsageError("this jrd uses an external certificate; there is no local CA to export")
    path = Layout.of(config).ca_cert
    try:
        ca = certs.load_cert(path)
    except JrdError as exc:
        raise JrdError(f"{exc} (reading the CA needs root, or use the copy nginx serves at "
                       "https://HOST:PORT/jrd/ca.pem)") from None
    files = profiles.export_ca(ca, config, args.output)
    if args.json:
        emit_json({**{k: str(v) for k, v in files.items()}, "sha256": certs.fingerprint(ca)})
    else:
        print(f"Wrote {files['pem']} and {files['mobileconfig']}")
        print(f"CA SHA-256 fingerprint: {certs.fingerprint(ca)}")
    return EXIT_OK


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
    return EXIT_OK


def cmd_completion(client: Client | None, args: argparse.Namespace) -> int:
    sys.stdout.write(completion_script(args.shell))
    return EXIT_OK


def completion_script(shell: str, parser: argparse.ArgumentParser | None = None) -> str:
    """A bash (or zsh, through bashcompinit) completion script whose words come from the parser."""
    parser = parser or build_parser()
    verbs = _subcommands(parser)
    after: dict[tuple[str, ...], list[str]] = {}
    for verb, sub in verbs.items():
        words = tuple(_subcommands(sub)) or next(
            (tuple(a.choices) for a in sub._actions if not a.option_strings and a.choices), ())
        if words:
            after.setdefault(words, []).append(verb)
    options: list[str] = []
    files: list[str] = []
    for p in (parser, *verbs.values(), *(s for v in verbs.values() for s in _subcommands(v).values())):
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt not in options:
                    options.append(opt)
                if action.type is Path and opt not in files:
                    files.append(opt)
    cases = "".join(f'        {"|".join(vs)}) COMPREPLY=($(compgen -W "{" ".join(ws)}" -- "$cur")); return;;\n'
                    for ws, vs in after.items())
    body = (
        "_jrdctl() {\n"
        "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n"
        "    case $prev in\n"
        f"{cases}"
        f'        {"|".join(files)}) COMPREPLY=($(compgen -f -- "$cur")); return;;\n'
        "    esac\n"
        "    if [[ $cur == -* ]]; then\n"
        f'        COMPREPLY=($(compgen -W "{" ".join(options)}" -- "$cur"))\n'
        "    else\n"
        f'        COMPREPLY=($(compgen -W "{" ".join(verbs)}" -- "$cur"))\n'
        "    fi\n"
        "}\n"
        "complete -F _jrdctl jrdctl\n"
    )
    if shell == "zsh":
        return ('# zsh completion for jrdctl: eval "$(jrdctl completion zsh)"\n'
                "autoload -U +X bashcompinit && bashcompinit\n" + body)
    return '# bash completion for jrdctl: eval "$(jrdctl completion bash)"\n' + body


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# --- parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Printer:
    """How jrdctl carries out one control command and prints its result, and its own options."""

    run: Callable[[Client, argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], None] = lambda p: None


def _yes(p: argparse.ArgumentParser) -> None:
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation when kernels are running")


def _follow(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended (Ctrl-C stops)")


def _stdin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")


PRINTERS: Mapping[str, Printer] = {
    "status": Printer(cmd_status),
    "restart": Printer(cmd_act, _yes),
    "start": Printer(cmd_act),
    "stop": Printer(cmd_act),
    "reload": Printer(cmd_reload),
    "logs": Printer(cmd_logs, _follow),
    "renew_cert": Printer(cmd_renew),
    "passwd": Printer(cmd_passwd, _stdin),
    "idle": Printer(cmd_idle),
    "hold": Printer(cmd_hold, _duration),
}

# Verbs that group others (`jrdctl cert ACTION`).
GROUPS = {
    "cert": ("inspect and renew the TLS certificate, export the local CA",
             ("jrdctl cert show", "jrdctl cert renew --force", "jrdctl cert ca -o ~/jrd-ca")),
}


def on_command_line(arg: Arg) -> bool:
    return arg.positional or bool(arg.flags)


def add_argument(p: argparse.ArgumentParser, arg: Arg) -> None:
    """One table argument as jrdctl's option or positional, checked by the same rule as the server."""
    if arg.positional:
        p.add_argument(arg.name, nargs=None if arg.required else "?", default=arg.default, type=arg.parse,
                       choices=arg.choices, metavar=arg.name.upper(), help=arg.help)
    elif arg.flags and arg.kind is bool:
        p.add_argument(*arg.flags, dest=arg.name, action="store_true", help=arg.help)
    elif arg.flags:
        p.add_argument(*arg.flags, dest=arg.name, type=arg.parse, default=arg.default, help=arg.help)


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


def build_parser(commands: Mapping[str, CommandSpec] = COMMANDS) -> argparse.ArgumentParser:
    """jrdctl's parser: one verb per command in the table that has one, plus the verbs that need no daemon."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="jrdctl", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Control a running jrd through its private control socket.",
        epilog="examples:\n  jrdctl status\n  jrdctl restart jupyter\n  jrdctl logs jupyter -f\n\n" + exit_codes_help())
    top = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    groups: dict[str, argparse._SubParsersAction] = {}

    def add(verb: str, func: Callable[..., int], help: str, examples: tuple[str, ...]) -> argparse.ArgumentParser:
        *group, word = verb.split()
        sub = top
        if group:
            if group[0] not in groups:
                ghelp, gexamples = GROUPS[group[0]]
                g = _verb_parser(top, group[0], ghelp, gexamples, common)
                groups[group[0]] = g.add_subparsers(dest=f"{group[0]}_command", required=True, metavar="ACTION")
            sub = groups[group[0]]
        p = _verb_parser(sub, word, help, examples, common)
        p.set_defaults(func=func)
        return p

    for spec in commands.values():
        if spec.verb is None:
            continue
        printer = PRINTERS.get(spec.name, Printer(cmd_generic))
        p = add(spec.verb, printer.run, spec.help, spec.examples)
        p.set_defaults(spec=spec)
        for arg in spec.accepted:
            add_argument(p, arg)
        printer.options(p)

    add("cert show", cmd_cert_show, "subject, SANs, issuer, validity, days left and SHA-256 of the leaf and the CA",
        ("jrdctl cert show --json",))
    p = add("cert ca", cmd_cert_ca, "write the CA as PEM and as an iOS/iPadOS .mobileconfig (like `jrd ca export`)",
            ("jrdctl cert ca -o ~/jrd-ca",))
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="directory to write into (default: current)")
    add("version", cmd_version, "versions of jrdctl and of the running jrd", ("jrdctl version --json",))
    p = add("completion", cmd_completion, "print a bash or zsh completion script",
            ('eval "$(jrdctl completion bash)"   # in ~/.bashrc', 'eval "$(jrdctl completion zsh)"    # in ~/.zshrc'))
    p.add_argument("shell", choices=("bash", "zsh"))
    return parser


def _verb_parser(sub: argparse._SubParsersAction, name: str, help: str, examples: tuple[str, ...],
                 common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    epilog = "examples:\n" + "\n".join("  " + e for e in examples) + "\n\n" + exit_codes_help()
    return sub.add_parser(name, parents=[common], help=help, description=help, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        if args.func is cmd_completion:
            return cmd_completion(None, args)
        if args.func is cmd_version:
            try:
                client: Client | None = Client(args)
            except JrdError:
                client = None
            return cmd_version(client, args)
        return args.func(Client(args), args)
    except JrdError as exc:
        if args.json:
            emit_json({"ok": False, "error": str(exc), "exit_code": exc.exit_code})
        print(f"jrdctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0 if getattr(args, "follow", False) else 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

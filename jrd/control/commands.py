"""The control commands, each declared once.

A `CommandSpec` says what a verb accepts, how long the server waits for it,
whether the client may wait for Jupyter to serve again, whether it is
logged, and which `ControlTarget` method carries it out.  The server's
argument checks, its timeouts, the daemon's handlers (`handlers`), jrdctl's
subcommands, their argument choices and the shell completion words are all
derived from `COMMANDS`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from jrd import states
from jrd.errors import UsageError
from jrd.loop import Command

PROGRAM_OR_ALL = (*states.PROGRAMS, "all")

# How long the client may ask the server to wait for Jupyter to serve, by default and at most.
DEFAULT_WAIT = 120.0
MAX_WAIT = 3600.0


class ControlTarget(Protocol):
    """What the daemon offers the control commands; each method runs on the main loop."""

    def status(self) -> dict[str, Any]: ...
    def restart(self, program: str, reason: str) -> dict[str, Any]: ...
    def start(self, program: str) -> dict[str, Any]: ...
    def stop(self, program: str) -> dict[str, Any]: ...
    def reload(self, source: str) -> dict[str, Any]: ...
    def renew_cert(self, force: bool) -> dict[str, Any]: ...
    def passwd(self, hashed: str, source: str) -> dict[str, Any]: ...
    def kernels(self) -> dict[str, Any]: ...
    def logs(self, program: str, offset: int | None, lines: int) -> dict[str, Any]: ...
    def idle(self) -> dict[str, Any]: ...
    def hold(self, seconds: float | None, reason: str, release: bool) -> dict[str, Any]: ...


# --- arguments ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argument of a command: its type and bounds, and how jrdctl takes it.

    `flags` are jrdctl's option strings; a program argument without flags is
    positional; any other argument without flags is not on jrdctl's command
    line (jrdctl computes it).
    """

    name: str
    kind: type = str
    choices: tuple[str, ...] | None = None
    bounds: tuple[float, float] | None = None
    required: bool = False
    default: Any = None
    flags: tuple[str, ...] = ()
    help: str = ""

    def check(self, value: Any) -> Any:
        """`value` if valid, else a UsageError that names the argument and what it may be."""
        if self.choices is not None:
            if value not in self.choices:
                raise UsageError(f"unknown {self.name} {value!r}; valid names are: {', '.join(self.choices)}")
        elif self.kind is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{self.name} must be true or false")
        elif self.bounds is not None:
            lo, hi = self.bounds
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not lo <= value <= hi):
                raise UsageError(f"{self.name} must be a number between {_number(lo)} and {_number(hi)}")
        elif not isinstance(value, self.kind):
            raise UsageError(f"{self.name} must be a {self.kind.__name__}")
        return value

    def parse(self, text: str) -> Any:
        """A command-line word as this argument's value (for argparse's `type=`)."""
        try:
            value = self.kind(text) if self.kind in (int, float) else text
            return self.check(value)
        except (ValueError, UsageError) as exc:
            message = str(exc) if isinstance(exc, UsageError) else f"{self.name} must be a number, not {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    @property
    def positional(self) -> bool:
        return not self.flags and self.choices is not None


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def program(default: str | None = None, choices: tuple[str, ...] = PROGRAM_OR_ALL) -> Arg:
    names = ", ".join(choices[:-1]) + " or " + choices[-1]
    return Arg("program", choices=choices, required=default is None, default=default,
               help=names + (f" (default {default})" if default else ""))


# Accepted by the commands that wait for serving; the server consumes them, the handler never sees them.
WAIT_ARGS = (
    Arg("wait", bool, help="return only when Jupyter serves through nginx again"),
    Arg("timeout", float, bounds=(1, MAX_WAIT), default=DEFAULT_WAIT, flags=("--timeout",),
        help=f"seconds to wait for Jupyter to serve again (default {DEFAULT_WAIT:g})"),
)


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandSpec:
    """One control command, from jrdctl's verb to the daemon method that carries it out.

    `run(target, args)` gets the checked arguments plus `source` (who asked:
    "control", "health", ...).  Internal callers may pass arguments the
    socket refuses, such as restart's `reason`.
    """

    name: str
    run: Callable[[ControlTarget, dict[str, Any]], Any]
    args: tuple[Arg, ...] = ()
    # Seconds the server waits for the main loop, or a function of the checked arguments.
    timeout: float | Callable[[Mapping[str, Any]], float] = 30.0
    waits_serving: bool = False
    logged: bool = True
    # jrdctl's words for it ("cert renew"); None: not a jrdctl verb.
    verb: str | None = None
    help: str = ""
    examples: tuple[str, ...] = ()

    @property
    def accepted(self) -> tuple[Arg, ...]:
        """Every argument a socket request may carry."""
        return self.args + (WAIT_ARGS if self.waits_serving else ())

    def check_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The checked arguments of a request, or UsageError naming the bad or missing one."""
        accepted = {a.name: a for a in self.accepted}
        unknown = sorted(set(args) - set(accepted))
        if unknown:
            raise UsageError(f"{self.name} takes no argument {unknown[0]!r}")
        for arg in accepted.values():
            if arg.required and arg.name not in args:
                raise UsageError(f"{self.name} needs {arg.help or arg.name}")
        return {name: accepted[name].check(value) for name, value in args.items()}

    def server_timeout(self, args: Mapping[str, Any]) -> float:
        return float(self.timeout(args) if callable(self.timeout) else self.timeout)


def _act_timeout(args: Mapping[str, Any]) -> float:
    # supervisord's stopwaitsecs (20 s) plus a start, plus waiting to serve
    return 90.0 + float(args.get("timeout") or DEFAULT_WAIT)


def _table(*specs: CommandSpec) -> Mapping[str, CommandSpec]:
    return {spec.name: spec for spec in specs}


COMMANDS: Mapping[str, CommandSpec] = _table(
    CommandSpec(
        "status", lambda t, a: t.status(), logged=False, verb="status",
        help="programs, PIDs, uptime, restarts, URL, serving, certificates, last reload, pending actions",
        examples=("jrdctl status", "jrdctl status --json | jq .programs", "jrdctl status >/dev/null || echo degraded"),
    ),
    CommandSpec(
        "restart", lambda t, a: t.restart(a.get("program", "all"), a.get("reason", states.REASON_REQUESTED)),
        args=(program(default="all"),), timeout=_act_timeout, waits_serving=True, verb="restart",
        help="restart a program and return only when Jupyter serves through nginx again "
             "(nginx restarts gracefully, with HUP)",
        examples=("jrdctl restart jupyter", "jrdctl restart nginx", "jrdctl restart all"),
    ),
    CommandSpec(
        "start", lambda t, a: t.start(a["program"]),
        args=(program(),), timeout=_act_timeout, waits_serving=True, verb="start",
        help="start a stopped program and wait until Jupyter serves again",
        examples=("jrdctl start jupyter", "jrdctl start nginx", "jrdctl start all"),
    ),
    CommandSpec(
        "stop", lambda t, a: t.stop(a["program"]),
        args=(program(),), timeout=_act_timeout, verb="stop",
        help="stop a program (supervisord stops it gracefully; it stays stopped)",
        examples=("jrdctl stop jupyter", "jrdctl stop nginx", "jrdctl stop all"),
    ),
    CommandSpec(
        "reload", lambda t, a: t.reload(a["source"]), timeout=120.0, verb="reload",
        help="re-read the config and apply it; refused configs leave the running one in place",
        examples=("jrdctl reload", "jrdctl reload || echo 'config refused, see above'"),
    ),
    CommandSpec(
        "logs", lambda t, a: t.logs(a["program"], a.get("offset"), a.get("lines", 50)),
        args=(program(choices=states.PROGRAMS),
              Arg("offset", int, bounds=(0, 2**62), help="continue after this byte offset"),
              Arg("lines", int, bounds=(0, 100000), default=50, flags=("-n", "--lines"),
                  help="how many of the last lines to show (default 50)")),
        logged=False, verb="logs", help="show a program's log",
        examples=("jrdctl logs jupyter", "jrdctl logs nginx -n 200", "jrdctl logs jupyter -f"),
    ),
    CommandSpec(
        "renew_cert", lambda t, a: t.renew_cert(a.get("force", False)),
        args=(Arg("force", bool, default=False, flags=("--force",), help="renew even if not due"),),
        timeout=120.0, verb="cert renew", help="renew the leaf now if due (or with --force)",
        examples=("jrdctl cert renew", "jrdctl cert renew --force"),
    ),
    CommandSpec(
        "passwd", lambda t, a: t.passwd(a["hashed"], a["source"]),
        args=(Arg("hashed", str, required=True, help="a password hash"),),
        timeout=120.0, verb="passwd",
        help="change the login password; Jupyter applies it under its restart policy",
        examples=("jrdctl passwd", "echo 'long passphrase' | jrdctl passwd --stdin"),
    ),
    CommandSpec(
        "idle", lambda t, a: t.idle(), logged=False, verb="idle",
        help="the idle stop: each activity signal and its last value, idle time, when the machine stops, holds",
        examples=("jrdctl idle", "jrdctl idle --json | jq .signals"),
    ),
    CommandSpec(
        "hold", lambda t, a: t.hold(a.get("seconds"), a.get("reason", ""), a.get("release", False)),
        # jrdctl reads the duration ("3h") into seconds.
        args=(Arg("seconds", float, bounds=(1, 366 * 86400), help="how long to hold, in seconds"),
              Arg("reason", str, default="", flags=("--reason",), help="why, shown by jrdctl idle and status"),
              Arg("release", bool, default=False, flags=("--release",), help="end the hold now")),
        verb="hold", help="keep the machine up for a while whatever the idle signals say, or --release",
        examples=("jrdctl hold 3h --reason 'training run'", "jrdctl hold 90m", "jrdctl hold --release"),
    ),
    # Asked by `jrdctl restart` on a terminal before it stops running kernels.
    CommandSpec("kernels", lambda t, a: t.kernels(), logged=False),
)


def command_timeout(name: str, args: Mapping[str, Any], commands: Mapping[str, CommandSpec] = COMMANDS) -> float:
    """How long the server waits for the main loop to finish a command (30 s for one it does not know)."""
    spec = commands.get(name)
    return spec.server_timeout(args) if spec else 30.0


def handlers(target: ControlTarget,
             commands: Mapping[str, CommandSpec] = COMMANDS) -> dict[str, Callable[[Command], Any]]:
    """One command-bus handler per command, each calling `target` on the main loop."""
    return {name: _handler(spec, target) for name, spec in commands.items()}


def _handler(spec: CommandSpec, target: ControlTarget) -> Callable[[Command], Any]:
    def handle(cmd: Command) -> Any:
        return spec.run(target, {**cmd.args, "source": cmd.source})

    handle.__name__ = f"control_{spec.name}"
    return handle


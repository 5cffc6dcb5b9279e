"""The host firewall: is one active, does it let a TCP port in, and the command that opens the port.

Best effort and read-only.  Three kinds are known, asked in this order:
ufw (`ufw status verbose`), firewalld (`firewall-cmd --state`, `--list-ports`)
and plain nftables (`nft -j list ruleset`).  A tool that is not installed
means no firewall of its kind.  The parsers are pure functions of the tools'
output; `detect` runs the tools through a `Run` that tests replace.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, Callable

# A tool's (exit status, output), or None when it is not installed.
Run = Callable[[list[str]], "tuple[int, str] | None"]


def run_tool(argv: list[str], timeout: float = 5.0) -> tuple[int, str] | None:
    """Run a tool with a hard timeout; (status, stdout and stderr), None if it is not installed."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} did not answer within {timeout:.0f} s"
    except OSError as exc:
        return 126, str(exc)
    return proc.returncode, proc.stdout + proc.stderr


@dataclass(frozen=True)
class Firewall:
    """What was found: `kind` is "" when no firewall is active."""

    kind: str
    # Whether TCP `port` gets in from anywhere; None when it cannot be told.
    allows: bool | None
    # What was seen, one phrase ("8888/tcp is not in `firewall-cmd --list-ports`").
    detail: str
    # The command that lets the port in ("" when there is nothing to run).
    open_command: str = ""


NONE = Firewall("", True, "no active firewall (ufw, firewalld or nftables) on this machine")


def detect(port: int, run: Run = run_tool) -> Firewall:
    """The active firewall and whether it lets TCP `port` in."""
    out = run(["ufw", "status", "verbose"])
    if out is not None and out[0] == 0 and ufw_active(out[1]):
        return ufw_verdict(out[1], port)
    out = run(["firewall-cmd", "--state"])
    if out is not None and out[0] == 0 and out[1].strip() == "running":
        ports = run(["firewall-cmd", "--list-ports"])
        return firewalld_verdict(ports[1] if ports is not None and ports[0] == 0 else None, port)
    out = run(["nft", "-j", "list", "ruleset"])
    if out is not None:
        if out[0] != 0:
            return Firewall("nftables", None, f"`nft list ruleset` failed ({out[1].strip()[:120] or out[0]}); "
                            "run this as root to see the rules")
        return nft_verdict(out[1], port)
    return NONE


# --- ufw ---------------------------------------------------------------------------------------


def ufw_active(text: str) -> bool:
    return any(line.strip().lower() == "status: active" for line in text.splitlines())


def _ufw_port_matches(to: str, port: int) -> bool | None:
    """Whether ufw's "To" column covers TCP `port`; None for an application profile (ports unknown)."""
    to = to.replace("(v6)", "").split(" on ")[0].strip()
    if to.startswith("Anywhere"):
        return True
    spec, _, proto = to.partition("/")
    if proto and proto != "tcp":
        return False
    if not spec or not all(part.replace(":", "").isdigit() for part in spec.split(",")):
        return None  # an application profile such as "OpenSSH" or "Nginx Full"
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


def ufw_verdict(text: str, port: int) -> Firewall:
    """ufw is first match: the first rule for the port from anywhere decides, else the incoming default."""
    lines = text.splitlines()
    default = next((line for line in lines if line.startswith("Default:")), "")
    incoming_allowed = "allow (incoming)" in default
    cmd = f"ufw allow {port}/tcp"
    header = next((i for i, line in enumerate(lines) if line.startswith("To") and "Action" in line), None)
    if header is not None:
        act_col, from_col = lines[header].index("Action"), lines[header].index("From")
        for line in lines[header + 2:]:
            if not line.strip():
                continue
            to, action, source = line[:act_col].strip(), line[act_col:from_col].strip(), line[from_col:].strip()
            if _ufw_port_matches(to, port) is not True or not source.startswith("Anywhere"):
                continue
            verb = action.split()[0].upper() if action else ""
            if verb in ("ALLOW", "LIMIT"):
                return Firewall("ufw", True, f"ufw allows {port}/tcp ({to} {action})")
            if verb in ("DENY", "REJECT"):
                return Firewall("ufw", False, f"ufw blocks {port}/tcp (rule: {to} {action})",
                                f"ufw delete {action.split()[0].lower()} {to.split()[0]} && {cmd}")
    if incoming_allowed:
        return Firewall("ufw", True, "ufw is active and allows incoming connections by default")
    return Firewall("ufw", False, f"ufw is active and has no rule that allows {port}/tcp", cmd)


# --- firewalld ---------------------------------------------------------------------------------


def firewalld_verdict(ports_text: str | None, port: int) -> Firewall:
    """firewalld's open ports in the default zone (`firewall-cmd --list-ports`: "8888/tcp 9000-9100/tcp")."""
    cmd = f"firewall-cmd --permanent --add-port={port}/tcp && firewall-cmd --reload"
    if ports_text is None:
        return Firewall("firewalld", None, "firewalld runs but `firewall-cmd --list-ports` failed", cmd)
    for item in ports_text.split():
        spec, _, proto = item.partition("/")
        lo, _, hi = spec.partition("-")
        if proto == "tcp" and lo.isdigit() and int(lo) <= port <= int(hi or lo):
            return Firewall("firewalld", True, f"firewalld allows {port}/tcp ({item})")
    return Firewall("firewalld", False, f"{port}/tcp is not in `firewall-cmd --list-ports` "
                    "(services are not checked)", cmd)


# --- nftables ----------------------------------------------------------------------------------
# A rule applies to a new TCP connection to the port from anywhere when each of its matches
# does: tcp (or any transport) dport covering the port, `meta l4proto tcp`, `ct state` with
# "new", or an input interface other than lo.  Anything else (a source address, established
# connections, udp) makes the rule one that does not decide for everyone, and it is skipped.

_VERDICTS = ("accept", "drop", "reject", "jump", "goto", "return")


def _covers(right: Any, port: int) -> bool | None:
    """Whether an nft match's right-hand side holds `port`; None for a named set (not looked up)."""
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict):
        if "set" in right:
            return any(_covers(item, port) for item in right["set"])
        if "range" in right:
            lo, hi = right["range"]
            return isinstance(lo, int) and isinstance(hi, int) and lo <= port <= hi
    if isinstance(right, list):
        return any(_covers(item, port) for item in right)
    return None


def _match_applies(match: dict[str, Any], port: int) -> bool | None:
    left, right, op = match.get("left", {}), match.get("right"), match.get("op", "==")
    if not isinstance(left, dict):
        return False
    if "payload" in left:
        field = left["payload"].get("field")
        proto = left["payload"].get("protocol")
        if field == "dport" and proto in ("tcp", "th"):
            covered = _covers(right, port)
            if covered is None:
                return None
            return covered if op in ("==", "in") else not covered if op == "!=" else None
        return False  # a source or destination address, a source port, another protocol
    if "meta" in left:
        key = left["meta"].get("key")
        if key == "l4proto":
            values = right.get("set", []) if isinstance(right, dict) else [right]
            return ("tcp" in values or 6 in values) == (op != "!=")
        if key in ("iifname", "iif"):
            values = right.get("set", []) if isinstance(right, dict) else [right]
            return ("lo" in values) == (op == "!=")
        return False
    if "ct" in left and left["ct"].get("key") == "state":
        values = right if isinstance(right, list) else right.get("set", []) if isinstance(right, dict) else [right]
        return ("new" in values) == (op != "!=")
    return False


UNKNOWN = ("unknown", None)


def _rule_decision(expr: list[dict[str, Any]], port: int) -> tuple[str, str | None] | None:
    """(verdict, jump target) when the rule applies to a new connection to the port, None when it does not,
    UNKNOWN when a match cannot be told (a named set)."""
    verdict: tuple[str, str | None] | None = None
    unknown = False
    for item in expr:
        if "match" in item:
            applies = _match_applies(item["match"], port)
            if applies is None:
                unknown = True
            elif not applies:
                return None
        for name in _VERDICTS:
            if name in item:
                target = item[name].get("target") if isinstance(item[name], dict) else None
                verdict = (name, target)
    return UNKNOWN if unknown and verdict is not None else verdict


def _walk(rules: dict[tuple[str, str, str], list], key: tuple[str, str, str], port: int, unsure: list[bool],
          depth: int = 0) -> bool | None:
    """True/False when the chain accepts/drops the connection; None when it returns or falls off its end.

    A rule that may or may not apply sets `unsure` and is passed over.
    """
    if depth > 16:
        unsure.append(True)
        return None
    for expr in rules.get(key, []):
        decision = _rule_decision(expr, port)
        if decision is None:
            continue
        if decision == UNKNOWN:
            unsure.append(True)
            continue
        verdict, target = decision
        if verdict == "accept":
            return True
        if verdict in ("drop", "reject"):
            return False
        if verdict == "return":
            return None
        if target is not None:
            inner = _walk(rules, (key[0], key[1], target), port, unsure, depth + 1)
            if inner is not None or verdict == "goto":
                return inner
    return None


def _input_verdict(chain: dict[str, Any], rules: dict[tuple[str, str, str], list], port: int) -> bool | None:
    """A base chain's answer for the port (its rules', else its policy); None when a rule could not be told."""
    unsure: list[bool] = []
    decided = _walk(rules, (chain["family"], chain["table"], chain["name"]), port, unsure)
    if decided is None:
        decided = chain.get("policy", "accept") == "accept"
    return None if unsure and not decided else decided


def nft_verdict(text: str, port: int) -> Firewall:
    """Walk every input-hook chain of `nft -j list ruleset`; the port gets in if each lets it in."""
    try:
        items = json.loads(text or '{"nftables": []}').get("nftables", [])
    except (ValueError, AttributeError):
        return Firewall("nftables", None, "`nft -j list ruleset` gave output that is not JSON")
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list] = {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r.get("expr", []))
    inputs = [key for key, c in chains.items() if c.get("hook") == "input" and c.get("family") in ("ip", "ip6", "inet")]
    verdicts = {key: _input_verdict(chains[key], rules, port) for key in inputs}
    blocking = [key for key, v in verdicts.items() if v is False]
    if all(v is True for v in verdicts.values()) and not any(chains[k].get("policy") == "drop" for k in inputs):
        return NONE  # no input chain, or none that drops anything new
    if blocking:
        family, table, chain = blocking[0]
        return Firewall("nftables", False, f"nftables drops {port}/tcp (chain {family} {table} {chain})",
                        f"nft insert rule {family} {table} {chain} tcp dport {port} accept "
                        "(and add the rule to /etc/nftables.conf to keep it)")
    if any(v is None for v in verdicts.values()):
        return Firewall("nftables", None, f"nftables is active; whether it lets {port}/tcp in could not be told")
    return Firewall("nftables", True, f"nftables accepts {port}/tcp")

"""Run before a program starts, in its place: clear what its previous instance left, then exec it.

    python -m jrd.prestart --group-of PIDFILE --comm NAME --socket PATH ... -- PROGRAM ARGS...

supervisord starts this instead of nginx.  It ends the process group of the
previous master (named by its pid file), whose workers may still hold the
port after the master was killed, removes unix sockets that nobody listens
on and the stale pid file, then replaces itself with the program (the same
pid, so supervisord's view is unchanged).  Standard library only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jrd import leftovers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jrd.prestart")
    parser.add_argument("--group-of", type=Path, help="pid file of the previous instance (its process group leader)")
    parser.add_argument("--comm", default=None, help="only end group members with this process name")
    parser.add_argument("--socket", type=Path, action="append", default=[], help="a unix socket to clear if stale")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no program to run after --")
    if args.group_of is not None:
        old = leftovers.read_pid(args.group_of)
        if old is not None and old != os.getpid():
            left = [p for p in leftovers.in_group(old, args.comm) if p != os.getpid()]
            if left:
                sys.stderr.write(f"jrd: ending {len(left)} process(es) left by the previous {args.comm or 'instance'} "
                                 f"(group {old}): {' '.join(map(str, left))}\n")
                leftovers.terminate(left, grace=0.0, first=9)
        args.group_of.unlink(missing_ok=True)
    for path in args.socket:
        if leftovers.remove_stale_socket(path):
            sys.stderr.write(f"jrd: removed the stale socket {path}\n")
    sys.stderr.flush()
    os.execv(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())

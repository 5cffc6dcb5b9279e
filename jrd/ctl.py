"""`jrdctl`: control a running jrd through its private control socket."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("jrdctl: not implemented yet", file=sys.stderr)
    return 1

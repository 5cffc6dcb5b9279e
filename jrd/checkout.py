"""Where `make run` keeps its files: in the checkout, or outside it when other accounts cannot enter it.

As root, Jupyter runs as the `jupyter` account and nginx's workers as
www-data.  They must reach the notebooks, the virtualenv Jupyter runs from,
Jupyter's config in the runtime dir, and the files nginx serves.  A checkout
that other accounts cannot enter (root's 0700 home is the usual one) cannot
hold those, and jrd does not loosen a directory's mode behind the owner's
back: they go to /var/lib/jrd-dev/NAME (the notebooks to the Jupyter account's
home) instead.

Standard library only: the Makefile runs this module with the system Python
(`python3 -m jrd.checkout venv`) before any virtualenv exists.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

DEV_HOMES = Path("/var/lib/jrd-dev")
DEV_JUPYTER_USER = "jupyter"


def closed_dir(path: Path) -> Path | None:
    """The first directory on the way to `path` (itself included) that other accounts may not enter."""
    for d in (*reversed(path.parents), path):
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except FileNotFoundError:
            return None  # what does not exist yet is made open (umask 022)
    return None


def account_home(name: str) -> Path:
    try:
        return Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        return Path("/home") / name  # `make run` creates the account just before jrd starts


@dataclass(frozen=True)
class DevPlaces:
    """Where `make run` keeps things for the checkout `project_dir`."""

    project_dir: Path
    home: Path  # jrd's state, runtime, log and cache dirs, side by side
    venv: Path
    notebooks: Path
    closed_by: Path | None = None  # the directory that sent them out of the checkout

    def explain(self) -> str:
        """What `make run` says when they are outside the checkout; "" when they are in it."""
        if self.closed_by is None:
            return ""
        mode = stat.S_IMODE(os.stat(self.closed_by).st_mode)
        return (f"Other accounts cannot enter {self.project_dir} ({self.closed_by} is mode {mode:04o}), but Jupyter "
                f"runs as '{DEV_JUPYTER_USER}' and nginx's workers as another account: jrd keeps its virtualenv, "
                f"state, logs and runtime files in {self.home} and the notebooks in {self.notebooks} instead, and "
                f"leaves the mode of {self.closed_by} alone. `make clean` removes {self.home}.")


def dev_home(project_dir: Path) -> Path:
    """/var/lib/jrd-dev/NAME-HASH: one per checkout, named after it."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", project_dir.name).strip("-.") or "checkout"
    digest = hashlib.sha256(os.fsencode(project_dir)).hexdigest()[:8]
    return DEV_HOMES / f"{name}-{digest}"


def dev_places(project_dir: Path, as_root: bool, jupyter_home: Path | None = None) -> DevPlaces:
    """In the checkout, unless jrd runs as root and other accounts cannot enter the checkout."""
    project_dir = project_dir.resolve()
    closed = closed_dir(project_dir) if as_root else None
    if closed is None:
        return DevPlaces(project_dir, project_dir / ".jrd", project_dir / ".venv", project_dir / "notebooks")
    home = dev_home(project_dir)
    notebooks = (jupyter_home or account_home(DEV_JUPYTER_USER)) / "notebooks"
    return DevPlaces(project_dir, home, home / "venv", notebooks, closed)


def main(argv: list[str]) -> int:
    """`venv`, `home` or `explain`, for the checkout in the current directory (the Makefile's questions)."""
    cwd = Path.cwd().resolve()
    places = dev_places(cwd, os.geteuid() == 0)

    def shown(path: Path) -> str:
        # Inside the checkout, relative: the Makefile's own `.venv`, and no blanks of the checkout's path.
        return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)

    answers = {"venv": shown(places.venv), "home": shown(places.home), "explain": places.explain()}
    if len(argv) != 1 or argv[0] not in answers:
        print(f"usage: python3 -m jrd.checkout {'|'.join(answers)}", file=sys.stderr)
        return 2
    if answers[argv[0]]:
        print(answers[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

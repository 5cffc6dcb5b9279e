"""Atomic, write-if-changed file writes.

Every file jrd derives (configs, certificates, password hashes) goes through
`atomic_write`: a temp file in the same directory, fsync, `os.replace`, then
an fsync of the directory, so that a reader sees either the old file or the
new one and never half of either.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from jrd.errors import JrdError


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> Path:
    """Write `data` to a synced temp file beside `path`; the caller replaces."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write(
    path: Path,
    data: str | bytes,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> bool:
    """Atomically make `path` hold `data` with `mode`; return True if anything changed."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        st = path.stat()
        same_owner = owner is None or (st.st_uid, st.st_gid) == owner
        if same_owner and (st.st_mode & 0o7777) == mode and path.read_bytes() == raw:
            return False
    except FileNotFoundError:
        pass
    tmp = write_temp(path, raw, mode, owner)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return True


def ensure_dir(path: Path, mode: int, owner: tuple[int, int] | None = None, force: bool = True) -> Path:
    """Create `path` with `mode` (and owner) if missing; with `force`, also fix an existing one.

    Never follows a symlink at `path`: a directory that another account can
    write to (the Jupyter account's) must not steer root's chmod or chown
    elsewhere.  Without `force`, an existing directory is left as it is, so
    that pointing [paths] at a shared directory never changes its mode.
    """
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, mode)
        created = True
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise JrdError(f"{path} is a symlink or not a directory; jrd will not follow it there: "
                           "remove it and try again") from None
        raise
    try:
        if created or force:
            os.fchmod(fd, mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
    finally:
        os.close(fd)
    return path

"""The TLS files a build hands to nginx, and the snapshot that undoes a refused change.

`ensure_tls` is what the daemon's build, `jrd init` and `jrd check` call:
for jrd's own CA it makes sure a CA and a current leaf exist (issuing one
through `certs.issue_leaf` when `certs.leaf_state` says it is due); for an
external pair it only checks that the pair loads and matches.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jrd.fsutil import atomic_write
from jrd.tls import certs

if TYPE_CHECKING:
    from jrd.config import Config
    from jrd.layout import Layout


@dataclass(frozen=True)
class TlsFiles:
    """The pair nginx is configured with, and jrd's CA certificate (None for an external pair)."""

    cert: Path
    key: Path
    ca_pem: bytes | None


def ensure_tls(config: "Config", layout: "Layout", now: dt.datetime) -> tuple[TlsFiles, str | None]:
    """The TLS files for `config`, and why a leaf was issued (None if none was).

    Own CA: the CA is created if neither of its files exists, and a leaf is
    issued if `certs.leaf_state` finds it due.  External: the pair is loaded
    and checked to match (a CertError says what is wrong); nothing is written.
    """
    if config.external_tls:
        assert config.tls.cert_file and config.tls.key_file
        certs.load_pair(config.tls.cert_file, config.tls.key_file)
        return TlsFiles(config.tls.cert_file, config.tls.key_file, None), None
    state = certs.leaf_state(config, layout, now)
    reason = None
    if state.decision.due:
        certs.issue_leaf(state.ca, state.ca_key, state.policy, layout.leaf_cert, layout.leaf_key, now)
        reason = state.decision.reason
    return TlsFiles(layout.leaf_cert, layout.leaf_key, certs.pem(state.ca)), reason


def pair_signature(config: "Config", layout: "Layout") -> tuple[tuple[int, int, int], ...] | None:
    """jrd's own leaf pair as it is on disk, cheaply (stat only); None for an external pair.

    A change that jrd did not make (a deletion, a corruption) shows as a new signature.
    """
    if config.external_tls:
        return None
    try:
        stats = [os.stat(path) for path in (layout.leaf_cert, layout.leaf_key)]
    except OSError:
        return ()
    return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stats)


@dataclass(frozen=True)
class PairSnapshot:
    """The bytes and stat of jrd's leaf pair, to put back if a change to it is refused.

    Taken before a build or renewal that may issue a new leaf; `restore`
    then brings back each file's bytes, mode, owner (when root) and times.
    A file that did not exist when the snapshot was taken is left as it is.
    For an external pair the snapshot is empty: jrd never writes those files.
    """

    files: tuple[tuple[Path, bytes, os.stat_result], ...]

    @classmethod
    def take(cls, config: "Config", layout: "Layout") -> "PairSnapshot":
        if config.external_tls:
            return cls(())
        files = []
        # The key first: restored in this order, as write_pair writes them.
        for path in (layout.leaf_key, layout.leaf_cert):
            try:
                files.append((path, path.read_bytes(), path.stat()))
            except FileNotFoundError:
                pass
        return cls(tuple(files))

    def restore(self) -> list[Path]:
        """Put back every file that changed since the snapshot; the paths put back."""
        restored = []
        for path, data, st in self.files:
            owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
            if atomic_write(path, data, st.st_mode & 0o7777, owner):
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
                restored.append(path)
        return restored

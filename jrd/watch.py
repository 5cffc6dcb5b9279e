"""Watch the files jrd reads and turn a settled change into one reload command.

Editors and tools save files in many ways: an atomic rename (vim, VS Code,
`sed -i`), truncate-and-write, delete-and-recreate, or a symlink flip
(a Kubernetes ConfigMap's `..data`, certbot's `live/` links).  Watching the
file itself misses most of them, so jrd watches the parent directory of
every link on the way from each watched path to the file it resolves to,
and matches events against those paths.  A burst of events is debounced
(`Debouncer`, pure and driven by an injected clock); when it settles, the
watcher compares each file's content with what it saw last and, if any
changed, submits one `reload` through the daemon's command queue.  A file
that disappears is logged, not reloaded: the running config stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    FileClosedNoWriteEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from jrd.config import Config
from jrd.extension import Context, Extension
from jrd.layout import Layout


log = logging.getLogger("jrd")

# A burst is over when nothing happened for QUIET seconds.  A file that was
# written but not yet closed may still be half-written, and one that was just
# deleted is usually about to be recreated: then wait up to WRITE_GRACE for the
# close or the new file.  However busy the directory, act at least every MAX_DELAY.
QUIET = 0.03
WRITE_GRACE = 1.0
MAX_DELAY = 2.0
MAX_SYMLINK_HOPS = 40


# --- pure: when to act ----------------------------------------------------------
class Debouncer:
    """Collapse a burst of events into one action once it settles.

    `note(now, settled)` records an event; `settled=False` means more is
    expected soon (a file written and not closed yet, or just deleted).  `due(now)` is true once,
    when the burst is over.
    """

    def __init__(self, quiet: float = QUIET, write_grace: float = WRITE_GRACE, max_delay: float = MAX_DELAY):
        self.quiet, self.write_grace, self.max_delay = quiet, write_grace, max_delay
        self._first: float | None = None
        self._last = 0.0
        self._settled = True

    def note(self, now: float, settled: bool = True) -> None:
        if self._first is None:
            self._first = now
        self._last = now
        self._settled = settled

    def deadline(self) -> float | None:
        """When the current burst is due, or None if there is none."""
        if self._first is None:
            return None
        wait = self.quiet if self._settled else self.write_grace
        return min(self._last + wait, self._first + self.max_delay)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return False
        self._first = None
        return True


# --- pure-ish: which paths matter -------------------------------------------------
def resolution_chain(path: Path) -> list[Path]:
    """Every place whose change can change what `path` resolves to.

    That is each symlink met on the way (at its physical location) and the
    final file; a missing part ends the walk, and is itself in the chain.
    """
    path = Path(os.path.abspath(path))
    chain: list[Path] = []
    todo = list(path.parts[1:])
    current = Path("/")
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        try:
            target = os.readlink(candidate)
        except OSError:  # not a link, or missing
            current = candidate
            continue
        chain.append(candidate)
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            break
        target_path = Path(target)
        if target_path.is_absolute():
            current = Path("/")
        todo = [p for p in target_path.parts if p != "/"] + todo
    chain.append(current)
    return chain


def watch_dirs(chains: Iterable[list[Path]]) -> set[Path]:
    """The directories to watch: each chain member's parent, or its nearest existing ancestor."""
    dirs = set()
    for chain in chains:
        for p in chain:
            parent = p.parent
            while not parent.is_dir() and parent != parent.parent:
                parent = parent.parent
            dirs.add(parent)
    return dirs


def relevant(event_paths: Iterable[str], chains: Iterable[list[Path]]) -> bool:
    """True if an event on `event_paths` can change a watched file: it names a chain member or an ancestor of one."""
    members = [p for chain in chains for p in chain]
    for raw in event_paths:
        if not raw:
            continue
        path = Path(os.fsdecode(raw))
        for member in members:
            if path == member or path in member.parents:
                return True
    return False


def content_digest(path: Path) -> str | None:
    """A digest of the file's content (through its symlinks), or None if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def watched_files(config: Config) -> list[Path]:
    """The files whose change means a reload: the config, the password hash, an external certificate,
    the gateway's token."""
    files = []
    if config.source is not None:
        files.append(Path(os.path.abspath(config.source)))
    files.append(Layout.of(config).password_file)
    gateway_token = config.gateway.auth_token_file if config.gateway.enabled else None
    for path in (config.tls.cert_file, config.tls.key_file, gateway_token):
        if path is not None:
            files.append(Path(os.path.abspath(path)))
    return files


@dataclass
class _Target:
    path: Path
    chain: list[Path]
    digest: str | None


# --- the watcher ---------------------------------------------------------------------
class ConfigWatcher(FileSystemEventHandler, Extension):
    """Watches `watched_files` and submits `reload` when one changed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, debouncer: Debouncer | None = None,
                 observer_factory: Callable[[], Any] = Observer):
        self._clock = clock
        self._debouncer = debouncer or Debouncer()
        self._observer_factory = observer_factory
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._targets: dict[Path, _Target] = {}
        self._watches: dict[Path, Any] = {}
        self._config: Config | None = None
        self._retarget = False
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._ctx: Context | None = None

    # extension hooks
    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        self._config = ctx.config
        # watchdog logs every inotify event at debug level; with jrd at debug and its
        # output in a watched directory, that would feed on itself.
        logging.getLogger("watchdog").setLevel(logging.INFO)
        self._observer = self._observer_factory()
        self._observer.start()
        self._update_targets()
        self._thread = threading.Thread(target=self._run, name="jrd-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)

    def config_changed(self, old: Config, new: Config) -> None:
        """Called by the daemon after a reload applied: the set of watched files may differ now."""
        with self._lock:
            self._config = new
            self._retarget = True
        self._wake.set()

    @property
    def watched(self) -> list[Path]:
        with self._lock:
            return sorted(self._watches)

    # events, on the observer's thread
    def on_any_event(self, event: FileSystemEvent) -> None:
        # Opens, reads and a directory's own metadata (jrd itself chmods the state
        # dir on every build) cannot change a watched file's content.
        if isinstance(event, (FileOpenedEvent, FileClosedNoWriteEvent, DirModifiedEvent, DirAttribEvent)):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        with self._lock:
            if not relevant(paths, [t.chain for t in self._targets.values()]):
                return
            # A write not yet closed may be half a file, and a deletion is often the first half
            # of a delete-and-recreate; so is a directory just made, whose file is written next,
            # inside a directory not watched yet.  A close, a new symlink or a rename is whole at once.
            settled = not isinstance(event, (FileModifiedEvent, FileDeletedEvent, DirDeletedEvent, DirCreatedEvent))
            self._debouncer.note(self._clock(), settled)
        log.debug("watch: %s %s", event.event_type, " -> ".join(os.fsdecode(p) for p in paths if p))
        self._wake.set()

    # the watcher's own thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                deadline = self._debouncer.deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._step()
            except Exception:  # never let the watcher thread die; the daemon keeps its config
                log.exception("the file watcher hit an unexpected error; it keeps watching")

    def _step(self) -> None:
        with self._lock:
            retarget, self._retarget = self._retarget, False
            due = self._debouncer.due(self._clock())
        if retarget or due:
            # After a burst, links may have moved: follow them before reading.
            self._update_targets()
        if not due:
            return
        with self._lock:
            changed = self._settle()
        if changed and self._ctx is not None:
            self._ctx.submit("reload", "file:" + ", ".join(str(p) for p in changed))

    def _settle(self) -> list[Path]:
        """After a burst: which files now hold new content (under the lock)."""
        changed = []
        for path, target in self._targets.items():
            digest = content_digest(path)
            if digest == target.digest:
                continue
            target.digest = digest
            if digest is None:
                log.error("%s disappeared or cannot be read; the running config stays in force until it is back", path)
            else:
                changed.append(path)
        return changed

    def _update_targets(self) -> None:
        """Recompute chains for the current config and watch exactly the directories they need.

        A file already watched keeps the digest last acted on, so a change made
        meanwhile is still seen; a newly watched one starts from its content now.
        """
        with self._lock:
            old = self._targets
        planned = None
        # A directory made or removed between planning and the watch taking hold would go
        # unseen, so plan again after watching until the plan holds still.
        for _ in range(10):
            with self._lock:
                assert self._config is not None
                self._targets = {}
                for path in watched_files(self._config):
                    digest = old[path].digest if path in old else None
                    self._targets[path] = _Target(path, resolution_chain(path), digest)
                dirs = watch_dirs(t.chain for t in self._targets.values())
            plan = {d: _inode(d) for d in dirs}
            if plan == planned:
                break
            planned = plan
            # Never call the observer while holding our lock: its dispatch thread holds
            # the observer's lock while it calls on_any_event, which takes ours.
            self._reschedule(dirs)
        with self._lock:
            # Digest after watching: any change from here on raises an event.
            for path, target in self._targets.items():
                if path not in old:
                    target.digest = content_digest(path)

    def _reschedule(self, dirs: set[Path]) -> None:
        """Watch exactly `dirs`; a directory that was replaced (a new inode) gets a new watch."""
        wanted = {d: _inode(d) for d in dirs}
        with self._lock:
            current = dict(self._watches)
        for path, (watch, inode) in current.items():
            if wanted.get(path) != inode:
                with self._lock:
                    del self._watches[path]
                try:
                    self._observer.unschedule(watch)
                except (KeyError, OSError):
                    pass  # its directory was deleted, and the watch with it
        for path, inode in wanted.items():
            if path in self._watches or inode is None:
                continue
            try:
                watch = self._observer.schedule(self, str(path), recursive=False)
                with self._lock:
                    self._watches[path] = (watch, inode)
            except OSError as exc:
                log.error("cannot watch %s (%s); changes there need `jrdctl reload`", path, exc.strerror or exc)


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino

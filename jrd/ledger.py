"""jrd's own counters: written by the main loop, read by everyone else as snapshots.

The threading contract in one place: only the main loop calls the
`count_*`/`record_*` methods; the metrics thread and the control threads
read `snapshot()`, a frozen copy, and never the live state.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Mapping


@dataclass(frozen=True)
class ProbeOutcome:
    """One probe of one program (jrd.health probes; the ledger keeps the last of each)."""

    program: str
    ok: bool
    latency: float
    error: str = ""
    at: float = 0.0  # wall-clock time of the probe


@dataclass(frozen=True)
class ReloadRecord:
    ok: bool | None = None
    at: float | None = None
    last_success_at: float | None = None
    error: str = ""
    successes: int = 0
    failures: int = 0


@dataclass(frozen=True)
class Serving:
    """Whether Jupyter answered through nginx, the way a browser reaches it, and when that was asked."""

    ok: bool
    checked_at: float
    error: str = ""


@dataclass(frozen=True)
class Snapshot:
    started_at: float
    restarts: Mapping[tuple[str, str], int]
    reloads: ReloadRecord
    probes: Mapping[str, ProbeOutcome]
    probe_failures: Mapping[str, int]
    serving: Serving | None = None
    # When each program last passed a probe (Unix time).
    last_ok: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def restarts_of(self, program: str) -> int:
        return sum(n for (p, _), n in self.restarts.items() if p == program)


@dataclass
class Ledger:
    wall: Callable[[], float] = time.time
    started_at: float = field(default=0.0)
    _restarts: dict[tuple[str, str], int] = field(default_factory=dict)
    _reloads: ReloadRecord = field(default_factory=ReloadRecord)
    _probes: dict[str, ProbeOutcome] = field(default_factory=dict)
    _probe_failures: dict[str, int] = field(default_factory=dict)
    _serving: Serving | None = None
    _last_ok: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.started_at = self.started_at or self.wall()

    def count_restart(self, program: str, reason: str) -> None:
        with self._lock:
            self._restarts[(program, reason)] = self._restarts.get((program, reason), 0) + 1

    def record_reload(self, ok: bool, error: str = "") -> None:
        with self._lock:
            rec, at = self._reloads, self.wall()
            if ok:
                self._reloads = replace(rec, ok=True, at=at, error="", last_success_at=at, successes=rec.successes + 1)
            else:
                self._reloads = replace(rec, ok=False, at=at, error=error, failures=rec.failures + 1)

    def record_probe(self, outcome: ProbeOutcome, failures: int) -> None:
        with self._lock:
            self._probes[outcome.program] = outcome
            self._probe_failures[outcome.program] = failures
            if outcome.ok:
                self._last_ok[outcome.program] = outcome.at

    def record_serving(self, serving: Serving) -> bool:
        """Keep the latest serving check; whether it changed from serving to not, or back."""
        with self._lock:
            changed = self._serving is None or self._serving.ok != serving.ok
            self._serving = serving
            return changed

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                started_at=self.started_at,
                restarts=MappingProxyType(dict(self._restarts)),
                reloads=self._reloads,
                probes=MappingProxyType(dict(self._probes)),
                probe_failures=MappingProxyType(dict(self._probe_failures)),
                serving=self._serving,
                last_ok=MappingProxyType(dict(self._last_ok)),
            )

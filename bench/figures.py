"""What every benchmark returns (a list of `Figure`), and the glue that runs one alone or for the report.

A bench module declares its options (`add_arguments`, with the repetition counts that `make bench` uses
as defaults) and `run(args) -> Result`, and ends with `sys.exit(figures.main(...))`.  Run alone it prints
a table; with `--out DIR` it also writes `DIR/<name>.json`, which `bench/report.py` turns into
docs/benchmarks.md and its charts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
# The benches run jrd the way the integration tests do (tests/conftest.py's `Jrd`), and reuse their helpers.
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))


@dataclass
class Figure:
    """One measured quantity: every sample of it, and what it is compared with."""

    key: str  # stable within its bench, e.g. "edit_to_live"
    label: str  # what a reader sees
    unit: str  # "s", "ms", "MB", "MiB", "%", or "failed" for a count out of `of`
    samples: list[float]
    baseline: str | None = None  # key of the figure measured in the same run that this one is compared with
    goal: str | None = None  # the goal, as a reader should see it ("≤ 300 ms at p95")
    met: bool | None = None  # whether the goal is met, decided by the bench
    judged: str | None = None  # what the goal was judged on, when not the median ("p95 223 ms")
    of: int | None = None  # for a count: out of how many

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quartiles(self) -> tuple[float, float]:
        if self.n < 4:
            return min(self.samples), max(self.samples)
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]

    def percentile(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Result:
    """What one bench run measured, with what a reader needs to judge it."""

    figures: list[Figure]
    notes: list[str] = field(default_factory=list)  # facts of this run (e.g. failure kinds), not general prose
    params: dict[str, Any] = field(default_factory=dict)


def number(value: float) -> str:
    """Three significant digits, without a useless exponent."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def with_unit(value: float, unit: str) -> str:
    return f"{number(value)} {unit}".strip()


def spread(f: Figure) -> str:
    if f.of is not None or f.n == 1:
        return ""
    lo, hi = min(f.samples), max(f.samples)
    text = f"{number(lo)}–{number(hi)}"
    if f.n >= 4:
        q1, q3 = f.quartiles()
        text += f" (IQR {number(q1)}–{number(q3)})"
    return text


def value_text(f: Figure) -> str:
    if f.of is not None:
        return f"{number(f.samples[0])} of {f.of:,}"
    return with_unit(f.median, f.unit)


def ratio(f: Figure, by_key: dict[str, Figure]) -> float | None:
    base = by_key.get(f.baseline or "")
    if base is None or f.of is not None or base.median == 0:
        return None
    return f.median / base.median


def summary(seconds: list[float], key: str, label: str, **kw: Any) -> Figure:
    """A timing figure in seconds."""
    return Figure(key, label, "s", [round(s, 4) for s in seconds], **kw)


def summary_ms(seconds: list[float], key: str, label: str, **kw: Any) -> Figure:
    """A timing figure in milliseconds, from seconds."""
    return Figure(key, label, "ms", [round(s * 1000, 2) for s in seconds], **kw)


def count(failed: int, total: int, key: str, label: str, **kw: Any) -> Figure:
    return Figure(key, label, "failed", [failed], of=total, **kw)


def table(figures: list[Figure]) -> str:
    """The figures as a markdown table: median, spread, n, baseline, ratio, goal."""
    by_key = {f.key: f for f in figures}
    rows = ["| measure | median | spread: min–max (IQR) | n | baseline's median (same run) | ratio | goal |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        base = by_key.get(f.baseline or "")
        r = ratio(f, by_key)
        goal = f.goal or ""
        if goal and f.met is not None:
            goal += (" ✅ met" if f.met else " ❌ not met") + (f" ({f.judged})" if f.judged else "")
        rows.append(f"| {f.label} | {value_text(f)} | {spread(f)} | {f.n} | {value_text(base) if base else ''} | "
                    f"{f'{r:.2f}×' if r is not None else ''} | {goal} |")
    return "\n".join(rows)


def main(name: str, doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[argparse.Namespace], Result], reading: tuple[str, ...] = ()) -> int:
    """Run one bench from the command line: print its table, and with --out write its JSON for the report.

    `doc` (the module's docstring: a title line, then the method) and `reading` (how to read the figures,
    true whatever the numbers) go into the report beside them.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--out", type=Path, help=f"also write DIR/{name}.json (what bench/report.py reads)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    result = run(args)
    record = {
        "bench": name,
        "doc": doc,
        "reading": list(reading),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "params": {k: v for k, v in vars(args).items() if k not in ("out", "json")} | result.params,
        "figures": [asdict(f) for f in result.figures],
        "notes": result.notes,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(record, indent=1, ensure_ascii=False))
    else:
        print(table(result.figures))
        for note in result.notes:
            print(f"- {note}")
        print(f"({record['seconds']} s, load average {record['load_average_1m'][0]} → {record['load_average_1m'][1]})")
    return 0


def load(path: Path) -> tuple[dict[str, Any], list[Figure]]:
    """A bench's JSON record, and its figures."""
    record = json.loads(path.read_text())
    return record, [Figure(**f) for f in record["figures"]]

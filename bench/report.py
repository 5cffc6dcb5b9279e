"""Run every benchmark and write docs/benchmarks.md with its charts (what `make bench` does).

Each bench runs as its own process (`bench/bench_NAME.py --out docs/bench`) and leaves its figures in
docs/bench/NAME.json; this script then writes the markdown, the machine and versions it ran on, and
PNG charts (matplotlib, Agg) into docs/bench/.

Run:  .venv/bin/python bench/report.py                 # every bench, then the report
      .venv/bin/python bench/report.py --only page,memory   # rerun these; keep the others' last results
      .venv/bin/python bench/report.py --no-run        # only write the report again from docs/bench/*.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import ssl
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import figures
from figures import Figure, load, number, table, value_text

DOCS = figures.REPO / "docs"
OUT = DOCS / "bench"
REPORT = DOCS / "benchmarks.md"
# In the report's order: the name of bench/bench_NAME.py and the heading of its section.
BENCHES = {
    "page": "Page weight: JupyterLab on a tablet's connection",
    "memory": "Memory while idle and serving",
    "recovery": "Recovery after a process dies",
    "reload": "Reload on a config change",
    "renewal": "Certificate renewal",
    "ctl": "jrdctl",
    "metrics": "The metrics endpoint",
    "idle": "Idle stop",
    "server_side": "Server-side execution: the document store, and a long cell with no tab open",
}


def run_benches(names: list[str]) -> list[str]:
    """Run each bench as its own process; the names of those that failed."""
    failed = []
    for name in names:
        print(f"== bench/bench_{name}.py", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, str(figures.REPO / "bench" / f"bench_{name}.py"), "--out", str(OUT)])
        print(f"== bench/bench_{name}.py: exit {proc.returncode} after {time.monotonic() - t0:.0f} s", flush=True)
        if proc.returncode != 0:
            failed.append(name)
    return failed


def command_output(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError:
        return "absent"
    return (proc.stdout + proc.stderr).strip().splitlines()[0]


def environment() -> dict[str, str]:
    """The machine and the versions of everything the benches ran."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem_kib = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
    os_name = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(figures.REPO), *args], capture_output=True, text=True).stdout.strip()

    # Changed code, not the report's own files, makes the run differ from the commit.
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "jrd", "bench", "pyproject.toml")
    commit = git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if changed else "")
    import jrd

    chromium = command_output(["chromium", "--version"])
    return {
        "CPU": f"{cpu.group(1) if cpu else platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "RAM": f"{mem_kib / 2**20:.1f} GiB",
        "kernel": f"Linux {platform.release()}",
        "OS": os_name.group(1) if os_name else "?",
        "Python": platform.python_version(),
        "jrd": f"{jrd.__version__} (commit {commit})",
        "supervisord": version("supervisor"),
        "nginx": command_output(["nginx", "-v"]).rpartition("/")[2],
        "JupyterLab": version("jupyterlab"),
        "jupyter_server": version("jupyter_server"),
        "Chromium": " ".join(chromium.split()[:2]) + " (Debian's, driven by Playwright " + version("playwright") + ")",
        "OpenSSL": ssl.OPENSSL_VERSION.removeprefix("OpenSSL "),
        "cryptography": version("cryptography"),
    }


# --- charts ---------------------------------------------------------------------------------------


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


JRD_COLOUR, BASE_COLOUR = "#1f77b4", "#999999"


def strip_chart(path: Path, title: str, unit: str, rows: list[Figure], log: bool = False) -> None:
    """Every sample as a dot, the median as a bar, one row per figure; baselines in grey."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.65 * len(rows) + 1.2))
    for y, f in enumerate(reversed(rows)):
        colour = BASE_COLOUR if f.label.startswith("baseline") else JRD_COLOUR
        jitter = [(i % 5 - 2) * 0.06 for i in range(f.n)]
        ax.scatter(f.samples, [y + j for j in jitter], s=14, color=colour, alpha=0.6, linewidths=0)
        ax.plot([f.median, f.median], [y - 0.3, y + 0.3], color=colour, linewidth=2.5)
        ax.annotate(f"{number(f.median)} {unit}", (f.median, y + 0.3), xytext=(0, 2), textcoords="offset points",
                    ha="center", fontsize=8, color=colour)
    ax.set_yticks(range(len(rows)), [wrap(f.label) for f in reversed(rows)])
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"{unit} (dots: every sample; bar: median)")
    ax.set_title(title, loc="left", fontsize=10)
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wrap(label: str, width: int = 46) -> str:
    words, lines, line = label.replace("`", "").split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


def page_chart(path: Path, by_key: dict[str, Figure]) -> None:
    """MB over the wire and seconds to the Launcher, first and repeat load, jrd beside bare."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    half_bare = 0.5 * by_key["bare_first_seconds"].median
    for ax, (measure, unit, goals) in zip(axes, (("megabytes", "MB over the wire", {"first": 1.2, "repeat": 0.1}),
                                                 ("seconds", "seconds to the Launcher", {"first": half_bare}))):
        for x, kind in enumerate(("first", "repeat")):
            for dx, (key, name, colour) in zip((-0.2, 0.2), ((f"{kind}_{measure}", "jrd (HTTPS)", JRD_COLOUR),
                                                            (f"bare_{kind}_{measure}", "bare (HTTP)", BASE_COLOUR))):
                f = by_key[key]
                ax.bar(x + dx, f.median, width=0.38, color=colour, label=name if x == 0 else None)
                ax.scatter([x + dx] * f.n, f.samples, s=10, color="black", zorder=3)
                ax.annotate(number(f.median), (x + dx, max(f.samples)), xytext=(0, 4), textcoords="offset points",
                            ha="center", fontsize=8)
            if kind in goals:
                ax.plot([x - 0.45, x + 0.45], [goals[kind]] * 2, "r--", linewidth=1,
                        label="goal" if x == 0 else None)
        ax.set_xticks([0, 1], ["first load", "repeat load"])
        ax.set_title(unit, fontsize=10)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("JupyterLab's /lab at 10 Mbit/s, 100 ms (medians; dots: every trial)", fontsize=10, x=0.01,
                 ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MEMORY_PARTS = (("jrd", "jrd"), ("supervisord", "supervisord"), ("event_listener", "event listener"),
                ("nginx", "nginx"), ("jupyter", "Jupyter"))


def memory_chart(path: Path, by_key: dict[str, Figure]) -> None:
    """Stacked bars per process, jrd's stack beside the bare one, PSS and RSS."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(8, 3.8), sharex=True)
    colours = plt.get_cmap("tab10").colors
    for ax, measure in zip(axes, ("pss", "rss")):
        for y, prefix in ((1, ""), (0, "bare_")):
            left = 0.0
            for i, (part, name) in enumerate(MEMORY_PARTS):
                f = by_key.get(f"{prefix}{part}_{measure}")
                if f is None:
                    continue
                ax.barh(y, f.median, left=left, color=colours[i], label=name if y == 1 else None)
                if f.median > 8:
                    ax.text(left + f.median / 2, y, number(f.median), ha="center", va="center", fontsize=7,
                            color="white")
                left += f.median
            ax.text(left + 2, y, f"{number(left)} MiB", va="center", fontsize=8)
        ax.axvline(75, color="red", linestyle="--", linewidth=1)
        ax.text(75, 1.45, " goal for jrd + supervisord + listener", color="red", fontsize=7, va="bottom")
        ax.set_yticks([0, 1], ["bare jupyter lab\n+ bare nginx", "jrd's stack"])
        ax.set_title(measure.upper() + (" (shared pages split among the stack's processes)" if measure == "pss"
                                        else " (shared code counted in every process)"), fontsize=9, loc="left")
        ax.set_ylim(-0.6, 1.9)
    axes[0].legend(ncol=5, fontsize=7, frameon=False, loc="upper right", bbox_to_anchor=(1, 1.45))
    axes[1].set_xlabel("MiB, medians of the samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_charts(results: dict[str, list[Figure]]) -> dict[str, str]:
    """Every chart the results allow; {bench: markdown image line}."""
    def keyed(name: str) -> dict[str, Figure]:
        return {f.key: f for f in results.get(name, [])}

    out = {}
    if "page" in results:
        page_chart(OUT / "page.png", keyed("page"))
        out["page"] = "![MB and seconds of the first and repeat load, jrd beside bare](bench/page.png)"
    if "memory" in results:
        memory_chart(OUT / "memory.png", keyed("memory"))
        out["memory"] = "![memory per process, jrd's stack beside the bare one](bench/memory.png)"
    if "recovery" in results:
        rec = keyed("recovery")
        strip_chart(OUT / "recovery.png", "Recovery: SIGKILL → serving again (log scale)", "s",
                    [rec[k] for k in ("nginx", "jupyter", "cold_start", "plain_supervisord", "supervisord",
                                      "crash_loop") if k in rec], log=True)
        out["recovery"] = "![recovery times](bench/recovery.png)"
    latency = [f for name, keys in (("reload", ("edit_to_live",)), ("renewal", ("answered", "served")))
               for f in results.get(name, []) if f.key in keys]
    if latency:
        strip_chart(OUT / "latency.png", "Reload and renewal latency", "ms", latency)
        out["reload"] = "![reload and renewal latency](bench/latency.png)"
        out["renewal"] = "The chart under *Reload on a config change* shows these latencies beside the reload's."
    return out


# --- markdown -------------------------------------------------------------------------------------


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s" if seconds >= 60 else f"{seconds:.0f} s"


def method(doc: str) -> str:
    """A bench's docstring without its title line and its `Run:` lines."""
    body = doc.split("\n", 1)[1] if "\n" in doc else ""
    return re.split(r"\n\s*Run:", body)[0].strip()


def section(name: str, record: dict[str, Any], figs: list[Figure], chart: str | None) -> list[str]:
    params = ", ".join(f"{k} = {v}" for k, v in record["params"].items() if not isinstance(v, dict))
    out = [f"## {BENCHES[name]}", "", method(record["doc"]), "",
           f"Script: `bench/bench_{name}.py`; {minutes(record['seconds'])} in this run, started "
           f"{record['started'][:16].replace('T', ' ')} UTC, load average {record['load_average_1m'][0]} → "
           f"{record['load_average_1m'][1]}" + (f"; {params}" if params else "") + ".", "", table(figs), ""]
    if record["notes"]:
        out += [*(f"- {n}" for n in record["notes"]), ""]
    if chart:
        out += [chart, ""]
    for path in sorted(OUT.glob(f"{name}--*.json")):
        # A longer run of the same bench, alone (`bench/bench_NAME.py ... --out DIR`, its JSON kept as
        # docs/bench/NAME--WHAT.json): shown under the regular run, which `make bench` repeats.
        extra, extra_figs = load(path)
        extra_params = ", ".join(f"{k} = {v}" for k, v in extra["params"].items() if not isinstance(v, dict))
        out += [f"A longer run, alone (not repeated by `make bench`): {minutes(extra['seconds'])}, started "
                f"{extra['started'][:16].replace('T', ' ')} UTC, load average {extra['load_average_1m'][0]} → "
                f"{extra['load_average_1m'][1]}; {extra_params}.", "", table(extra_figs), "",
                *(f"- {n}" for n in extra["notes"]), ""]
    if record["reading"]:
        out += ["Reading it:", "", *(f"- {r}" for r in record["reading"]), ""]
    return out


def goals_table(records: dict[str, dict[str, Any]], results: dict[str, list[Figure]]) -> list[str]:
    rows = ["| section | measure | median (spread) | goal | judged on | met |", "| --- | --- | --- | --- | --- | --- |"]
    for name in records:
        for f in results[name]:
            if f.goal and f.met is not None:
                spread = f" ({number(min(f.samples))}–{number(max(f.samples))}, n = {f.n})" if f.n > 1 else ""
                rows.append(f"| {BENCHES[name].split(':')[0]} | {f.label} | {value_text(f)}{spread} | {f.goal} | "
                            f"{f.judged or 'the median'} | {'✅ yes' if f.met else '❌ no'} |")
    return rows


def write_report(env: dict[str, str], failed: list[str]) -> None:
    records, results = {}, {}
    for name in BENCHES:
        path = OUT / f"{name}.json"
        if path.exists():
            records[name], results[name] = load(path)
    charts = draw_charts(results)
    total = sum(r["seconds"] for r in records.values())
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/report.py: edits here are overwritten. -->",
        f"*Generated by `make bench` (`bench/report.py`) on {env['date']}; the benches took "
        f"{minutes(total)} in all. Do not edit this file: change a bench under `bench/` and run `make bench` "
        "again, or `.venv/bin/python bench/report.py --only page,memory` to rerun some benches and keep the "
        "others' last results (`--no-run` only redraws). The raw figures are in `docs/bench/*.json`.*",
        "",
        "Every figure is given as its median, its spread (min–max, and the interquartile range from four "
        "samples up) and the number of samples n, beside the baseline measured in the same run and the ratio "
        "of the two medians. The machine is a shared virtual machine with 2 cores on which other work runs, so "
        "tails are noisy: read the medians. Memory is in MiB (2^20 bytes); bytes over the wire in MB (10^6 "
        "bytes).",
        "",
        "## Machine and versions",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in env.items()),
        "",
    ]
    if failed:
        lines += [f"**Failed in this run (their sections show the last good results, if any): "
                  f"{', '.join(failed)}.**", ""]
    lines += ["## Goals", "", *goals_table(records, results), ""]
    for name, record in records.items():
        lines += section(name, record, results[name], charts.get(name))
    REPORT.write_text("\n".join(lines).rstrip() + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated benches to run, of: {', '.join(BENCHES)}")
    ap.add_argument("--no-run", action="store_true", help="run nothing; write the report from docs/bench/*.json")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        ap.error(f"unknown bench {', '.join(sorted(unknown))}")
    OUT.mkdir(parents=True, exist_ok=True)
    env_file = OUT / "environment.json"
    failed: list[str] = []
    if args.no_run:
        env = json.loads(env_file.read_text())
    else:
        env = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **environment()}
        env_file.write_text(json.dumps(env, indent=1) + "\n")
        failed = run_benches(names)
    write_report(env, failed)
    print(f"wrote {REPORT.relative_to(figures.REPO)} and its charts in {OUT.relative_to(figures.REPO)}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

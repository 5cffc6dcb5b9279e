"""Server-side execution: the document store after many executions, and a long cell with no tab open.

One jrd with `[jupyter] server_side_execution = true` (jupyter-collaboration and jupyter-server-nbmodel),
reached through nginx over HTTPS; Debian's Chromium driven by Playwright opens the notebooks.

* Store size.  A notebook with one small code cell is opened in a tab (which opens its shared document
  on the server) and the tab is closed; then the cell is executed N times (1,000 by default) through
  nbmodel's REST endpoint (`POST /api/kernels/<id>/execute` with the document's id and path and the
  cell's id: what JupyterLab's executor sends on Ctrl+Enter), one after the other, each awaited.  Every
  execution clears the cell's outputs, sets its state and count and writes its output into the shared
  document, so every one adds updates to the document store (`<runtime>/jupyter/collaboration/ystore.db`,
  SQLite with `auto_vacuum = FULL`).  The store's file size is read before, after the N executions, and
  after the store squashed the document's history: jrd squashes a document still for 600 s, on the next
  write to it; to observe that in bounded time this bench alone shortens the window with
  `[jupyter] extra_args = ["--SQLiteYStore.squash_after_inactivity_of=S"]` (20 s by default), waits it
  out, and executes the cell once more (the write that squashes).  The baseline is the .ipynb on disk.
* A long cell with no tab open.  A cell printing a numbered line every `--interval` s for `--minutes`
  min is started with Shift+Enter in a tab, which is closed a few seconds later; after the cell has ended
  (kernel idle and the last line in the .ipynb on disk, nobody having saved), a new browser context opens
  the notebook: the lines it shows and the lines in the .ipynb, in order, out of those printed.

Run:  .venv/bin/python bench/bench_server_side.py [--executions 1000] [--minutes 1.5] [--squash-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import figures
from conftest import Jrd, ensure_test_user, short_tmp, wait_for
from figures import Figure, Result
from test_browser_lab import log_in
from test_browser_server_side_execution import (Lab, busy_kernels, first_output, printed_lines, running_lab,
                                                stream_text)

CODE = "print(sum(range(100)))"  # a small cell; prints 4950


def store_path(j: Jrd) -> Path:
    return j.run_dir / "jupyter" / "collaboration" / "ystore.db"


def store_rows(db: Path) -> tuple[int, int]:
    """The store's updates (rows) and the bytes of those updates and checkpoints, read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows, update_bytes = con.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(yupdate)), 0) FROM yupdates").fetchone()
        (checkpoint_bytes,) = con.execute("SELECT COALESCE(SUM(LENGTH(checkpoint)), 0) FROM ycheckpoints").fetchone()
    finally:
        con.close()
    return rows, update_bytes + checkpoint_bytes


def token_session(j: Jrd) -> Any:
    """Jupyter's API through nginx with jrd's private token."""
    s = j.session()
    s.headers["Authorization"] = "token " + (j.state / "internal-token").read_text().strip()
    return s


def put_notebook(j: Jrd, name: str, source: str) -> Path:
    """A Python notebook with one code cell (id "first") holding `source`, made by Jupyter."""
    content = {"nbformat": 4, "nbformat_minor": 5, "cells": [
        {"cell_type": "code", "id": "first", "source": source, "metadata": {}, "outputs": [],
         "execution_count": None}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    r = token_session(j).put(j.url(f"/api/contents/{name}"), json={"type": "notebook", "format": "json",
                                                                   "content": content}, timeout=30)
    assert r.status_code in (200, 201), r.text
    return j.notebooks / name


def execute(s: Any, j: Jrd, kernel: str, metadata: dict[str, str]) -> None:
    """One execution of CODE into the shared document's cell, awaited."""
    r = s.post(j.url(f"/api/kernels/{kernel}/execute"), json={"code": CODE, "metadata": metadata}, timeout=30)
    assert r.status_code == 202, r.text
    url = j.url(r.json()["request_url"])
    while True:
        r = s.get(url, timeout=30)
        if r.status_code == 200:
            return
        assert r.status_code == 202, (r.status_code, r.text)
        time.sleep(0.005)


def store_bench(lab: Lab, args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    j = lab.jrd
    db = store_path(j)
    name = "store.ipynb"
    saved = put_notebook(j, name, CODE)
    context, page = lab.new_page()
    lab.open(page, name)  # the tab opens the shared document and starts the kernel
    context.close()
    s = token_session(j)
    kernel = next(x["kernel"]["id"] for x in s.get(j.url("/api/sessions"), timeout=30).json() if x["path"] == name)
    info = s.put(j.url(f"/api/collaboration/session/{name}"), json={"format": "json", "type": "notebook"},
                 timeout=30).json()  # the document's room id, as the frontend asks for it
    metadata = {"cell_id": "first", "document_id": f"json:notebook:{info['fileId']}",
                "document_path": name}
    time.sleep(2)
    before = db.stat().st_size
    t0 = time.monotonic()
    for _ in range(args.executions):
        execute(s, j, kernel, metadata)
    took = time.monotonic() - t0

    def on_disk(count: int) -> bool:
        text, n = stream_text(saved)
        return n is not None and n >= count and text == "4950\n"

    wait_for(lambda: on_disk(args.executions), 60, f"execution {args.executions} in {saved}")
    time.sleep(2)
    after, (rows_after, bytes_after) = db.stat().st_size, store_rows(db)
    ipynb = saved.stat().st_size
    # Still for longer than the squash window, then one more execution: the write that squashes.
    time.sleep(args.squash_seconds + 2)
    execute(s, j, kernel, metadata)
    wait_for(lambda: on_disk(args.executions + 1), 60, f"execution {args.executions + 1} in {saved}")
    time.sleep(2)
    squashed, (rows_squashed, bytes_squashed) = db.stat().st_size, store_rows(db)
    n = args.executions
    out = [
        Figure("store_before", "document store (ystore.db) with the notebook open, before any execution", "KB",
               [round(before / 1e3, 1)], baseline="ipynb"),
        Figure("store_after", f"document store after {n:,} executions", "KB", [round(after / 1e3, 1)],
               baseline="ipynb"),
        Figure("store_squashed", f"document store after {n:,} executions, once squashed", "KB",
               [round(squashed / 1e3, 1)], baseline="ipynb", goal=f"smaller than after {n:,} executions",
               met=squashed < after),
        Figure("ipynb", "baseline: the notebook's .ipynb on disk", "KB", [round(ipynb / 1e3, 1)]),
        Figure("execution_ms", f"one small execution through nbmodel's REST endpoint (mean of {n:,})", "ms",
               [round(took / n * 1000, 1)]),
    ]
    notes = [f"store rows (updates) and their bytes: {rows_after:,} rows, {bytes_after / 1e3:,.1f} KB after "
             f"{n:,} executions; {rows_squashed:,} rows, {bytes_squashed / 1e3:,.1f} KB once squashed",
             f"squash window shortened for this bench to {args.squash_seconds} s (jrd's is 600 s)"]
    return out, notes


def long_cell_bench(lab: Lab, args: argparse.Namespace) -> tuple[list[Figure], list[str]]:
    j, expect = lab.jrd, lab.expect
    lines = round(args.minutes * 60 / args.interval)
    saved = lab.new_notebook("long.ipynb")
    context, page = lab.new_page()
    notebook = lab.open(page, saved.name)
    notebook.locator(".jp-CodeCell").last.locator(".cm-content").click()
    for line in ("import time", f"for i in range(1, {lines} + 1):", "print(f'line {i}', flush=True)",
                 f"time.sleep({args.interval})"):
        page.keyboard.type(line)  # the editor indents the loop's body by itself
        page.keyboard.press("Enter")
    page.keyboard.press("Backspace")
    page.keyboard.type("print(f'{i} lines')")
    page.keyboard.press("Shift+Enter")
    started = time.monotonic()
    expect(first_output(notebook)).to_contain_text("line 1")
    time.sleep(max(0.0, args.close_after - (time.monotonic() - started)))
    context.close()  # the tablet's browser drops the tab
    closed = time.monotonic() - started
    print(f"tab closed {closed:.1f} s in; the cell runs {args.minutes} min", file=sys.stderr, flush=True)
    idle_at = None
    deadline = started + args.minutes * 60 + 300
    while time.monotonic() < deadline:
        if idle_at is None and busy_kernels(j) == 0:
            idle_at = time.monotonic()
        if idle_at is not None and stream_text(saved)[0].endswith(" lines\n"):
            break
        time.sleep(0.5)
    saved_at = time.monotonic()
    on_disk = printed_lines(stream_text(saved)[0])
    context, page = lab.new_page()
    try:
        output = first_output(lab.open(page, saved.name))
        expect(output).to_contain_text(f"{lines} lines")
        shown = printed_lines(output.inner_text())
    finally:
        context.close()
    expected = list(range(1, lines + 1))
    goal = f"all {lines:,}, in order"
    out = [
        Figure("shown", f"lines shown after reopening ({args.minutes:g} min cell, tab closed {closed:.0f} s in)",
               "lines", [sum(1 for a, b in zip(shown, expected) if a == b)], of=lines, goal=goal,
               met=shown == expected),
        Figure("on_disk", "lines in the .ipynb on disk, nobody having saved", "lines",
               [sum(1 for a, b in zip(on_disk, expected) if a == b)], of=lines, goal=goal, met=on_disk == expected),
        Figure("saved_after", "the cell's end in the .ipynb, after the kernel went idle", "s",
               [round(saved_at - idle_at, 1) if idle_at else -1]),
    ]
    return out, [f"long cell: {lines:,} lines, one every {args.interval:g} s; ran "
                 f"{(idle_at or saved_at) - started:.0f} s from Shift+Enter to an idle kernel"]


READING = (
    "The store keeps every update of every document until it squashes a document's history (jrd: once the "
    "document has been still for 600 s, at the next write to it); the file size after squashing shows "
    "what remains, and SQLite gives freed pages back (the store is made with `auto_vacuum = FULL`).",
    "Squashing keeps the document's current state, and with it the CRDT's record of what was deleted (the "
    "outputs each execution replaced): compare the bytes left in the notes with those after 1,000 executions.",
    "The executions go through nbmodel's REST endpoint with the document's id and the cell's id, as "
    "JupyterLab's executor sends them: the same writes into the shared document as Ctrl+Enter in a tab, "
    "without the browser's own time.",
    "The long cell's figures count lines in order from the first: a line lost or out of order ends the run "
    "of matches.",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--executions", type=int, default=1000, help="executions of the small cell")
    ap.add_argument("--squash-seconds", type=int, default=20,
                    help="the store's squash window for this bench (jrd's is 600 s)")
    # 1.5 min: the tab closed a few seconds in, the cell prints for well past jupyter-collaboration's default
    # 60 s cleanup delay (which jrd turns off) while keeping `make bench` short; --minutes 60 for the hour.
    ap.add_argument("--minutes", type=float, default=1.5, help="how long the long cell prints")
    ap.add_argument("--interval", type=float, default=1, help="seconds between the long cell's lines")
    ap.add_argument("--close-after", type=float, default=4, help="seconds after Shift+Enter the tab is closed")
    ap.add_argument("--skip-store", action="store_true", help="only the long cell")


def run(args: argparse.Namespace) -> Result:
    j = Jrd(short_tmp(), user=ensure_test_user())
    j.write_config(jupyter="server_side_execution = true\n"
                   f'extra_args = ["--SQLiteYStore.squash_after_inactivity_of={args.squash_seconds}"]\n')
    out: list[Figure] = []
    notes: list[str] = []
    with running_lab(j) as lab:
        context, page = lab.new_page()
        log_in(page, lab.expect, lab.base, {})
        lab.cookies = context.storage_state()
        context.close()
        if not args.skip_store:
            figs, n = store_bench(lab, args)
            out += figs
            notes += n
            print(json.dumps([f.__dict__ for f in figs]), file=sys.stderr, flush=True)
        figs, n = long_cell_bench(lab, args)
        out += figs
        notes += n
    return Result(out, notes=notes)


if __name__ == "__main__":
    sys.exit(figures.main("server_side", __doc__, add_arguments, run, READING))

"""Server-side execution ([jupyter] server_side_execution) in a real browser: output survives a closed tab.

One jrd with the setting on and one Chromium serve the whole module; the
tests run in order, and the last turns the setting off.

- A cell that prints a numbered line a second keeps running on the server
  after the browser context is closed a few seconds in (the idle stop sees a
  busy kernel).  Reopened while it runs, the notebook shows the earlier
  lines and new ones arrive live; closed again and reopened after the end,
  it shows every line in order with the execution count, and the .ipynb on
  disk has every line without anyone saving.  The metrics count the cell.
- Normal use: `1+1`, an image, `input()`, an interrupt, a kernel restart,
  then more cells.
- `jrdctl restart jupyter` under the open notebook: the tab heals.
- The bundles it adds come compressed (brotli).
- Turned off by a config edit (no jrd restart): Jupyter restarts, nothing of
  it loads, and the same closed-tab scenario loses the output, as plain
  JupyterLab does: the negative control that shows the setting makes the
  difference.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from conftest import JRDCTL, PASSWORD, Jrd, descendants, parse_exposition, short_tmp, wait_for
from test_browser_lab import (CHROMIUM_FLAGS, HOST, PAGE_TIMEOUT_MS, log_in, saved_outputs, sync_playwright, tool,
                              trusting_home)

pytestmark = pytest.mark.integration

# The printing cell stops when the test says (at most after this many lines), so that a slow machine
# cannot let it end before the tab is reopened.
MAX_LINES = 120
CONTROL_LINES = 8
# Where the frontend parts of server-side execution are fetched from.
SSX_ASSETS = re.compile(r"/lab/extensions/(@jupyter|@datalayer)/")
IDLE = re.compile(r" \| Idle$")
# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


class Lab:
    """The module's jrd and browser, and the login cookies every new context starts with."""

    def __init__(self, jrd: Jrd, browser: Any, expect: Any) -> None:
        self.jrd = jrd
        self.browser = browser
        self.expect = expect
        self.base = f"https://{HOST}:{jrd.port}"
        self.cookies: Any = None

    def new_page(self, requested: list[str] | None = None) -> tuple[Any, Any]:
        context = self.browser.new_context(ignore_https_errors=False, storage_state=self.cookies)
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        if requested is not None:
            page.on("request", lambda request: requested.append(request.url))
        return context, page

    def open(self, page: Any, name: str, idle: bool = True) -> Any:
        """The notebook `name` opened alone in the page (a fresh workspace), once its kernel is idle (if
        `idle`); its panel."""
        page.goto(f"{self.base}/lab/tree/{name}?reset")
        if page.locator("input[type=password]").count():
            page.locator("input[type=password]").fill(PASSWORD)
            page.locator("input[type=password]").press("Enter")
        panel_id = page.wait_for_function("""name => {
            const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            return widget && widget.context && widget.context.path === name && widget.context.isReady && widget.id;
        }""", arg=name).json_value()
        if idle:
            self.expect(page.get_by_role("contentinfo").get_by_role("button", name=IDLE)).to_be_visible()
        return page.locator(f"[id='{panel_id}']")

    def new_notebook(self, name: str) -> Path:
        """A Python notebook with one empty cell, made by Jupyter (so that it belongs to the Jupyter account)."""
        s = self.jrd.login()
        content = {"nbformat": 4, "nbformat_minor": 5, "cells": [
            {"cell_type": "code", "id": "first", "source": "", "metadata": {}, "outputs": [],
             "execution_count": None}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
        r = s.put(self.jrd.url(f"/api/contents/{name}"), json={"type": "notebook", "format": "json",
                                                                 "content": content}, timeout=30)
        assert r.status_code in (200, 201), r.text
        return self.jrd.notebooks / name


@contextlib.contextmanager
def running_lab(j: Jrd) -> Iterator[Lab]:
    """`j` started, and a Chromium that trusts its CA; both stopped (and `j`'s files removed) after."""
    try:
        j.start()
        with sync_playwright() as pw:
            from playwright.sync_api import expect

            expect.set_options(timeout=PAGE_TIMEOUT_MS)
            home = trusting_home(j.base / "browser-home", j.ca)
            browser = pw.chromium.launch(executable_path=tool("chromium"), args=CHROMIUM_FLAGS, headless=True,
                                         env={**os.environ, "HOME": str(home)})
            try:
                yield Lab(j, browser, expect)
            finally:
                browser.close()
    finally:
        j.stop()
        shutil.rmtree(j.base, ignore_errors=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    j = Jrd(short_tmp())
    j.write_config(jupyter="server_side_execution = true\n")
    with running_lab(j) as lab:
        yield lab


def stream_text(notebook: Path, index: int = 0) -> tuple[str, int | None]:
    """The stdout of a code cell of a notebook on disk, and its execution count."""
    try:
        cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    except (OSError, ValueError, KeyError):
        return "", None
    if len(cells) <= index:
        return "", None
    cell = cells[index]
    text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("name") == "stdout")
    return text, cell.get("execution_count")


def api(j: Jrd, path: str) -> Any:
    """Jupyter's API through nginx with jrd's private token."""
    token = (j.state / "internal-token").read_text().strip()
    return j.session().get(j.url(path), headers={"Authorization": f"token {token}"}, timeout=10).json()


def busy_kernels(j: Jrd) -> int:
    """What the idle stop's `kernel_busy` signal reads: kernels whose execution_state is busy."""
    return sum(1 for k in api(j, "/api/kernels?no_track_activity=1") if k.get("execution_state") == "busy")


def running_output(j: Jrd) -> str:
    """What the cells running on the server printed so far (nbmodel's pending requests)."""
    text = ""
    for kernel in api(j, "/api/kernels?no_track_activity=1"):
        for request in api(j, f"/api/kernels/{kernel['id']}/execute")["requests"]:
            text += "".join(o.get("text", "") for o in json.loads(request["outputs"]) if o.get("name") == "stdout")
    return text


def extension_routes(j: Jrd) -> dict[str, int]:
    s = j.login()
    return {path: s.get(j.url(path), timeout=30).status_code
            for path in ("/api/nbmodel/settings/output-recovery", "/api/collaboration/session/x.ipynb")}


def scrape(j: Jrd) -> dict[str, float]:
    r = requests.get(f"http://127.0.0.1:{j.metrics_port}/metrics", timeout=15)
    r.raise_for_status()
    return parse_exposition(r.text)


def executions(j: Jrd) -> tuple[float, float, float]:
    """The metrics' server-side executions: (started, ok, error)."""
    m = scrape(j)
    return (m.get("jrd_jupyter_server_side_executions_started_total", -1),
            m.get('jrd_jupyter_server_side_executions_total{result="ok"}', -1),
            m.get('jrd_jupyter_server_side_executions_total{result="error"}', -1))


def run_cell(page: Any, notebook: Any, code: str) -> Any:
    """Types `code` into the notebook's last cell and runs it; the cell (not the new one Shift+Enter adds)."""
    cells = notebook.locator(".jp-CodeCell")
    cell = cells.nth(cells.count() - 1)
    cell.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    return cell


def rooms_synced_from_now(page: Any) -> list[str]:
    """The URLs of the document websockets opened from now on, each once it has had a message from the
    server (the first is the server's state of the document: from then on the tab is in step)."""
    synced: list[str] = []

    def opened(ws: Any) -> None:
        if "/api/collaboration/room/" in ws.url:
            ws.once("framereceived", lambda _: synced.append(ws.url))
    page.on("websocket", opened)
    return synced


def wait_until_synced(page: Any, synced: list[str], seconds: float = 45) -> None:
    deadline = time.monotonic() + seconds
    while not synced:
        assert time.monotonic() < deadline, "the open notebook never synced with the new Jupyter"
        page.wait_for_timeout(100)  # lets Playwright deliver the websocket events


def start_printing_cell(page: Any, notebook: Any, lines: int, until: Path | None = None) -> Any:
    """A cell that prints a numbered line a second, `lines` of them or until the file `until` exists, then
    how many it printed; returns once it has printed two."""
    from playwright.sync_api import expect

    cell = notebook.locator(".jp-CodeCell").last
    cell.locator(".cm-content").click()
    # Typed line by line: the editor indents the loop's body by itself.
    stop = f" and not os.path.exists({str(until)!r})" if until else ""
    for line in ("import os, time", "i = 0", f"while i < {lines}{stop}:",
                 "i += 1", "print(f'line {i}', flush=True)", "time.sleep(1)"):
        page.keyboard.type(line)
        page.keyboard.press("Enter")
    page.keyboard.press("Backspace")  # out of the loop's body
    page.keyboard.type("print(f'{i} lines')")
    page.keyboard.press("Shift+Enter")
    expect(first_output(notebook)).to_contain_text("line 2")
    return cell


def printed(lines: int) -> str:
    """What the printing cell prints when it stops after `lines` lines."""
    return "".join(f"line {i + 1}\n" for i in range(lines)) + f"{lines} lines\n"


def first_output(notebook: Any) -> Any:
    return notebook.locator(".jp-OutputArea-output").first


def printed_lines(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"line (\d+)", text)]


def test_output_of_a_cell_survives_its_closed_tab_and_goes_on_live_when_reopened(lab: Lab) -> None:
    j, expect = lab.jrd, lab.expect
    routes = extension_routes(j)
    assert all(status != 404 for status in routes.values()), routes
    assert executions(j) == (0, 0, 0)
    requested: list[str] = []
    context, page = lab.new_page(requested)
    log_in(page, expect, lab.base, {})
    lab.cookies = context.storage_state()
    assert any(SSX_ASSETS.search(url) for url in requested), "on, the frontend parts load"
    # The single-user interface: no share link, user menu or collaborators panel.
    expect(page.locator("#jp-UserMenu, .jp-MenuBar-anonymousIcon, .jp-MenuBar-imageIcon")).to_have_count(0)
    expect(page.locator("#jp-collaboration-panel")).to_have_count(0)

    saved = lab.new_notebook("printing.ipynb")
    stop = j.base / "stop-printing"
    start_printing_cell(page, lab.open(page, saved.name), MAX_LINES, until=stop)
    started = time.monotonic()
    context.close()  # the iPad's Safari drops the tab
    # The cell runs on: the idle stop sees a busy kernel with no tab open.
    assert busy_kernels(j) == 1

    # Reopened while it runs: the earlier lines are there, in order, and new ones arrive live.
    context, page = lab.new_page()
    # (The status bar says "Unknown" until the kernel answers JupyterLab, after the cell.)
    output = first_output(lab.open(page, saved.name, idle=False))
    expect(output).to_contain_text("line 3")
    shown = printed_lines(output.inner_text())
    assert shown == list(range(1, len(shown) + 1)) and "lines" not in output.inner_text(), shown
    expect(output).to_contain_text(f"line {len(shown) + 2}")
    context.close()

    # Closed again: more lines with no tab open (in the server's copy; the file on disk gets them as the
    # server saves, surely after the end), then the cell ends.
    seen = len(shown) + 2
    wait_for(lambda: f"line {seen + 3}\n" in running_output(j), 30, "more lines with no tab open")
    stop.touch()
    wait_for(lambda: stream_text(saved)[0].endswith(" lines\n") and stream_text(saved)[1] == 1, 30,
             f"the cell's end in {saved}")
    text = stream_text(saved)[0]
    lines = int(text.rsplit("\n", 2)[-2].split()[0])
    assert text == printed(lines), text
    print(f"\n{lines} lines, saved {time.monotonic() - started:.1f} s after the tab first closed")
    wait_for(lambda: busy_kernels(j) == 0, 30, "the kernel to be idle")

    # Reopened after the end: every line, in order, with the execution count.
    context, page = lab.new_page()
    notebook = lab.open(page, saved.name)
    expect(first_output(notebook)).to_have_text(printed(lines).rstrip("\n"))
    expect(notebook.locator(".jp-InputArea-prompt").first).to_have_text("[1]:")
    context.close()
    assert executions(j) == (1, 1, 0)


def test_normal_use_image_input_interrupt_and_a_kernel_restart(lab: Lab) -> None:
    j, expect = lab.jrd, lab.expect
    saved = lab.new_notebook("normal.ipynb")
    context, page = lab.new_page()
    try:
        notebook = lab.open(page, saved.name)
        cell = run_cell(page, notebook, "1+1")
        expect(cell.locator(".jp-OutputArea-output")).to_have_text("2")

        cell = run_cell(page, notebook, f"import base64; from IPython.display import Image; "
                                        f"Image(base64.b64decode('{PNG}'))")
        expect(cell.locator(".jp-RenderedImage img")).to_have_attribute("src", re.compile("^data:image/png"))

        cell = run_cell(page, notebook, "name = input('name? '); print('hello', name)")
        stdin = cell.locator(".jp-Stdin-input")
        expect(stdin).to_be_visible()
        stdin.fill("ipad")
        stdin.press("Enter")
        expect(cell.locator(".jp-OutputArea")).to_contain_text("hello ipad")

        cell = run_cell(page, notebook, "import time; print('sleeping', flush=True); time.sleep(120)")
        expect(cell.locator(".jp-OutputArea")).to_contain_text("sleeping")
        page.evaluate("window.jupyterapp.commands.execute('notebook:interrupt-kernel')")
        expect(cell.locator(".jp-OutputArea")).to_contain_text("KeyboardInterrupt")
        wait_for(lambda: busy_kernels(j) == 0, 30, "the interrupted kernel to be idle")

        # Not awaited: the command's promise waits for the dialog's answer.
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-kernel'); }")
        page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").click()
        expect(page.get_by_role("contentinfo").get_by_role("button", name=IDLE)).to_be_visible()
        cell = run_cell(page, notebook, "'name' in dir(), 6*7")
        expect(cell.locator(".jp-OutputArea-output")).to_have_text("(False, 42)")
        expect(cell.locator(".jp-InputArea-prompt")).to_have_text("[1]:")

        def saved_kinds() -> list[str]:
            try:
                cells = json.loads(saved.read_text())["cells"]
            except (OSError, ValueError):
                return []
            return [key for c in cells for o in c.get("outputs", []) for key in o.get("data", {"stream": 1})]

        wait_for(lambda: "image/png" in saved_kinds() and saved_kinds().count("text/plain") >= 3, 30,
                 f"the image and the results in {saved}")
    finally:
        context.close()
    started, ok, error = executions(j)
    assert (started, ok, error) == (6, 5, 1), (started, ok, error)


def test_the_tab_heals_through_a_restart_of_jupyter(lab: Lab) -> None:
    j, expect = lab.jrd, lab.expect
    saved = lab.new_notebook("heal.ipynb")
    context, page = lab.new_page()
    try:
        notebook = lab.open(page, saved.name)
        cell = run_cell(page, notebook, "1+1")
        expect(cell.locator(".jp-OutputArea-output")).to_have_text("2")
        # The server saves by itself: the restart comes once the result is on disk, as a person's would.
        wait_for(lambda: saved_outputs(saved) == ["2"], 30, f"{saved} with its output")
        page.evaluate("window.jrdTestMarker = 'same page'")
        old_jupyter = j.supervisor_pid("jupyter")
        banner = page.locator("#jrd-heal-banner")
        synced = rooms_synced_from_now(page)
        restart = subprocess.run([JRDCTL, "--config", str(j.config_path), "restart", "jupyter"],
                                 capture_output=True, text=True, timeout=120)
        assert restart.returncode == 0, restart.stdout + restart.stderr
        new_jupyter = j.supervisor_pid("jupyter")
        assert new_jupyter not in (0, old_jupyter), (old_jupyter, new_jupyter)
        expect(banner).to_have_attribute("data-state", "up")
        assert page.evaluate("window.jrdHeal.history") == ["down", "up"]
        assert page.evaluate("window.jrdTestMarker") == "same page", "the page was reloaded"
        expect(page.get_by_role("contentinfo").get_by_role("button", name=IDLE)).to_be_visible()
        # Typing waits for the document to be in step with the new Jupyter, as a person's eye would:
        # keys pressed while it syncs can be lost.
        wait_until_synced(page, synced)
        expect(notebook.locator(".jp-CodeCell").first.locator(".cm-content")).to_have_text("1+1")
        cell = run_cell(page, notebook, "import os; os.getpid()")
        output = cell.locator(".jp-OutputArea-output")
        expect(output).to_have_text(re.compile(r"^\d+$"))
        kernel = int(output.inner_text())
        assert kernel in descendants(new_jupyter), f"kernel {kernel} is not a child of the new Jupyter {new_jupyter}"
        expect(cell.locator(".jp-InputArea-prompt")).to_have_text("[1]:")
        expect(page.locator(".jp-Dialog")).to_have_count(0)
    finally:
        context.close()
    assert executions(j)[1] == 1, "the restarted Jupyter counts from zero"


def test_the_bundles_it_adds_come_compressed(lab: Lab) -> None:
    s = lab.jrd.login()
    page = s.get(lab.jrd.url("/lab"), timeout=30).text
    config = json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                                  page, re.S).group(1))
    added = [ext for ext in config["federated_extensions"] if SSX_ASSETS.search(f"/lab/extensions/{ext['name']}/")]
    assert len(added) == 3, config["federated_extensions"]
    for ext in added:
        url = lab.jrd.url(f"/lab/extensions/{ext['name']}/{ext['load']}")
        r = s.get(url, headers={"Accept-Encoding": "br, gzip"}, stream=True, timeout=30)
        assert r.status_code == 200 and r.headers.get("Content-Encoding") == "br", (url, r.headers)
        r.close()


def test_turned_off_nothing_of_it_loads_and_a_closed_tab_loses_the_output(lab: Lab) -> None:
    """The negative control: plain JupyterLab loses what a cell prints while no tab is open."""
    j, expect = lab.jrd, lab.expect
    old_jupyter = j.supervisor_pid("jupyter")
    j.write_config(jupyter="server_side_execution = false\n")
    wait_for(lambda: j.supervisor_pid("jupyter") not in (0, old_jupyter) and j.serving(), 90,
             "Jupyter restarted without server-side execution")
    routes = extension_routes(j)
    assert all(status == 404 for status in routes.values()), routes
    assert "jrd_jupyter_server_side_executions_started_total" not in scrape(j)

    saved = lab.new_notebook("control.ipynb")
    requested: list[str] = []
    context, page = lab.new_page(requested)
    start_printing_cell(page, lab.open(page, saved.name), CONTROL_LINES)
    assert not [url for url in requested if SSX_ASSETS.search(url)], requested
    lab.cookies = context.storage_state()
    context.close()
    wait_for(lambda: busy_kernels(j) == 0, CONTROL_LINES + 30, "the cell to end")

    context, page = lab.new_page()
    try:
        notebook = lab.open(page, saved.name)
        expect(notebook.locator(".jp-Cell").first).to_be_visible()
        last = f"line {CONTROL_LINES}"
        assert last not in notebook.inner_text(), "plain JupyterLab showed a line printed with no tab open"
        assert last not in stream_text(saved)[0]
    finally:
        context.close()

"""Server-side execution ([jupyter] server_side_execution) in a real browser: output survives a closed tab.

With the setting on, a cell that prints a numbered line a second keeps
running on the server after the browser context is closed a few seconds in;
the kernel counts as busy for the idle stop meanwhile; the .ipynb on disk
gets every line without anyone saving; a new context opening the notebook
afterwards shows every line, in order, with the execution count.  Then the
setting is turned off by a config edit (no jrd restart): Jupyter restarts, and
neither the server extensions nor their frontend parts are loaded.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import PASSWORD, Jrd, wait_for
from test_browser_lab import (
    CHROMIUM_FLAGS, HOST, PAGE_TIMEOUT_MS, launcher_card, log_in, sync_playwright, tool, trusting_home,
)

pytestmark = pytest.mark.integration

LINES = 12
EXPECTED = "".join(f"line {i + 1}\n" for i in range(LINES))
# Where the frontend parts of server-side execution are fetched from.
SSX_ASSETS = re.compile(r"/lab/extensions/(@jupyter|@datalayer)/")


def stream_text(notebook: Path) -> tuple[str, int | None]:
    """The stdout of the first code cell of a notebook on disk, and its execution count."""
    try:
        cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    except (OSError, ValueError, KeyError):
        return "", None
    if not cells:
        return "", None
    text = "".join("".join(o.get("text", "")) for o in cells[0].get("outputs", []) if o.get("name") == "stdout")
    return text, cells[0].get("execution_count")


def busy_kernels(j: Jrd) -> int:
    """What the idle stop's `kernel_busy` signal reads: kernels whose execution_state is busy."""
    token = (j.state / "internal-token").read_text().strip()
    kernels = j.session().get(j.url("/api/kernels?no_track_activity=1"),
                              headers={"Authorization": f"token {token}"}, timeout=10).json()
    return sum(1 for k in kernels if k.get("execution_state") == "busy")


def extension_routes(j: Jrd) -> dict[str, int]:
    s = j.login()
    return {path: s.get(j.url(path), timeout=30).status_code
            for path in ("/api/nbmodel/settings/output-recovery", "/api/collaboration/session/x.ipynb")}


@pytest.fixture
def ssx_jrd(make_jrd: Callable[..., Jrd]) -> Jrd:
    j = make_jrd()
    j.write_config(jupyter="server_side_execution = true\n")
    return j.start()


def test_output_of_a_cell_survives_its_closed_tab_and_the_setting_turns_it_all_off(ssx_jrd: Jrd,
                                                                                   tmp_path: Path) -> None:
    j = ssx_jrd
    routes = extension_routes(j)
    assert all(status != 404 for status in routes.values()), routes
    timings: dict[str, float] = {}
    with sync_playwright() as pw:
        from playwright.sync_api import expect

        expect.set_options(timeout=PAGE_TIMEOUT_MS)
        home = trusting_home(tmp_path / "home", j.ca)
        base = f"https://{HOST}:{j.port}"
        browser = pw.chromium.launch(executable_path=tool("chromium"), args=CHROMIUM_FLAGS, headless=True,
                                     env={**os.environ, "HOME": str(home)})
        try:
            requested: list[str] = []
            context, page = new_page(browser, requested)
            log_in(page, expect, base, timings)
            assert any(SSX_ASSETS.search(url) for url in requested), "on, the frontend parts load"
            # The single-user interface: no share link, user menu or collaborators panel.
            expect(page.locator("#jp-UserMenu, .jp-MenuBar-anonymousIcon, .jp-MenuBar-imageIcon")).to_have_count(0)
            expect(page.locator("#jp-collaboration-panel")).to_have_count(0)

            notebook = start_printing_cell(page, expect)
            saved = j.notebooks / "Untitled.ipynb"
            started = time.monotonic()
            cookies = context.storage_state()
            context.close()  # the iPad's Safari drops the tab

            # The cell runs on: the idle stop sees a busy kernel with no tab open.
            assert busy_kernels(j) == 1
            wait_for(lambda: stream_text(saved) == (EXPECTED, 1), LINES + 30, f"every line in {saved}")
            print(f"\ncell ended and was saved {time.monotonic() - started:.1f} s after the tab closed")
            wait_for(lambda: busy_kernels(j) == 0, 30, "the kernel to be idle")

            context, page = new_page(browser, [], cookies)
            page.goto(f"{base}/lab/tree/{saved.name}")
            output = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").first
            expect(output).to_have_text(EXPECTED.rstrip("\n"))
            prompt = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputArea-prompt").first
            expect(prompt).to_have_text("[1]:")
            context.close()
            del notebook

            # Off by a config edit, no jrd restart: Jupyter restarts, and nothing of it loads.
            old_jupyter = j.supervisor_pid("jupyter")
            j.write_config(jupyter="server_side_execution = false\n")
            wait_for(lambda: j.supervisor_pid("jupyter") not in (0, old_jupyter) and j.serving(), 90,
                     "Jupyter restarted without server-side execution")
            routes = extension_routes(j)
            assert all(status == 404 for status in routes.values()), routes
            requested = []
            context, page = new_page(browser, requested)
            page.goto(f"{base}/lab/tree/{saved.name}")
            page.locator("input[type=password]").fill(PASSWORD)
            page.locator("input[type=password]").press("Enter")
            expect(page.get_by_role("contentinfo").get_by_role("button", name=re.compile(r" \| Idle$"))).to_be_visible()
            expect(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").first).to_have_text(
                EXPECTED.rstrip("\n"))
            assert not [url for url in requested if SSX_ASSETS.search(url)], requested
            context.close()
        finally:
            browser.close()


def new_page(browser: Any, requested: list[str], cookies: Any = None) -> tuple[Any, Any]:
    context = browser.new_context(ignore_https_errors=False, storage_state=cookies)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.on("request", lambda request: requested.append(request.url))
    return context, page


def start_printing_cell(page: Any, expect: Any) -> Any:
    """A new notebook whose first cell prints a line a second; returns once the first lines are shown."""
    launcher_card(page).click()
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(page.get_by_role("contentinfo").get_by_role("button", name=re.compile(r" \| Idle$"))).to_be_visible()
    editor = notebook.locator(".jp-Cell .cm-content").first
    editor.click()
    # Typed line by line: the editor indents the loop's body by itself.
    page.keyboard.type("import time")
    page.keyboard.press("Enter")
    page.keyboard.type(f"for i in range({LINES}):")
    page.keyboard.press("Enter")
    page.keyboard.type("print(f'line {i + 1}', flush=True)")
    page.keyboard.press("Enter")
    page.keyboard.type("time.sleep(1)")
    page.keyboard.press("Shift+Enter")
    expect(notebook.locator(".jp-OutputArea-output").first).to_contain_text("line 3")
    return notebook

"""A real browser logs in to jrd's HTTPS JupyterLab and runs a cell.

Debian's Chromium, driven by Playwright (never `playwright install`: the
browser is the system's /usr/bin/chromium), trusts jrd's CA through an NSS
database in a temporary HOME, so certificate verification stays on: no
--ignore-certificate-errors and no ignore_https_errors.  The page is loaded
by a DNS name from the certificate (jrd.test, mapped to loopback inside the
browser only), through the real login form, and a new notebook runs `1+1`
over the kernel websocket through nginx.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import PASSWORD, Jrd, wait_for

pytestmark = pytest.mark.integration

SCREENSHOT = Path("/tmp/jrd-browser-lab.png")
HOST = "jrd.test"  # in the test config's [tls] names
NOTEBOOK = "browser-check"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
]
# Generous per-step deadlines for a loaded 2-core machine; each wait returns as soon as it is met.
PAGE_TIMEOUT_MS = 45_000
# JupyterLab asks whether "Untitled.ipynb" exists before it creates a new notebook; that 404 is expected.
EXPECTED_HTTP_ERRORS = re.compile(r"^404 GET https://[^/]+/api/contents/Untitled\d*\.ipynb\?")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run scripts/install-system-deps test"
    return path


def sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.fail("the playwright Python package is missing: run .venv/bin/pip install -e '.[test]'")
    return start()


def trusting_home(home: Path, ca_pem: Path) -> Path:
    """A HOME whose NSS database (where Chromium on Linux reads user-added anchors) trusts `ca_pem`."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    certutil = tool("certutil")
    subprocess.run([certutil, "-d", f"sql:{db}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run([certutil, "-d", f"sql:{db}", "-A", "-n", "jrd local CA", "-t", "C,,", "-i", str(ca_pem)],
                   check=True, capture_output=True)
    return home


@dataclass
class BrowserLog:
    """What the browser saw go wrong: console errors, failed requests, HTTP errors, websocket trouble."""

    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    websocket_errors: list[str] = field(default_factory=list)
    websocket_frames: int = 0

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("requestfailed", lambda r: self.failed_requests.append(f"{r.method} {r.url}: {r.failure}"))
        page.on("response", lambda r: self.http_errors.append(f"{r.status} {r.request.method} {r.url}")
                if r.status >= 400 else None)
        page.on("websocket", self._websocket)

    def _websocket(self, ws: Any) -> None:
        self.websockets.append(ws.url)
        ws.on("socketerror", lambda e: self.websocket_errors.append(f"{ws.url}: {e}"))
        ws.on("framereceived", lambda _: self._frame())

    def _frame(self) -> None:
        self.websocket_frames += 1

    def everything(self) -> str:
        return "\n".join(f"{f.name}: {getattr(self, f.name)}" for f in fields(self))


def timed(what: str, timings: dict[str, float], step: Callable[[], object]) -> None:
    start = time.monotonic()
    step()
    timings[what] = time.monotonic() - start


@pytest.fixture
def lab_jrd(make_jrd: Callable[..., Jrd]) -> Jrd:
    return make_jrd().start()


def saved_outputs(notebook: Path) -> list[str]:
    """The plain-text results of the code cells of a notebook on disk."""
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(out.get("data", {}).get("text/plain", "")) for cell in cells for out in cell.get("outputs", [])]


def test_browser_logs_in_and_runs_a_cell(lab_jrd: Jrd, tmp_path: Path) -> None:
    chromium = tool("chromium")
    with sync_playwright() as pw:
        from playwright.sync_api import expect

        home = trusting_home(tmp_path / "home", lab_jrd.ca)
        base = f"https://{HOST}:{lab_jrd.port}"
        log = BrowserLog()
        timings: dict[str, float] = {}
        expect.set_options(timeout=PAGE_TIMEOUT_MS)
        assert not any("ignore-certificate" in flag for flag in CHROMIUM_FLAGS)
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True,
                                     env={**os.environ, "HOME": str(home)})
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}, ignore_https_errors=False).new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            log.attach(page)
            try:
                drive_the_lab(page, expect, base, timings)
                # Save through the browser (the first save asks for a name), and the kernel's answer is in
                # the file on the server.
                page.keyboard.press("Control+s")
                page.locator(".jp-Dialog input[type=text]").fill(f"{NOTEBOOK}.ipynb")
                page.get_by_role("button", name="Rename and Save").click()
                saved = lab_jrd.notebooks / f"{NOTEBOOK}.ipynb"
                wait_for(lambda: saved_outputs(saved) == ["2"], 30, f"{saved} with its output")
            finally:
                page.screenshot(path=str(SCREENSHOT))  # also on failure: it shows where the lab got stuck
        finally:
            print("\ntimings: " + ", ".join(f"{what}: {secs:.2f} s" for what, secs in timings.items()))
            print(log.everything())
            browser.close()

    everything = log.everything()
    assert "ERR_CERT" not in everything, everything
    assert any("/api/kernels/" in url and url.startswith(f"wss://{HOST}:") for url in log.websockets), everything
    assert log.websocket_frames > 0, everything
    assert not log.websocket_errors, everything
    assert not log.page_errors, everything
    cross_origin_or_ws = [line for line in log.console + log.failed_requests + log.http_errors
                          if re.search(r"websocket|cors|origin|upgrade", line, re.IGNORECASE)]
    assert not cross_origin_or_ws, everything
    assert not [line for line in log.http_errors if not EXPECTED_HTTP_ERRORS.match(line)], everything
    assert not log.failed_requests, everything


def drive_the_lab(page: Any, expect: Any, base: str, timings: dict[str, float]) -> None:
    """Log in through the form, open a new Python 3 notebook from the launcher and run `1+1` in it."""
    # An anonymous visit to /lab lands on the login form, over a certificate the browser verified.
    response = page.goto(f"{base}/lab")
    assert response is not None and response.ok, response
    assert re.fullmatch(rf"{re.escape(base)}/login\?next=%2Flab", page.url), page.url
    tls = response.security_details()
    assert tls is not None and tls.get("protocol") in ("TLS 1.3", "TLS 1.2"), tls
    assert "jrd" in tls.get("issuer", "").lower(), tls

    # The real form: type the password and submit it, as a person would.
    page.locator("input[type=password]").fill(PASSWORD)
    page.locator("input[type=password]").press("Enter")
    launcher_notebook = page.locator(".jp-LauncherCard[data-category='Notebook']").first

    def lab_interactive() -> None:
        page.wait_for_url(f"{base}/lab", wait_until="commit")
        expect(launcher_notebook).to_be_visible()

    timed("login submitted -> launcher visible", timings, lab_interactive)

    launcher_notebook.click()
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    editor = notebook.locator(".jp-Cell .cm-content").first

    def notebook_ready() -> None:
        expect(editor).to_be_visible()
        # JupyterLab silently drops a run that comes before its kernel connection is up, so wait for
        # the status bar's "Idle", which needs the kernel websocket through nginx connected.
        expect(page.get_by_role("contentinfo").get_by_role("button", name=re.compile(r" \| Idle$"))).to_be_visible()

    timed("launcher click -> notebook with idle kernel", timings, notebook_ready)

    editor.click()
    page.keyboard.type("1+1")
    expect(editor).to_have_text("1+1")

    def cell_ran() -> None:
        page.keyboard.press("Shift+Enter")
        expect(notebook.locator(".jp-OutputArea-output").first).to_have_text("2")

    timed("Shift+Enter -> output", timings, cell_ran)

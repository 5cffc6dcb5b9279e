"""An open JupyterLab tab that nobody touches does not keep the machine up, though it moves Jupyter's own activity."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import pytest

from conftest import Jrd, wait_for
from test_browser_lab import CHROMIUM_FLAGS, HOST, PAGE_TIMEOUT_MS, drive_the_lab, sync_playwright, tool, trusting_home
from test_idle_integration import RECORDER, runs

pytestmark = pytest.mark.integration


def test_an_untouched_open_lab_tab_lets_the_machine_stop(make_jrd: Callable[..., Jrd], tmp_path: Path) -> None:
    """Chromium logs in, runs a cell, then sits on /lab: Jupyter's last_activity keeps moving, yet jrd stops."""
    j = make_jrd()
    script = j.base / "recorder.py"
    script.write_text(RECORDER)
    marker = j.base / "stopped"
    command = json.dumps([sys.executable, str(script), str(marker), str(j.jupyter_port), "0"])
    j.write_config(f"[idle]\nshutdown_after_minutes = 0.5\nwarn_minutes = 0.1\ncommand = {command}\n")
    j.start()
    chromium = tool("chromium")
    with sync_playwright() as pw:
        from playwright.sync_api import expect

        expect.set_options(timeout=PAGE_TIMEOUT_MS)
        home = trusting_home(tmp_path / "home", j.ca)
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True,
                                     env={**os.environ, "HOME": str(home)})
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            drive_the_lab(page, expect, f"https://{HOST}:{j.port}", {})
            touched = time.time()
            # Hands off.  Jupyter's own idea of activity, read without moving it (api/status is untracked):
            s = j.login()
            moves, last = [], None
            while not runs(marker) and time.time() - touched < 120:
                r = s.get(j.url("/api/status"))
                if r.status_code != 200:
                    break  # jrd has stopped Jupyter
                stamp = r.json()["last_activity"]
                at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                if last is not None and at > last:
                    moves.append(round(at - touched, 1))
                last = at
                time.sleep(1)
            print(f"\nJupyter's last_activity moved at these seconds after the last touch: {moves}")
            wait_for(lambda: runs(marker), 60, "the stop with the tab open")
        finally:
            browser.close()
    stopped_after = runs(marker)[0][0] - touched
    print(f"stop command ran {stopped_after:.1f} s after the last touch (idle time 30 s)")
    assert moves, "the open tab was expected to move Jupyter's own last_activity (FIELD_NOTES)"
    assert stopped_after < 30 + 60

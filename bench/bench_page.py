"""Page weight: JupyterLab's first and repeat load on a tablet's connection, through jrd and bare.

Debian's Chromium (/usr/bin/chromium, driven by Playwright; never `playwright install`) with an
iPad-sized viewport (820×1180 CSS pixels, device scale 2) and the network emulated through the
DevTools protocol at 10 Mbit/s down and up with 100 ms of latency per request.  Two servers, trials
alternating between them:

* jrd (supervisord, nginx, JupyterLab) over HTTPS, by a name in its certificate, which Chromium trusts
  through an NSS database in a temporary HOME (no certificate error is ignored);
* the baseline, a bare `jupyter lab` on loopback with its defaults: plain HTTP and token login.

Each trial logs in through the login page in a fresh browser context (empty cache), clears the cache,
then times a navigation to /lab until the Launcher is visible (first load), and once more in the same
context with the cache it now has (repeat load).  Bytes are what came over the wire for the page's
HTTP requests until the Launcher showed (`encodedDataLength`: compressed bodies and headers); a request
answered from the browser's cache costs none and is not counted as over the wire.

Run:  .venv/bin/python bench/bench_page.py [--trials 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import figures
from baselines import TOKEN, BareLab
from conftest import PASSWORD, Jrd, ensure_test_user, short_tmp
from figures import Figure, Result
from test_browser_lab import CHROMIUM_FLAGS, HOST, sync_playwright, tool, trusting_home

VIEWPORT = {"width": 820, "height": 1180}  # an iPad Air in portrait, in CSS pixels
MBIT = 1_000_000 / 8  # bytes per second
NETWORK = {"offline": False, "latency": 100, "downloadThroughput": 10 * MBIT, "uploadThroughput": 10 * MBIT}
LAUNCHER = ".jp-LauncherCard[data-category='Notebook']"
TIMEOUT_MS = 180_000  # a first load at 10 Mbit/s on a busy 2-core machine


@dataclass
class Wire:
    """What one page load cost over the network, from the DevTools protocol's Network events."""

    received: int = 0
    requests: set[str] = field(default_factory=set)
    from_cache: set[str] = field(default_factory=set)

    def attach(self, cdp: Any) -> None:
        cdp.on("Network.requestWillBeSent",
               lambda e: self.requests.add(e["requestId"]) if e["request"]["url"].startswith("http") else None)
        cdp.on("Network.requestServedFromCache", lambda e: self.from_cache.add(e["requestId"]))
        cdp.on("Network.responseReceived", self._response)
        cdp.on("Network.loadingFinished", self._finished)

    def _response(self, e: dict[str, Any]) -> None:
        if e["response"].get("fromDiskCache") or e["response"].get("fromPrefetchCache"):
            self.from_cache.add(e["requestId"])

    def _finished(self, e: dict[str, Any]) -> None:
        if e["requestId"] in self.requests:
            self.received += int(e["encodedDataLength"])

    def reset(self) -> None:
        self.received = 0
        self.requests.clear()
        self.from_cache.clear()

    @property
    def over_the_wire(self) -> int:
        return len(self.requests - self.from_cache)


@dataclass
class Target:
    """A server to load the lab from: its base URL and the secret its login page takes."""

    name: str
    base: str
    secret: str


@dataclass
class Load:
    seconds: float
    megabytes: float
    requests: int
    from_cache: int


def timed_load(page: Any, wire: Wire, url: str) -> Load:
    """Navigate to `url` and wait for the Launcher; what that cost."""
    wire.reset()
    t0 = time.monotonic()
    page.goto(url, wait_until="commit")
    page.locator(LAUNCHER).first.wait_for(state="visible")
    seconds = time.monotonic() - t0
    return Load(seconds, wire.received / 1e6, wire.over_the_wire, len(wire.from_cache))


def log_in(page: Any, target: Target) -> None:
    """Through the login page (Jupyter's; it takes the password or the token), landing on a small API page."""
    page.goto(f"{target.base}/login?next=%2Fapi%2Fstatus")
    field = page.locator("#password_input")  # the bare server's page also offers to set a password
    field.fill(target.secret)
    field.press("Enter")
    page.wait_for_url("**/api/status")


def open_page(browser: Any, throttled: bool) -> tuple[Any, Any, Any]:
    """A fresh context (empty cache, no cookies) at a tablet's size; its page and DevTools session."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    if throttled:
        cdp.send("Network.emulateNetworkConditions", NETWORK)
    return context, page, cdp


def trial(browser: Any, target: Target) -> tuple[Load, Load]:
    """First load (cache cleared after the login) and repeat load (same context, warm cache)."""
    context, page, cdp = open_page(browser, throttled=True)
    try:
        wire = Wire()
        wire.attach(cdp)
        log_in(page, target)
        cdp.send("Network.clearBrowserCache")
        first = timed_load(page, wire, f"{target.base}/lab")
        time.sleep(2)  # let the lab settle as a person would, before going back to it
        repeat = timed_load(page, wire, f"{target.base}/lab")
        return first, repeat
    finally:
        context.close()


def launch(pw: Any, home: Path) -> Any:
    """Debian's Chromium with the test suite's flags, `jrd.test` resolved to loopback, `home` its HOME."""
    return pw.chromium.launch(executable_path=tool("chromium"), args=CHROMIUM_FLAGS, headless=True,
                              env={**os.environ, "HOME": str(home)})


def load_lab_once(j: Jrd | None, lab: BareLab | None, base: str | None = None) -> None:
    """Log in and load /lab once in a real browser, unthrottled: what an idle, serving stack has done."""
    home = Path(tempfile.mkdtemp(prefix="chromium-", dir="/tmp"))
    try:
        if j is not None:
            trusting_home(home / "home", j.ca)
            target = Target("jrd", f"https://{HOST}:{j.port}", PASSWORD)
        else:
            assert lab is not None
            (home / "home").mkdir()
            target = Target("bare", base or lab.url("").rstrip("/"), TOKEN)
        with sync_playwright() as pw:
            browser = launch(pw, home / "home")
            try:
                context, page, _ = open_page(browser, throttled=False)
                log_in(page, target)
                page.goto(f"{target.base}/lab")
                page.locator(LAUNCHER).first.wait_for(state="visible")
                context.close()
            finally:
                browser.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


READING = (
    "Bytes depend on what jrd's nginx compresses, and how, and on what it lets the browser keep: the figures "
    "measure jrd's nginx config as it is at this commit. The bare server sends JupyterLab's bundles "
    "uncompressed over HTTP/1.1.",
    "The bare baseline is plain HTTP on loopback and pays no TLS handshake, which favours it; jrd's times "
    "include TLS with a certificate the browser verifies.",
    "A repeat load still asks the server for what JupyterLab never lets the browser cache (settings, "
    "workspace, translations, the kernel, session and terminal lists), so its requests over the wire are "
    "the same for both; only their size differs.",
    "The seconds include Chromium's own work to start JupyterLab on 2 shared cores, which no server setting "
    "changes, and the emulated 100 ms of every request the page makes only after an earlier one answered.",
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--trials", type=int, default=5, help="first + repeat loads per server")


def run(args: argparse.Namespace) -> Result:
    user = ensure_test_user()
    j = Jrd(short_tmp(), user=user)
    lab = BareLab(user)
    home = Path(tempfile.mkdtemp(prefix="chromium-", dir="/tmp"))
    loads: dict[str, list[tuple[Load, Load]]] = {"bare": [], "jrd": []}
    try:
        j.start()
        lab.start()
        targets = [Target("bare", lab.url("").rstrip("/"), TOKEN), Target("jrd", f"https://{HOST}:{j.port}", PASSWORD)]
        with sync_playwright() as pw:
            browser = launch(pw, trusting_home(home / "home", j.ca))
            try:
                version = browser.version
                for i in range(args.trials):
                    for target in targets if i % 2 == 0 else targets[::-1]:
                        loads[target.name].append(trial(browser, target))
                        first, repeat = loads[target.name][-1]
                        print(f"{target.name}: first {first}, repeat {repeat}", file=sys.stderr, flush=True)
            finally:
                browser.close()
    finally:
        j.stop()
        lab.stop()
        shutil.rmtree(j.base, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    cached = {name: statistics.median(repeat.from_cache for _, repeat in v) for name, v in loads.items()}
    return Result(page_figures(loads), params={"chromium": version, "viewport": VIEWPORT, "network": NETWORK},
                  notes=[f"requests a repeat load answered from the browser's cache (median): "
                         f"jrd {cached['jrd']:.0f}, bare {cached['bare']:.0f}"])


MEASURES = (("megabytes", "MB", "MB over the wire"), ("seconds", "s", "seconds to the Launcher"),
            ("requests", "requests", "requests over the wire"))


def page_figures(loads: dict[str, list[tuple[Load, Load]]]) -> list[Figure]:
    """jrd's figures, each beside the bare baseline's, with the goals."""
    out = []
    for which, kind in enumerate(("first", "repeat")):
        for server in ("jrd", "bare"):
            for attr, unit, what in MEASURES:
                samples = [round(getattr(t[which], attr), 3) for t in loads[server]]
                if server == "jrd":
                    out.append(Figure(f"{kind}_{attr}", f"{kind} load, {what}: jrd (HTTPS)", unit, samples,
                                      baseline=f"bare_{kind}_{attr}"))
                else:
                    out.append(Figure(f"bare_{kind}_{attr}", f"baseline: {kind} load, {what}: bare `jupyter lab` "
                                      "(HTTP)", unit, samples))
    by_key = {f.key: f for f in out}
    goals = {"first_megabytes": ("≤ 1.2 MB", 1.2), "repeat_megabytes": ("≤ 0.1 MB", 0.1),
             "first_seconds": ("≤ 0.5× bare", 0.5 * by_key["bare_first_seconds"].median)}
    for key, (goal, limit) in goals.items():
        by_key[key].goal, by_key[key].met = goal, by_key[key].median <= limit
    first = by_key["first_seconds"]
    first.judged = f"{first.median / by_key['bare_first_seconds'].median:.2f}× bare (medians)"
    return out


if __name__ == "__main__":
    sys.exit(figures.main("page", __doc__, add_arguments, run, READING))

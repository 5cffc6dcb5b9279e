"""`make run` from a checkout wherever people clone one: root's 0700 home, and /tmp with a blank in its path.

Each test copies this checkout the way `git clone` would (with any uncommitted
changes), starts its `make run` with this venv (`USE_VENV`: a fresh install
takes minutes) and loopback ports, logs in through nginx with the password it
prints, fetches what nginx's workers serve from jrd's files, and runs a cell.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import BIN, REPO, ctrl_c_stops_it, execute, free_port, open_kernel_ws, shared_cache_dir, wait_for
from jrd.checkout import account_home, dev_places
from jrd.static_cache import cache_key, lab_static_dir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NOT_COPIED = shutil.ignore_patterns(".git", ".venv", ".jrd", "notebooks", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".ruff_cache")


@dataclass
class Run:
    """A `make run` in a copy of the checkout."""

    checkout: Path
    proc: subprocess.Popen[bytes]
    output: Path
    port: int
    home: Path  # where jrd keeps its files for this checkout

    @property
    def ca(self) -> Path:
        return self.home / "state" / "tls" / "ca.pem"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = str(self.ca)
        s.headers["Host"] = f"localhost:{self.port}"
        return s


def copy_checkout(dest: Path) -> None:
    shutil.copytree(REPO, dest, ignore=NOT_COPIED, symlinks=True)


def seed_bundle_cache(home: Path) -> None:
    """The shared compressed copy of JupyterLab's bundles: the test's jrd need not spend 20 s of CPU on its own."""
    key = cache_key(lab_static_dir())
    target = home / "cache" / "lab-static"
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(shared_cache_dir() / "lab-static" / str(key)), str(target)], check=True)


def make_run(checkout: Path, tmp: Path) -> Run:
    """`make run` in `checkout`, as root, on free loopback ports; returns once it says it serves."""
    if subprocess.run(["id", "jupyter"], capture_output=True).returncode != 0:
        pytest.skip("`make run` would create the account 'jupyter' on this machine")  # the tests make no accounts
    places = dev_places(checkout, as_root=True)
    seed_bundle_cache(places.home)
    port = free_port()
    config = tmp / "ports.toml"
    config.write_text(f'[jupyter]\nport = {free_port()}\n[nginx]\nlisten = ["127.0.0.1"]\nport = {port}\n'
                      f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    output = tmp / "make-run.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(["make", "run", f"USE_VENV={BIN.parent}", f"ARGS=--config {config}"], cwd=checkout,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=ctrl_c_stops_it)
    run = Run(checkout, proc, output, port, places.home)

    def serving() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"make run exited with {proc.returncode}:\n{run.text()}")
        # jrd prints the password line just after this one: wait for both.
        return "is serving JupyterLab" in run.text() and "password" in run.text().split("is serving JupyterLab")[1]

    try:
        wait_for(serving, 120, "`make run` to serve")
    except BaseException:
        stop(run)
        raise
    return run


def stop(run: Run) -> None:
    """Ctrl-C, as in a terminal: SIGINT to make's whole process group."""
    if run.proc.poll() is None:
        os.killpg(run.proc.pid, signal.SIGINT)
        try:
            run.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait(10)
            raise AssertionError(f"`make run` did not stop on Ctrl-C:\n{run.text()}") from None


def log_in_and_run_a_cell(run: Run) -> str:
    """Log in with the printed password, fetch what nginx serves from jrd's files, run a cell; its cwd."""
    match = re.search(r"Log in with the password  (\S+)  \(shown this once", run.text())
    assert match, run.text()
    s = run.session()
    s.get(run.url("/login"), headers={"Connection": "close"})
    r = s.post(run.url("/login"), data={"password": match.group(1), "_xsrf": s.cookies.get("_xsrf")},
               allow_redirects=False)
    assert r.status_code == 302, f"login failed: HTTP {r.status_code}"
    s.headers["X-XSRFToken"] = s.cookies.get("_xsrf")
    # nginx's workers (www-data) read these from jrd's runtime and cache dirs themselves.
    assert s.get(run.url("/jrd/ca.pem")).text == run.ca.read_text()
    bundle = next(p.name for p in sorted(lab_static_dir().glob("*.js")) if p.stat().st_size > 4096)
    r = s.get(run.url(f"/static/lab/{bundle}"), headers={"Accept-Encoding": "br"})
    assert r.status_code == 200 and r.headers.get("Content-Encoding") == "br", (r.status_code, r.headers)
    r = s.post(run.url("/api/kernels"), json={})
    assert r.status_code == 201, r.text
    ws = open_kernel_ws(run, s, r.json()["id"])  # type: ignore[arg-type]  # .port and .ca are all it needs
    try:
        assert execute(ws, "6 * 7") == "42"
        return execute(ws, "import os; os.getcwd()").strip("'")
    finally:
        ws.close()


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jrd-make-run-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_make_run_from_a_checkout_in_a_0700_directory(tmp: Path) -> None:
    """Like root's home: jrd keeps its files in /var/lib/jrd-dev, the notebooks in ~jupyter, and says so."""
    closed = Path(tempfile.mkdtemp(prefix="jrd-home-", dir="/var/tmp"))  # root's, mode 0700
    checkout = closed / "jrd"
    places = dev_places(checkout, as_root=True)
    notebooks_existed = places.notebooks.exists()
    run = None
    try:
        copy_checkout(checkout)
        assert places.closed_by == closed and places.home.is_relative_to(Path("/var/lib/jrd-dev"))
        run = make_run(checkout, tmp)
        assert f"Other accounts cannot enter {checkout} ({closed} is mode 0700)" in run.text()
        assert log_in_and_run_a_cell(run) == str(account_home("jupyter") / "notebooks")
        assert (places.home / "state" / "initial-password").exists()
        assert not (checkout / ".jrd").exists() and not (checkout / "notebooks").exists()
        assert oct(closed.stat().st_mode & 0o777) == "0o700"
    finally:
        if run is not None:
            stop(run)
        shutil.rmtree(closed, ignore_errors=True)
        shutil.rmtree(places.home, ignore_errors=True)
        if not notebooks_existed and places.notebooks.is_dir() and not any(places.notebooks.iterdir()):
            places.notebooks.rmdir()
    assert "jrd stopped" in run.text(), run.text()


def test_make_run_from_a_checkout_under_tmp_with_a_blank_in_its_path(tmp: Path) -> None:
    """Everything stays in the checkout, blanks and all: nginx's, supervisord's and Jupyter's configs quote them."""
    parent = Path(tempfile.mkdtemp(prefix="jrd make run ", dir="/tmp"))
    parent.chmod(0o755)
    checkout = parent / "my jrd"
    copy_checkout(checkout)
    run = None
    try:
        run = make_run(checkout, tmp)
        assert run.home == checkout / ".jrd" and "Other accounts cannot enter" not in run.text()
        assert log_in_and_run_a_cell(run) == str(checkout / "notebooks")
    finally:
        if run is not None:
            stop(run)
        shutil.rmtree(parent, ignore_errors=True)
    assert "jrd stopped" in run.text(), run.text()

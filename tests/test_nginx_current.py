"""jrd's nginx template on a current nginx (1.26, from Debian trixie's source), not only Debian 12's 1.22.

nginx 1.25.1 replaced `listen ... http2` with `http2 on;` and removed `ssl on;`;
this runs the whole stack on a current nginx so that the claim is tested, not assumed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jrd.nginx import probe
from conftest import REPO, Jrd, execute, open_kernel_ws, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def current_nginx() -> Path:
    res = subprocess.run([str(REPO / "scripts" / "build-current-nginx")], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"could not build a current nginx (scripts/build-current-nginx): {res.stderr[-2000:]}"
    path = Path(res.stdout.strip().splitlines()[-1])
    assert probe(path).version >= (1, 25, 1), probe(path)
    return path


def test_whole_stack_on_current_nginx(make_jrd, current_nginx: Path) -> None:  # type: ignore[no-untyped-def]
    j: Jrd = make_jrd()
    j.write_config(nginx=f'binary = "{current_nginx}"\n')
    res = j.jrd("check")
    assert res.returncode == 0, res.stderr
    j.start()
    pid = j.supervisor_pid("nginx")
    assert Path(f"/proc/{pid}/exe").resolve() == current_nginx.resolve()

    # nginx's own verdict on the rendered file, warnings included.
    conf = j.run_dir / "nginx" / "nginx.conf"
    assert "http2 on;" in conf.read_text()
    out = subprocess.run([str(current_nginx), "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "[warn]" not in out.stderr and "deprecated" not in out.stderr, out.stderr

    s = j.login()
    assert "JupyterLab" in s.get(j.url("/lab")).text
    kernel = s.post(j.url("/api/kernels"), json={"name": "python3"}).json()
    ws = open_kernel_ws(j, s, kernel["id"])
    try:
        assert execute(ws, "6*7") == "42"
    finally:
        ws.close()
    big = "y" * (2 * 1024 * 1024)
    r = s.put(j.url("/api/contents/big.txt"), json={"type": "file", "format": "text", "content": big})
    assert r.status_code in (200, 201)
    wait_for(j.serving, 10, "serving")

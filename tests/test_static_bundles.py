"""JupyterLab's bundles: compressed once into cache_dir, then served by nginx with no wider access than Jupyter's."""

from __future__ import annotations

import brotli
import gzip
import os
import re
from pathlib import Path
from typing import Callable

import pytest
import requests

from conftest import Jrd, wait_for
from jrd.nginx import NginxBuild
from jrd.render import render_nginx_conf
from jrd.static_cache import MIN_SIZE, build_copy, cache_key, lab_static_dir, ready_copy
from render_parsers import nginx_directives
from test_render import inputs

# --- the copy, built from a small stand-in for JupyterLab's static dir --------------------------


def fake_static(tmp_path: Path) -> Path:
    src = tmp_path / "static"
    src.mkdir()
    (src / "main.0123abcd.js").write_text("console.log('jupyter');\n" * 200)
    (src / "style.css").write_text("body { color: black }\n" * 50)
    (src / "tiny.js").write_text("1")
    (src / "font.woff2").write_bytes(os.urandom(2048))
    return src


def test_the_copy_holds_each_file_with_its_brotli_and_gzip_forms(tmp_path: Path) -> None:
    src = fake_static(tmp_path)
    root = tmp_path / "cache"
    assert ready_copy(root, src) is None
    copy = build_copy(src, root)
    assert ready_copy(root, src) == copy
    for f in src.iterdir():
        assert (copy / f.name).read_bytes() == f.read_bytes()
        assert (copy / f.name).stat().st_mode & 0o777 == 0o644
    main = (src / "main.0123abcd.js").read_bytes()
    assert brotli.decompress((copy / "main.0123abcd.js.br").read_bytes()) == main
    assert gzip.decompress((copy / "main.0123abcd.js.gz").read_bytes()) == main
    assert len((copy / "main.0123abcd.js.br").read_bytes()) < len(main) / 10
    # Too small to gain, or compressed already: served as they are.
    assert not (copy / "tiny.js.br").exists() and not (copy / "font.woff2.br").exists()


def test_a_new_jupyterlab_build_gets_a_new_copy_and_the_old_one_goes(tmp_path: Path) -> None:
    src = fake_static(tmp_path)
    root = tmp_path / "cache"
    old = build_copy(src, root)
    (src / "main.0123abcd.js").write_text("console.log('upgraded');\n" * 300)
    assert ready_copy(root, src) is None, "a changed bundle must not be served from the old copy"
    new = build_copy(src, root)
    assert new != old and not old.exists()
    assert (new / "main.0123abcd.js").read_bytes() == (src / "main.0123abcd.js").read_bytes()


def test_an_unfinished_copy_is_never_offered(tmp_path: Path) -> None:
    src = fake_static(tmp_path)
    root = tmp_path / "cache"
    key = cache_key(src)
    (root / key).mkdir(parents=True)  # a copy that a killed builder left without its marker
    (root / key / "main.0123abcd.js").write_text("truncated")
    assert ready_copy(root, src) is None
    assert cache_key(tmp_path / "nothing-here") is None


# --- rendering -----------------------------------------------------------------------------------


def test_brotli_modules_are_loaded_only_when_built_for_this_nginx(tmp_path: Path) -> None:
    for name in ("ngx_http_brotli_filter_module", "ngx_http_brotli_static_module"):
        (tmp_path / f"{name}.so").write_bytes(b"")
    debian = NginxBuild((1, 22, 1), frozenset({"http_sub", "http_gzip_static"}), tmp_path)
    conf = render_nginx_conf(inputs(nginx_build=debian, static_bundles=Path("/var/cache/jrd/lab-static/k")))
    assert f"load_module {tmp_path}/ngx_http_brotli_filter_module.so;" in conf
    assert "brotli on;" in conf and "brotli_static on;" in conf and "gzip_static on;" in conf
    assert 'sub_filter "<head>"' in conf
    # Turned off, or an nginx without the modules (a build from source): gzip alone, nothing loaded.
    off = render_nginx_conf(inputs("[nginx]\nbrotli = false\n", nginx_build=debian))
    plain = render_nginx_conf(inputs(nginx_build=NginxBuild((1, 27, 3), frozenset(), None)))
    for conf in (off, plain):
        assert "load_module" not in conf and "brotli" not in conf and "gzip on;" in conf
    # Without the sub module there is no heal.js, but the restarting page stays.
    assert "sub_filter" not in plain and "error_page 502 504 =503 $jrd_down_uri;" in plain


def test_the_page_gets_preload_hints_for_the_copy_s_startup_bundles_and_nothing_else() -> None:
    debian = NginxBuild((1, 22, 1), frozenset({"http_sub"}), None)
    names = ("jlab_core.0123abcd.js?v=0123abcd", '9797.0123abcd.js"><script src="//x', "219.89abcdef.js")
    conf = render_nginx_conf(inputs("[jupyter]\nbase_url = \"/nb/\"\n", nginx_build=debian,
                                    static_bundles=Path("/var/cache/jrd/lab-static/k"), static_preload=names))
    (sub,) = [args for name, args in nginx_directives(conf) if name == "sub_filter"]
    assert sub[1] == ('<head><link rel="preload" as="script" href="/nb/static/lab/jlab_core.0123abcd.js?v=0123abcd">'
                      '<link rel="preload" as="script" href="/nb/static/lab/219.89abcdef.js">'
                      f'<script defer src="/jrd/heal.js?v={sub[1].split("?v=")[-1].split(chr(34))[0]}"></script>')
    # Without a copy (Jupyter serving the bundles) the page is left as it was, but for heal.js.
    without_copy = render_nginx_conf(inputs(nginx_build=debian, static_preload=names))
    (sub,) = [args for name, args in nginx_directives(without_copy) if name == "sub_filter"]
    assert "preload" not in sub[1]


def test_without_a_copy_nginx_passes_the_bundles_to_jupyter() -> None:
    conf = render_nginx_conf(inputs())
    assert "/static/lab/" not in conf


# --- the real thing --------------------------------------------------------------------------------


@pytest.mark.integration
def test_nginx_serves_the_bundles_from_a_copy_made_in_the_background(make_jrd: Callable[..., Jrd]) -> None:
    j = make_jrd()
    cache = j.base / "cache"  # reachable by nginx's workers (pytest's tmp_path is private)
    j.write_config(paths=f'cache_dir = "{cache}"\n')
    j.start()
    jupyter_before = j.supervisor_pid("jupyter")
    static = lab_static_dir()
    main = next(static.glob("main.*.js"))
    url = j.url(f"/static/lab/{main.name}")
    # Before the copy: Jupyter serves them, compressed on the fly by nginx.
    wait_for(lambda: "nginx serves them from now on" in j.read_output(), 180, "the compressed copy")
    wait_for(lambda: "location ^~ /static/lab/" in (j.run_dir / "nginx" / "nginx.conf").read_text(), 60,
             "nginx.conf with the copy")
    copy = ready_copy(cache / "lab-static", static)
    assert copy is not None
    s = j.session()  # not logged in: Jupyter serves these to anyone, and so does nginx; no more than that

    def served(encoding: str) -> requests.Response:
        r = s.get(url, headers={"Accept-Encoding": encoding}, stream=True, timeout=30)
        r.raw.decode_content = False
        r._content = r.raw.read()
        return r

    wait_for(lambda: served("br").headers.get("ETag", "W/").startswith('"'), 30, "nginx's own ETag")
    br, gz, raw = served("br"), served("gzip"), served("identity")
    for r in (br, gz, raw):
        assert r.status_code == 200, r.status_code
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert r.headers["Content-Type"] == "application/javascript"
    assert br.headers["Content-Encoding"] == "br" and brotli.decompress(br.content) == main.read_bytes()
    assert gz.headers["Content-Encoding"] == "gzip" and gzip.decompress(gz.content) == main.read_bytes()
    assert raw.content == main.read_bytes()
    assert br.content == (copy / f"{main.name}.br").read_bytes(), "not the precompressed file"
    # No wider access: what Jupyter keeps behind its login stays there.
    assert s.get(j.url("/lab/api/settings"), timeout=30).status_code == 403
    direct = requests.get(f"http://127.0.0.1:{j.jupyter_port}/static/lab/{main.name}", timeout=30)
    assert direct.status_code == 200 and direct.content == main.read_bytes()
    # The page names the bundles it loads first (main.js, then jlab_core), each served from the copy.
    logged_in = j.login()
    page = logged_in.get(j.url("/lab"), timeout=30).text
    hints = re.findall(r'<link rel="preload" as="script" href="(/static/lab/[^"]+)">', page)
    assert hints and hints[0].startswith("/static/lab/main.") and hints[1].startswith("/static/lab/jlab_core."), hints
    for href in hints:
        r = s.get(j.url(href), headers={"Accept-Encoding": "br"}, timeout=30)
        tiny = (copy / href.split("/")[-1].split("?")[0]).stat().st_size < MIN_SIZE  # not worth compressing
        assert r.status_code == 200 and r.headers.get("Content-Encoding") == (None if tiny else "br"), href
    # A file gone from the copy still comes, from Jupyter.
    (copy / main.name).unlink()
    (copy / f"{main.name}.br").unlink()
    (copy / f"{main.name}.gz").unlink()
    assert served("identity").content == main.read_bytes()
    # Dynamic answers get brotli on the fly; and none of this restarted Jupyter.
    settings = logged_in.get(j.url("/lab/api/settings"), headers={"Accept-Encoding": "br"}, timeout=30)
    assert settings.status_code == 200 and settings.headers["Content-Encoding"] == "br"
    icon = s.get(j.url("/static/favicons/favicon.ico"), headers={"Accept-Encoding": "br"}, timeout=30)
    assert icon.headers["Content-Type"] == "image/vnd.microsoft.icon" and icon.headers["Content-Encoding"] == "br"
    assert j.supervisor_pid("jupyter") == jupyter_before


def test_a_copy_in_a_private_directory_is_not_offered_to_nginx(tmp_path: Path) -> None:
    from jrd.preflight import readable_dir_by
    from jrd.render import Account

    nobody = Account("nobody", 65534, 65534, Path("/nonexistent"))
    private = tmp_path / "private" / "copy"
    private.mkdir(parents=True)
    private.chmod(0o755)
    (tmp_path / "private").chmod(0o700)
    assert not readable_dir_by(private, nobody)
    (tmp_path / "private").chmod(0o711)
    assert readable_dir_by(private, nobody) == readable_dir_by(tmp_path, nobody)

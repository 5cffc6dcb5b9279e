"""Which bundles a JupyterLab page loads first (jrd.preload), read from the runtime in main.js."""

from __future__ import annotations

from pathlib import Path

from jrd.preload import MAX_HINTS, read_startup_bundles, startup_bundles
from jrd.static_cache import lab_static_dir

# The shape of rspack's runtime in JupyterLab 4's main.js, cut down: the chunk file names
# (one chunk named, the others by id, each with its hash) and the bootstrap's chunks.
RUNTIME = ('__webpack_require__.u=e=>""+(5531===e?"jlab_core":e)+"."+({219:"2389a53d",5531:"8811dd27"})[e]'
           '+".js?v="+({219:"2389a53d",5531:"8811dd27"})[e];'
           'let n=(await Promise.all([t.e(5531),t.e(219),t.e(1773),t.e(9797)]).then(t.bind(t,81220))).main;')
FILES = ["main.efd36b46.js", "jlab_core.8811dd27.js", "219.2389a53d.js", "1773.x.css", "5531.dead.js"]


def test_the_bootstrap_chunks_that_have_a_file_in_order_with_their_version() -> None:
    # 1773 has no file (shared-module bookkeeping), 9797 none in this build: both left out.
    assert startup_bundles(RUNTIME, FILES) == ["jlab_core.8811dd27.js?v=8811dd27", "219.2389a53d.js?v=2389a53d"]


def test_a_runtime_that_asks_for_no_version_gets_none() -> None:
    unversioned = RUNTIME.replace('+".js?v="+({219:"2389a53d",5531:"8811dd27"})[e]', '+".js"')
    assert startup_bundles(unversioned, FILES) == ["jlab_core.8811dd27.js", "219.2389a53d.js"]


def test_a_main_js_that_does_not_read_that_way_gets_no_hints(tmp_path: Path) -> None:
    assert startup_bundles("console.log('another bundler')", FILES) == []
    (tmp_path / "main.0123abcd.js").write_text("console.log('another bundler')")
    assert read_startup_bundles(tmp_path) == []
    assert read_startup_bundles(tmp_path / "missing") == []
    (tmp_path / "main.89abcdef.js").write_text(RUNTIME)  # two builds' main.js: which one is unknown
    assert read_startup_bundles(tmp_path) == []


def test_the_installed_jupyterlab_preloads_its_core_first_and_each_file_exists() -> None:
    static = lab_static_dir()
    hints = read_startup_bundles(static)
    assert hints and hints[0].startswith("jlab_core."), hints
    assert len(hints) <= MAX_HINTS
    for hint in hints:
        name, _, version = hint.partition("?v=")
        assert (static / name).is_file(), hint
        assert version and version in name, hint

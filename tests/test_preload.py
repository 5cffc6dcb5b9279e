"""Which bundles a JupyterLab page loads before it starts (jrd.preload), read from the runtime in main.js."""

from __future__ import annotations

from pathlib import Path

from jrd.preload import MAX_HINTS, read_startup_bundles, startup_bundles
from jrd.static_cache import lab_static_dir

# The shape of rspack's runtime in JupyterLab 4's main.js, cut down: the chunk file names
# (one chunk named, the others by id, each with its hash), the bootstrap's chunks, which shared
# modules each chunk consumes, and who provides them.
NAMES = ('__webpack_require__.u=e=>""+(5531===e?"jlab_core":e)+"."+({219:"2389a53d",5531:"8811dd27"})[e]'
         '+".js?v="+({219:"2389a53d",5531:"8811dd27"})[e];')
BOOTSTRAP = 'let n=(await Promise.all([t.e(5531),t.e(219),t.e(1773),t.e(9797)]).then(t.bind(t,81220))).main;'
SHARING = (
    '__webpack_require__.initializeSharingData={scopeToSharingDataMapping:{default:['
    # Two versions of "color": the newest that the consumer accepts wins.
    '{name:"color",version:"3.2.1",factory:()=>__webpack_require__.e(3118).then(()=>()=>__webpack_require__(1)),'
    'eager:0,requiredVersion:"^5.0.0"},'
    '{name:"color",version:"5.0.0",factory:()=>__webpack_require__.e(4607).then(()=>()=>__webpack_require__(2)),'
    'eager:0,requiredVersion:"^5.0.0"},'
    '{name:"react",version:"18.3.1",factory:()=>Promise.all([__webpack_require__.e(7178),__webpack_require__.e(8)])'
    '.then(()=>()=>__webpack_require__(3)),eager:0,requiredVersion:"^18.2.0"},'
    '{name:"old-lib",version:"1.9.0",factory:()=>__webpack_require__.e(66).then(()=>()=>__webpack_require__(4)),'
    'eager:0}]}};'
)
CONSUMES = (
    '__webpack_require__.consumesLoadingData={chunkMapping:{5531:["10","11"],219:["12"],4607:["13"]},'
    'moduleIdToConsumeDataMapping:{'
    '10:{shareScope:"default",shareKey:"color",import:"color",requiredVersion:"^5.0.0",strictVersion:!0,'
    'fallback:()=>__webpack_require__.e(3118).then(()=>()=>__webpack_require__(1)),treeShakingMode:null},'
    '11:{shareScope:"default",shareKey:"react",import:"react",requiredVersion:"^18.2.0",singleton:!0,'
    'fallback:()=>Promise.all([__webpack_require__.e(9),__webpack_require__.e(8)]).then(()=>()=>__webpack_require__(3)),'
    'treeShakingMode:null},'
    # Nobody provides a 2.x: the module's own fallback loads.
    '12:{shareScope:"default",shareKey:"old-lib",import:"old-lib",requiredVersion:"~2.0.0",'
    'fallback:()=>__webpack_require__.e(77).then(()=>()=>__webpack_require__(5)),treeShakingMode:null},'
    # Loading 4607 consumes a module whose fallback needs no chunk (eager).
    '13:{shareScope:"default",shareKey:"tiny",import:"tiny",requiredVersion:"^1.0.0",'
    'fallback:()=>()=>__webpack_require__(6),treeShakingMode:null}'
    '},initialConsumes:[]};'
)
RUNTIME = NAMES + BOOTSTRAP
FEDERATED = NAMES + SHARING + CONSUMES + BOOTSTRAP
FILES = ["main.efd36b46.js", "jlab_core.8811dd27.js", "219.2389a53d.js", "1773.x.css", "5531.dead.js"]
MORE = ["4607.0a0a0a0a.js", "3118.0b0b0b0b.js", "7178.0c0c0c0c.js", "8.0d0d0d0d.js", "9.0e0e0e0e.js",
        "77.0f0f0f0f.js", "66.01010101.js"]


def test_the_bootstrap_chunks_that_have_a_file_in_order_with_their_version() -> None:
    # 1773 has no file (shared-module bookkeeping), 9797 none in this build: both left out.
    assert startup_bundles(RUNTIME, FILES) == ["jlab_core.8811dd27.js?v=8811dd27", "219.2389a53d.js?v=2389a53d"]


def test_then_the_bundles_of_the_shared_modules_they_consume_as_the_runtime_resolves_them() -> None:
    names = [hint.split(".")[0] for hint in startup_bundles(FEDERATED, FILES + MORE)]
    # jlab_core consumes color (the newest accepted provider: 5.0.0 in 4607, not 3.2.1 in 3118) and react
    # (its provider's 7178 and 8, not the fallback's 9); 219 consumes an old-lib nobody provides in ~2.0,
    # so its fallback (77); 4607 in turn consumes one that needs no chunk.
    assert names == ["jlab_core", "219", "4607", "7178", "8", "77"]


def test_a_caret_on_a_zero_major_version_fixes_the_minor() -> None:
    zero = FEDERATED.replace('"18.3.1"', '"0.3.1"').replace('"^18.2.0"', '"^0.2.0"')
    names = [hint.split(".")[0] for hint in startup_bundles(zero, FILES + MORE)]
    assert "7178" not in names and "9" in names  # 0.3.1 does not satisfy ^0.2.0: the fallback loads


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


def test_main_js_comes_first_as_the_page_names_it(tmp_path: Path) -> None:
    for name in FILES + MORE:
        (tmp_path / name).write_text(FEDERATED if name.startswith("main.") else "")
    assert read_startup_bundles(tmp_path)[0] == "jlab_core.8811dd27.js?v=8811dd27"  # no index.html: no main
    (tmp_path / "index.html").write_text(
        '<script defer="defer" src="{{page_config.fullStaticUrl}}/main.efd36b46.js?v=efd36b46"></script>')
    hints = read_startup_bundles(tmp_path)
    assert hints[:2] == ["main.efd36b46.js?v=efd36b46", "jlab_core.8811dd27.js?v=8811dd27"]


def test_the_installed_jupyterlab_preloads_main_then_its_core_and_each_file_exists() -> None:
    static = lab_static_dir()
    hints = read_startup_bundles(static)
    assert hints[0].startswith("main.") and hints[1].startswith("jlab_core."), hints
    # JupyterLab 4.6 needs about 40 bundles before it starts; the consumes were followed.
    assert 20 < len(hints) <= MAX_HINTS, hints
    assert len(set(hints)) == len(hints)
    for hint in hints:
        name, _, version = hint.partition("?v=")
        assert (static / name).is_file(), hint
        assert version and version in name, hint

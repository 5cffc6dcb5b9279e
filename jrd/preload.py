"""Which of JupyterLab's bundles every page needs first, for `<link rel="preload">` hints.

A JupyterLab page loads `main.<hash>.js`, which first fetches the federated
extensions' entry files and only then the bundles of JupyterLab's core
(`jlab_core.<hash>.js`, about 0.5 MB compressed, and a few small ones): on a
link with 100 ms of latency that is two round trips before the largest
download starts.  Named in the page's `<head>`, they download while main.js
does.  The names come from main.js itself (rspack's runtime): the chunk ids
of the bootstrap (`Promise.all([t.e(5531), ...]).then(...).main`) and the
chunk file names (`5531===e?"jlab_core":e`, `".js?v="+hash`); a chunk with no
file (shared-module bookkeeping) is left out.  A build whose main.js does not
read that way gets no hints, which costs nothing but the head start.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

_MAIN = re.compile(r"^main\.[0-9a-f]{8,}\.js$")
_BOOTSTRAP = re.compile(r"Promise\.all\(\[((?:\w+\.e\(\d+\),?)+)\]\)\.then\(\w+\.bind\(\w+,\d+\)\)\)\.main\b")
_CHUNK_ID = re.compile(r"\.e\((\d+)\)")
_NAMED_CHUNK = re.compile(r"\b(\d+)===e\?\"([\w-]+)\"")
_HASHED = re.compile(r"^(?P<name>[\w-]+)\.(?P<hash>[0-9a-f]{8,})\.js$")
# Never more hints than this: a page that preloads everything preloads nothing first.
MAX_HINTS = 8


def startup_bundles(main_js: str, files: Iterable[str]) -> list[str]:
    """The bundles (file name, and `?v=HASH` when the runtime asks for it so) the bootstrap loads first."""
    bootstrap = _BOOTSTRAP.search(main_js)
    if bootstrap is None:
        return []
    named = dict(_NAMED_CHUNK.findall(main_js))
    by_name: dict[str, str] = {}
    for file in files:
        if m := _HASHED.match(file):
            by_name.setdefault(m["name"], file)
    versioned = '".js?v="' in main_js
    out: list[str] = []
    for chunk in _CHUNK_ID.findall(bootstrap.group(1)):
        file = by_name.get(named.get(chunk, chunk))
        if file is None or file in out:
            continue
        out.append(file + (f"?v={_HASHED.match(file)['hash']}" if versioned else ""))  # type: ignore[index]
    return out[:MAX_HINTS]


def read_startup_bundles(static_dir: Path) -> list[str]:
    """startup_bundles() of the JupyterLab build in `static_dir`; [] if it has no single readable main.js."""
    try:
        files = sorted(p.name for p in static_dir.iterdir())
        mains = [name for name in files if _MAIN.match(name)]
        if len(mains) != 1:
            return []
        main_js = (static_dir / mains[0]).read_text(errors="replace")
    except OSError:
        return []
    return startup_bundles(main_js, files)

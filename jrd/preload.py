"""Which of JupyterLab's bundles every page needs before it can start, for `<link rel="preload">` hints.

A JupyterLab page loads `main.<hash>.js`, which first fetches the federated
extensions' entry files, then the bundles of its bootstrap (`jlab_core.<hash>.js`,
about 0.5 MB compressed, and a few small ones) and, for each shared package
those bundles use (React, CodeMirror, Lumino, ...), the bundles that provide it:
about 40 files that all arrive before the page can start.  On a link with
100 ms of latency, asked for only as main.js runs, they come two and three
round trips late.  Named in the page's `<head>`, they download while main.js does.

The names come from main.js itself (rspack's module-federation runtime):

* the bootstrap's chunk ids (`Promise.all([t.e(5531), ...]).then(...).main`);
* `consumesLoadingData`: which shared modules each chunk consumes
  (`chunkMapping: {chunk: ["module", ...]}`), and each module's share key and
  fallback chunks (`moduleIdToConsumeDataMapping`);
* `initializeSharingData`: the chunks that provide each share key (what the page
  actually loads for it, when no extension provides a newer version);
* the chunk file names (`5531===e?"jlab_core":e`, `".js?v="+hash`); a chunk with
  no file (shared-module bookkeeping) is left out.

Following the consumes from the bootstrap chunks gives the closure.  A build
whose main.js does not read that way gets hints for the bootstrap alone, or none:
that costs nothing but the head start.
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
_CHUNK_MAPPING = re.compile(r"consumesLoadingData=\{chunkMapping:\{(?P<body>[^{}]*)\}")
_CHUNK_MODULES = re.compile(r"(\d+):\[([^\]]*)\]")
_CONSUME = re.compile(r'(?:\{|,)(\d+):\{shareScope:"[^"]*",shareKey:"(?P<key>[^"]+)"')
_FALLBACK = re.compile(r"fallback:\(\)=>(?P<load>.*?)\.then\(")
_REQUIRED = re.compile(r'requiredVersion:"(?P<range>[^"]*)"')
_PROVIDE = re.compile(r'\{name:"(?P<key>[^"]+)",version:"(?P<version>[^"]*)",factory:\(\)=>(?P<load>[^{}]*?)\.then\(')
# How index.html names main.js (MAIN), with the version the page asks for.
_PAGE_MAIN = re.compile(r'src="\{\{page_config\.fullStaticUrl\}\}/(MAIN(?:\?v=[0-9a-f]+)?)"')
# A bound on the page's head: far above what a JupyterLab page needs (about 40).
MAX_HINTS = 80


def startup_bundles(main_js: str, files: Iterable[str]) -> list[str]:
    """The bundles (file name, and `?v=HASH` when the runtime asks for it so) a page loads before it starts.

    The bootstrap's first, in its order, then those of the shared modules they consume.
    """
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
    for chunk in _closure(_CHUNK_ID.findall(bootstrap.group(1)), _consumed_chunks(main_js)):
        file = by_name.get(named.get(chunk, chunk))
        if file is None or file in out:
            continue
        out.append(file + (f"?v={_HASHED.match(file)['hash']}" if versioned else ""))  # type: ignore[index]
    return out[:MAX_HINTS]


def _closure(start: list[str], consumed: dict[str, list[str]]) -> list[str]:
    """`start`, then every chunk that loading them loads in turn, breadth first, each once."""
    order, seen = [], set()
    queue = list(start)
    while queue:
        chunk = queue.pop(0)
        if chunk in seen:
            continue
        seen.add(chunk)
        order.append(chunk)
        queue.extend(consumed.get(chunk, ()))
    return order


def _consumed_chunks(main_js: str) -> dict[str, list[str]]:
    """For each chunk, the chunks that load the shared modules it consumes; {} if main.js does not say."""
    mapping = _CHUNK_MAPPING.search(main_js)
    start = main_js.find("moduleIdToConsumeDataMapping:{")
    if mapping is None or start < 0:
        return {}
    end = main_js.find("initialConsumes:", start)
    consumes = main_js[start:end if end > 0 else len(main_js)]
    provided: dict[str, list[tuple[tuple[int, ...], list[str]]]] = {}
    sharing = main_js.find("initializeSharingData=")
    for m in _PROVIDE.finditer(main_js[sharing:] if sharing >= 0 else ""):
        provided.setdefault(m["key"], []).append((_version(m["version"]), _CHUNK_ID.findall(m["load"])))
    # Each consumed module's text runs to the next one's start: its required version and fallback.
    loads: dict[str, list[str]] = {}
    heads = list(_CONSUME.finditer(consumes))
    for head, nxt in zip(heads, [*heads[1:], None]):
        text = consumes[head.end():nxt.start() if nxt else len(consumes)]
        required = _REQUIRED.search(text)
        fallback = _FALLBACK.search(text)
        loads[head.group(1)] = _resolve(provided.get(head["key"], []), required["range"] if required else "",
                                        _CHUNK_ID.findall(fallback["load"]) if fallback else [])
    out: dict[str, list[str]] = {}
    for chunk, modules in _CHUNK_MODULES.findall(mapping["body"]):
        for module in re.findall(r'"(\d+)"', modules):
            out.setdefault(chunk, []).extend(loads.get(module, []))
    return out


def _version(text: str) -> tuple[int, ...]:
    """`4.6.6` -> (4, 6, 6); a pre-release's tag is dropped (`1.0.0-rc.1` -> (1, 0, 0))."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("-")[0])[:3])


def _resolve(offers: list[tuple[tuple[int, ...], list[str]]], required: str, fallback: list[str]) -> list[str]:
    """The chunks of the newest provided version that `required` accepts (`^`, `~` or exact), else `fallback`."""
    want = _version(required)
    if not want or not required[:1].isdigit() and required[:1] not in "^~":
        return fallback

    def accepts(have: tuple[int, ...]) -> bool:
        if have < want:
            return False
        if required[0] == "^":
            fixed = next((i for i, n in enumerate(want) if n), len(want) - 1) + 1  # ^0.2.3 fixes 0.2
            return have[:fixed] == want[:fixed]
        if required[0] == "~":
            return have[:2] == want[:2]
        return have == want

    accepted = [(have, chunks) for have, chunks in offers if accepts(have)]
    return max(accepted)[1] if accepted else fallback


def read_startup_bundles(static_dir: Path) -> list[str]:
    """main.js as the page names it, then startup_bundles(), for the JupyterLab build in `static_dir`.

    [] if it has no single readable main.js.  main.js comes first: fetched in the order named, the
    bundles would otherwise hold back the one script that starts the page.
    """
    try:
        files = sorted(p.name for p in static_dir.iterdir())
        mains = [name for name in files if _MAIN.match(name)]
        if len(mains) != 1:
            return []
        main_js = (static_dir / mains[0]).read_text(errors="replace")
        page = (static_dir / "index.html").read_text(errors="replace") if "index.html" in files else ""
    except OSError:
        return []
    bundles = startup_bundles(main_js, files)
    named = re.search(_PAGE_MAIN.pattern.replace("MAIN", re.escape(mains[0])), page)
    return ([named.group(1)] if named and bundles else []) + bundles[:MAX_HINTS - 1]

"""JupyterLab's bundles, compressed once, for nginx to serve itself.

Jupyter serves `/static/lab/` to anyone, without a login, and marks every
file there immutable (the names carry content hashes).  nginx serving the
very same files, from a copy with a `.br` (brotli, quality 11) and a `.gz`
(level 9) beside each, gives no wider access, and a tablet downloads
about a quarter less than with nginx's on-the-fly compression, with no
compression work per request.

The copy is keyed by the listing of JupyterLab's static dir (names, sizes
and modification times), so an upgrade of JupyterLab makes a new one.  It
is built by a separate, niced process (`python -m jrd.static_cache SRC
DEST`), since quality-11 brotli takes some 20 s of CPU for JupyterLab's
15 MB; until it is complete, nginx passes those requests to Jupyter.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

from jrd import preflight
from jrd.extension import Context, Extension
from jrd.preload import read_startup_bundles
from jrd.render import Account, RenderInputs

log = logging.getLogger("jrd")

# Worth compressing: text, and fonts that are not compressed already (woff and woff2 are).
COMPRESSIBLE = frozenset({".js", ".css", ".json", ".html", ".svg", ".txt", ".map", ".ico", ".ttf", ".eot"})
# Smaller files gain less than the bytes of a second lookup cost.
MIN_SIZE = 256
BUILD_POLL_SECONDS = 2.0


def lab_static_dir(env: dict[str, str] | None = None, prefix: str = sys.prefix) -> Path:
    """Where the JupyterLab beside jrd keeps its built bundles (JupyterLab's own rule for its app dir)."""
    env = os.environ if env is None else env
    app_dir = env.get("JUPYTERLAB_DIR") or str(Path(prefix) / "share" / "jupyter" / "lab")
    return Path(app_dir) / "static"


def cache_key(static_dir: Path) -> str | None:
    """A name for this build of JupyterLab's bundles, or None if there are none to serve."""
    try:
        entries = sorted(os.scandir(static_dir), key=lambda e: e.name)
    except OSError:
        return None
    digest = hashlib.sha256(str(static_dir).encode())
    for entry in entries:
        if entry.is_file(follow_symlinks=True):
            st = entry.stat()
            digest.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16] if entries else None


def ready_copy(cache_root: Path, static_dir: Path) -> Path | None:
    """The complete compressed copy of `static_dir`'s current bundles, if one has been built."""
    key = cache_key(static_dir)
    if key is None:
        return None
    copy = cache_root / key
    return copy if (copy / ".complete").is_file() else None


def build_copy(static_dir: Path, cache_root: Path) -> Path:
    """Copy and compress `static_dir` into `cache_root/KEY`; a complete copy is only ever renamed into place."""
    key = cache_key(static_dir)
    if key is None:
        raise FileNotFoundError(f"no JupyterLab bundles in {static_dir}")
    final = cache_root / key
    if (final / ".complete").is_file():
        return final
    cache_root.mkdir(mode=0o755, parents=True, exist_ok=True)
    work = cache_root / f".{key}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    brotli = _brotli()
    for src in sorted(static_dir.iterdir()):
        if not src.is_file():
            continue
        data = src.read_bytes()
        _write(work / src.name, data)
        if src.suffix in COMPRESSIBLE and len(data) >= MIN_SIZE:
            _write(work / (src.name + ".gz"), gzip.compress(data, 9, mtime=0))
            if brotli is not None:
                _write(work / (src.name + ".br"), brotli.compress(data, quality=11))
    _write(work / ".complete", key.encode())
    try:
        work.rename(final)
    except OSError:  # another jrd finished the same copy first
        shutil.rmtree(work, ignore_errors=True)
    _prune(cache_root, keep=key)
    return final


def _brotli():  # type: ignore[no-untyped-def]
    try:
        import brotli  # the `brotli` package; without it the copy has only .gz files
    except ImportError:
        return None
    return brotli


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    path.chmod(0o644)


def _prune(cache_root: Path, keep: str) -> None:
    """Drop copies of earlier JupyterLab builds (never one being built: those start with a dot)."""
    for entry in cache_root.iterdir():
        if entry.name != keep and not entry.name.startswith(".") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def nginx_worker(inputs: RenderInputs) -> Account:
    """The account nginx's workers run as: the configured worker user under root, else jrd's own."""
    if inputs.running_as_root:
        pw = pwd.getpwnam(inputs.nginx_worker_user)
    else:
        pw = pwd.getpwuid(os.geteuid())
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


class StaticBundles(Extension):
    """Offers nginx the compressed copy when it exists; builds it in the background when it does not."""

    def __init__(self, static_dir: Path | None = None) -> None:
        self.static_dir = static_dir or lab_static_dir()
        self._ctx: Context | None = None
        self._builder: subprocess.Popen[bytes] | None = None
        self._unreadable: Path | None = None

    def cache_root(self, inputs: RenderInputs) -> Path:
        return inputs.config.paths.cache_dir / "lab-static"

    def contribute(self, inputs: RenderInputs) -> RenderInputs:
        if not inputs.config.nginx.static_bundles:
            return inputs
        copy = ready_copy(self.cache_root(inputs), self.static_dir)
        if copy is None:
            return inputs
        if not preflight.readable_dir_by(copy, nginx_worker(inputs)):
            if copy != self._unreadable:
                self._unreadable = copy
                log.warning("nginx's workers (%s) cannot read %s, so Jupyter keeps serving JupyterLab's bundles; "
                            "set [paths] cache_dir to a directory outside any private home, such as /var/cache/jrd",
                            inputs.nginx_worker_user, copy)
            return inputs
        return replace(inputs, static_bundles=copy, static_preload=tuple(read_startup_bundles(copy)))

    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        cfg = ctx.config
        root = cfg.paths.cache_dir / "lab-static"
        if not cfg.nginx.static_bundles or ready_copy(root, self.static_dir) is not None:
            return
        if cache_key(self.static_dir) is None:
            log.info("no JupyterLab bundles in %s; Jupyter serves its own static files", self.static_dir)
            return
        log.info("compressing JupyterLab's bundles into %s in the background; Jupyter serves them until then", root)
        try:
            root.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._builder = subprocess.Popen(
                [sys.executable, "-m", "jrd.static_cache", str(self.static_dir), str(root)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=lambda: os.nice(10),
            )
        except OSError as exc:
            log.warning("cannot compress JupyterLab's bundles into %s (%s); Jupyter keeps serving them", root, exc)
            return
        ctx.schedule("static_bundles", BUILD_POLL_SECONDS, self._poll)

    def _poll(self) -> None:
        builder, ctx = self._builder, self._ctx
        if builder is None or ctx is None:
            return
        if builder.poll() is None:
            ctx.schedule("static_bundles", BUILD_POLL_SECONDS, self._poll)
            return
        self._builder = None
        err = builder.stderr.read().decode(errors="replace").strip() if builder.stderr else ""
        if builder.returncode != 0:
            log.warning("compressing JupyterLab's bundles failed (exit %s): %s; Jupyter keeps serving them",
                        builder.returncode, err.splitlines()[-1] if err else "no message")
            return
        log.info("JupyterLab's bundles are compressed; nginx serves them from now on")
        ctx.submit("reload", "static bundles compressed")

    def stop(self) -> None:
        if self._builder is not None and self._builder.poll() is None:
            self._builder.kill()
            self._builder.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m jrd.static_cache STATIC_DIR CACHE_ROOT", file=sys.stderr)
        return 2
    try:
        build_copy(Path(argv[0]), Path(argv[1]))
    except (OSError, zlib.error) as exc:
        print(f"cannot compress {argv[0]} into {argv[1]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

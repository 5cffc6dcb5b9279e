"""Reading a program's log file: the last lines, what was appended since an offset, or a one-line tail."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jrd.errors import JrdError

MAX_LOG_BYTES = 1024 * 1024


def read_log(path: Path, offset: int | None, lines: int) -> dict[str, Any]:
    """The last `lines` lines of a log, or (with `offset`) what was appended since.

    Returns the text and the offset to ask from next time.  A log that got
    shorter than `offset` was rotated: read the new one from its start.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if offset is None:
                start = max(0, size - min(MAX_LOG_BYTES, max(4096, lines * 512)))
                f.seek(start)
                data = f.read(size - start)
                text = data.decode(errors="replace")
                kept = text.splitlines(keepends=True)[-lines:] if lines else []
                return {"text": "".join(kept), "offset": size, "path": str(path)}
            if offset > size:
                offset = 0
            f.seek(offset)
            data = f.read(min(MAX_LOG_BYTES, size - offset))
            return {"text": data.decode(errors="replace"), "offset": offset + len(data), "path": str(path)}
    except FileNotFoundError:
        return {"text": "", "offset": 0, "path": str(path)}
    except OSError as exc:
        raise JrdError(f"cannot read {path}: {exc.strerror}") from None


def tail(path: Path, lines: int = 3) -> str:
    """The last few lines of a log on one line, for an error message, and where the whole log is."""
    try:
        text = read_log(path, None, lines)["text"]
    except JrdError:
        text = ""
    joined = " | ".join(line.strip() for line in text.splitlines()) or "no output"
    return f"{joined} (full log: {path})"


_ERROR_WORDS = ("[emerg]", "[crit]", "[alert]", "[error]", "Error", "error:", "failed", "Traceback")


def last_error(path: Path, lines: int = 200) -> str:
    """The last line of a log that looks like an error (else its last line); '' for an empty log."""
    try:
        text = read_log(path, None, lines)["text"]
    except JrdError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(kept):
        if any(word in line for word in _ERROR_WORDS):
            return line[:300]
    return kept[-1][:300] if kept else ""

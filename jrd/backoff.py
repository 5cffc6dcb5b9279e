"""Exponential backoff: the one rule for every retry in jrd."""

from __future__ import annotations


def backoff_delay(failures: int, first: float, cap: float) -> float:
    """The wait after `failures` consecutive failures: first, 2x first, 4x first, ... at most `cap`."""
    if failures <= 0:
        return 0.0
    return min(cap, first * 2 ** min(failures - 1, 32))

"""
Facts about this machine and the sizes users write: `cores`, `parseSize`.
"""

from __future__ import annotations

import os
import re

__all__ = ["cores", "parseSize"]

_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parseSize(size: int | float | str | None) -> int | None:
    """
    A memory size in bytes: an int or float of bytes, or a string with a
    unit: ``"500M"``, ``"1.5 GB"``, ``"2GiB"`` (K, M, G, T are powers of 1024).
    """
    if size is None:
        return None
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"a memory size must be positive, not {size!r}")
        return int(size)
    match = _SIZE.match(str(size))
    if match is None:
        raise ValueError(f"not a memory size: {size!r} (try e.g. 512M or 2G)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def cores() -> int:
    """How many CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1

"""
Module-level callables for the worker conformance suite.

Child processes, servers and Dask workers import this module to unpickle
them, so it imports only the standard library.

Calls that must stay busy ("holds") write one marker file per attempt into a
folder, then wait until a ``release`` file appears there (or *limit* seconds
pass): the test counts attempts by their markers and ends a hold when it is
done with it, so no thread or child keeps sleeping after the test.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RELEASE = "release"
POLL = 0.01


def echo(value: Any) -> Any:
    return value


def add(a: int, b: int = 0) -> int:
    return a + b


def nothing() -> None:
    return None


def fail(kind: str, text: str) -> None:
    """Raise the built-in exception named *kind* with *text*."""
    raise {"ValueError": ValueError, "KeyError": KeyError, "OSError": OSError}[kind](text)


def countTo(n: int, failAt: int | None = None) -> Iterator[int]:
    for i in range(n):
        if i == failAt:
            raise ValueError(f"broke at {i}")
        yield i


def mark(directory: str) -> None:
    """Leave one marker file for this attempt in *directory*."""
    name = f"attempt-{time.monotonic_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    Path(directory, name).write_text(str(os.getpid()))


def attempts(directory: str) -> int:
    """How many attempts have left a marker in *directory*."""
    return sum(1 for p in Path(directory).iterdir() if p.name.startswith("attempt-"))


def released(directory: str) -> bool:
    """Whether the test let go of the holds in *directory* (or removed it)."""
    return Path(directory, RELEASE).exists() or not Path(directory).exists()


def hold(directory: str, limit: float) -> str:
    """Mark an attempt, then block until released ("released") or *limit* ("limit")."""
    mark(directory)
    deadline = time.monotonic() + limit
    while not released(directory):
        if time.monotonic() > deadline:
            return "limit"
        time.sleep(POLL)
    return "released"


def holdThenCount(directory: str, limit: float, n: int) -> Iterator[int]:
    """`hold`, then return an iterator of *n* numbers."""
    hold(directory, limit)
    return countTo(n)


def exitNow(code: int) -> None:
    """End the process at once, as a crash would."""
    os._exit(code)


def exitOnce(directory: str, code: int) -> int:
    """Exit (like `exitNow`) on the first attempt; later attempts return their pid."""
    if not attempts(directory):
        mark(directory)
        os._exit(code)
    mark(directory)
    return os.getpid()


def raiseSystemExit(code: int) -> None:
    raise SystemExit(code)

"""
What the executors send to the workers besides plain calls: a call with the
queue's own keyword names, a chunk of a ``map``, a group of calls submitted
in a burst. Standard library only: lean child processes unpickle these.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["applyKeywords", "runChunk", "runGroup"]


def applyKeywords(f: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """
    Call ``f(*args, **kw)``: how a call travels whose keywords have names the
    queue would take as its own (``timeout``, ``series``, ...).
    """
    return f(*args, **kw)


def runChunk(
    f: Callable[..., Any], chunk: Iterable[tuple[Any, ...]]
) -> tuple[list[Any], Exception | None, str]:
    """
    ``f(*args)`` for each *args* of *chunk*, one task for a chunk of a ``map``:
    ``(results, None, "")``, or up to the first exception ``(results before
    it, the exception, its traceback text)``, so that ``map`` yields the
    results before a failure, as it does call by call.
    """
    results = []
    for args in chunk:
        try:
            results.append(f(*args))
        except Exception as e:
            return results, e, traceback.format_exc()
    return results, None, ""


def runGroup(
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
) -> list[tuple[bool, Any, str]]:
    """
    ``f(*args)`` for each ``(f, args)`` of a group of calls submitted in a
    burst (one task for all): ``(True, result, "")`` or ``(False, exception,
    traceback text)`` for each.
    """
    outcomes: list[tuple[bool, Any, str]] = []
    for f, args in calls:
        try:
            outcomes.append((True, f(*args), ""))
        except Exception as e:
            outcomes.append((False, e, traceback.format_exc()))
    return outcomes

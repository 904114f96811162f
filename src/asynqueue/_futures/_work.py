"""
What the executors send to the workers besides plain calls: a call with the
queue's own keyword names, a group of calls submitted in a burst (a ``map``
sends `asynqueue._core._chunk.applyChunk` batches, through the queue's own
``map``). Standard library only: lean child processes unpickle these.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from .._support._batch import runningBatch

__all__ = ["applyKeywords", "runGroup"]


def applyKeywords(f: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """
    Call ``f(*args, **kw)``: how a call travels whose keywords have names the
    queue would take as its own (``timeout``, ``series``, ...).
    """
    return f(*args, **kw)


def runGroup(
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
) -> list[tuple[bool, Any, str]]:
    """
    ``f(*args)`` for each ``(f, args)`` of a group of calls submitted in a
    burst (one task for all): ``(True, result, "")`` or ``(False, exception,
    traceback text)`` for each it ran. A process child may end it early, after
    the call it runs, sending the outcomes so far ahead (see
    `asynqueue._support._batch`): the owner queues the rest.
    """
    with runningBatch(len(calls)) as run:
        outcomes = run.outcomes
        for i in run.indices:
            f, args = calls[i]
            try:
                outcomes.append((True, f(*args), ""))
            except Exception as e:
                outcomes.append((False, e, traceback.format_exc()))
        return run.finish()

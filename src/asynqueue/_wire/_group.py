"""
The runner of a *group*: plain calls of a queue's backlog sent to a process
worker as one task (see `asynqueue._core._dispatch`, *Groups*).

It runs in the child, so it imports the standard library and the wire
codec only. Each call's outcome is what the child would have sent for it
alone, ``(status, parts)``: ``n`` with no parts, ``r`` with its pickle, or
``e`` with `dumpsError`'s parts (a result that cannot be pickled is that
error, as for a lone call). A call whose outcome a list cannot carry (an
iterator to stream, a large result for shared memory, an exception that
is not an ``Exception``) ends the group: the outcomes so far go ahead, the
calls after it go back to the queue, and its own outcome becomes the
group task's, which the child then handles as a lone call's
(`asynqueue._support._batch.endWithOwnOutcome`).
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from .._support._batch import endWithOwnOutcome, onOutcome, outcomeReady, runningBatch
from ._codec import (
    PLAIN_TYPES,
    WIRE_ERROR,
    WIRE_NONE,
    WIRE_RESULT,
    dumps,
    dumpsError,
    resultPicklingError,
)
from ._streams import isIterator

__all__ = ["GROUP_RESULT_MAX", "runCalls"]

# A result pickled larger than this (or with out-of-band buffers) ends its
# group, to travel as a lone call's does (in shared memory, if large).
GROUP_RESULT_MAX = 64 * 1024

_NONE_OUTCOME = (WIRE_NONE, [])


def runCalls(
    calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
) -> tuple[list[tuple[str, list[Any]]], float]:
    """
    ``f(*args, **kw)`` for each call of a group, in order: the outcomes of
    those it ran and not sent ahead, and the seconds they all took.
    """
    t0 = perf_counter()
    with runningBatch(len(calls)) as run:
        outcomes = run.outcomes
        held = bool(onOutcome)  # (a process child holds each outcome at once)
        for i in run.indices:
            f, args, kw = calls[i]
            try:
                result = f(*args, **kw)
            except Exception as e:
                outcomes.append((WIRE_ERROR, dumpsError(e)))
            except BaseException:
                # (SystemExit, a cancellation of the child's): the child
                # handles it as a lone call's, if it can take it so.
                endWithOwnOutcome(i)
                raise
            else:
                if result is None:
                    outcomes.append(_NONE_OUTCOME)
                elif type(result) not in PLAIN_TYPES and isIterator(result):
                    if endWithOwnOutcome(i):
                        return result  # type: ignore[no-any-return]  # (the task's own result)
                    outcomes.append((WIRE_ERROR, dumpsError(TypeError(_NOT_HERE))))
                else:
                    try:
                        parts = dumps(result)
                    except Exception as e:
                        error = resultPicklingError(f, result, e)
                        outcomes.append((WIRE_ERROR, dumpsError(error)))
                    else:
                        large = len(parts) > 1 or len(parts[0]) > GROUP_RESULT_MAX
                        if large and endWithOwnOutcome(i):
                            return result  # type: ignore[no-any-return]
                        outcomes.append((WIRE_RESULT, parts))
            if held:
                outcomeReady(run)
        return run.finish(), perf_counter() - t0


_NOT_HERE = "an iterator result cannot come back from a group run outside a process child"

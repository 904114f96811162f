"""
The worker side of `TaskQueue.map`: one call applies a function to a chunk.

`applyChunk` is an ordinary module-level function, so a batch is one ordinary
call on any worker kind (reactor, thread, process, remote, Dask) and its
results travel back in one message. It imports nothing but the standard
library, so a process worker's child stays free of Twisted.
"""

from __future__ import annotations

import pickle
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from itertools import starmap
from time import perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (the child imports no Twisted)
    from twisted.internet.defer import Deferred

__all__ = ["ChunkResult", "ItemError", "applyChunk", "awaitableTypes"]

# What a chunk gives: its results (an `ItemError` for each input whose call
# raised), how many raised, and the seconds it took.
ChunkResult = tuple[list[Any], int, float]


class ItemError:
    """
    Stands in a chunk's results for an input whose call raised *exception*.

    In the same process the exception is kept as it is. Sent to another
    process, it goes as itself with its traceback text (``remoteTraceback``)
    if it survives pickling, else as a `WorkerError` saying what it was.
    """

    __slots__ = ("exception",)

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception

    def __reduce__(self) -> tuple[type[ItemError], tuple[BaseException]]:
        return (ItemError, (_portable(self.exception),))

    def __repr__(self) -> str:
        return f"<ItemError {self.exception!r}>"


def _portable(exc: BaseException) -> BaseException:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        exc.remoteTraceback = text  # type: ignore[attr-defined]
        if type(pickle.loads(pickle.dumps(exc))) is type(exc):
            return exc
    except Exception:
        pass
    from ..errors import WorkerError

    typeName = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return WorkerError(f"{typeName}: {exc}", remoteTraceback=text, typeName=typeName)


def awaitableTypes() -> tuple[type[Awaitable[Any]], ...]:
    """
    The result types to wait for: Deferreds and coroutines, but only in the
    reactor thread (elsewhere, and where Twisted is not loaded, none).
    """
    defer = sys.modules.get("twisted.internet.defer")
    if defer is None:
        return ()
    from twisted.python import threadable

    if not threadable.isInIOThread():
        return ()
    return (defer.Deferred, CoroutineType)


def applyChunk(
    func: Callable[..., Any], chunk: Sequence[Any], star: bool = False
) -> ChunkResult | Deferred[ChunkResult]:
    """
    ``([result, ...], errors, seconds)``: *func* applied to each input of *chunk*.

    An input whose call raised has an `ItemError` in its place; *errors*
    counts them and *seconds* is the time the chunk took here (what adaptive
    batching measures). With *star*, each input is a tuple of arguments.

    In the reactor thread, a call returning a Deferred or coroutine is waited
    for before the next input's call (one input at a time, as with single
    calls); the result is then a Deferred of that triple.
    """
    started = perf_counter()
    results: list[Any] = []
    errors = 0
    waitFor = awaitableTypes()
    if not waitFor:
        # The fast way: map over one iterator. After an error, extend has kept
        # the results before it, and the iterator goes on after that input.
        inputs = iter(chunk)
        apply = starmap if star else map
        while True:
            try:
                results.extend(apply(func, inputs))
                break
            except Exception as e:
                results.append(ItemError(e))
                errors += 1
        return results, errors, perf_counter() - started
    append = results.append
    for i, x in enumerate(chunk):
        try:
            result = func(*x) if star else func(x)
        except Exception as e:
            result = ItemError(e)
            errors += 1
        if isinstance(result, waitFor):
            from twisted.internet.defer import ensureDeferred

            rest = _finishAsync(func, chunk, i, result, results, errors, star, started)
            return ensureDeferred(rest)
        append(result)
    return results, errors, perf_counter() - started


async def _finishAsync(
    func: Callable[..., Any],
    chunk: Sequence[Any],
    i: int,
    pending: object,
    results: list[Any],
    errors: int,
    star: bool,
    started: float,
) -> ChunkResult:
    """The rest of `applyChunk` once input *i* gave an awaitable (*pending*)."""
    from twisted.internet.defer import CancelledError as cancelled

    waitFor = awaitableTypes()
    while True:
        if waitFor and isinstance(pending, waitFor):
            try:
                pending = await pending
            except cancelled:
                raise  # the batch itself was cancelled (a timeout): stop here
            except Exception as e:
                pending = ItemError(e)
                errors += 1
        results.append(pending)
        i += 1
        if i == len(chunk):
            return results, errors, perf_counter() - started
        x = chunk[i]
        try:
            pending = func(*x) if star else func(x)
        except Exception as e:
            pending = ItemError(e)
            errors += 1

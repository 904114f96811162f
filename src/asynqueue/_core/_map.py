"""
`TaskQueue.map`: a parallel map that sends inputs to the workers in batches.

`MapRun` pulls inputs from a *feed*, a few batches ahead of what its reader
took, sends each batch as one ordinary call of `_chunk.applyChunk` and hands
back finished batches (`MapBatch`) in input order or as they complete.
`mapDeferator` turns a run into the `Deferator` of results that ``map``
returns; the ``asynqueue map`` command reads the batches themselves.

Batch size (``chunksize=None``): the first batches hold one input each.
Every result says how long its batch took on the worker, and the next batch
is sized to take about `TARGET_SECONDS` there (at most `GROWTH` times the
batch before, at most `MAX_CHUNK` inputs and about `MAX_CHUNK_BYTES` of
input). A batch of several inputs counts its time less a fixed part (what
the quickest batch took, up to `FIXED_COST_MAX`): the first batches, of one
input each, are mostly that part when inputs are trivial, and would make
the larger batches after them look dearer per input than they are. Inputs
that take longer than the target go one per call; when the number of inputs
is known, batches near the end shrink (to a quarter of the target's work at
least) so that no worker is left with a long tail while another idles.

A batch that fails as a whole (a timeout, a lost worker, a result that
cannot be sent back) is run again one input per call, so that the failure
lands on the input that caused it and the other inputs still get results.
A ``timeout`` is per input: a batch of n inputs gets n times as long.
"""

from __future__ import annotations

import operator
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from itertools import islice
from typing import Any, Final, Protocol, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from .. import errors
from .._iter._base import Batch
from .._iter._deferator import Deferator
from ..interfaces import IWorker
from ._calls import describeCall
from ._chunk import ChunkResult, ItemError, applyChunk

__all__ = [
    "IteratorFeed",
    "MapBatch",
    "MapDeferator",
    "MapRun",
    "SequenceFeed",
    "feedOf",
    "lengthHint",
    "mapDeferator",
]

#: Seconds of work on the worker that an adaptive batch aims at.
TARGET_SECONDS = 0.005
#: At most this much of a batch's time is its fixed part (see the module docstring).
FIXED_COST_MAX = 20e-6
#: An adaptive batch is at most this many times the one before.
GROWTH = 8
#: Most inputs in one adaptive batch.
MAX_CHUNK = 16384
#: Adaptive batches stop growing at about this many bytes of input.
MAX_CHUNK_BYTES = 4 << 20
#: Batches sent and not yet taken by the reader, per worker (plus one).
WINDOW_PER_WORKER = 3
#: While batches grow, up to this many windows of them may be out.
RAMP_WINDOWS = 4
#: A worker that runs tasks side by side counts as at most this many.
MAX_SLOTS = 16

_NOTHING: Final = object()


class MapQueue(Protocol):
    """What a map needs of its queue (a `TaskQueue`)."""

    def call(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]: ...

    def workers(self) -> list[IWorker]: ...

    def isRunning(self) -> bool: ...


class Feed(Protocol):
    """Where a map's inputs come from; see `IteratorFeed`."""

    error: Failure | None
    onMore: Callable[[], None] | None

    @property
    def exhausted(self) -> bool: ...

    def take(self, n: int) -> Sequence[Any]: ...


class IteratorFeed:
    """
    Inputs pulled from an iterator, one ahead so that the end is known.

    A feed offers ``take(n)`` (up to *n* inputs available now), ``exhausted``
    (nothing more will come), ``error`` (a Failure of what the iterator
    raised, after the inputs it gave) and ``onMore`` (set by the run: to be
    called when inputs arrive after a short take; never, for an iterator).
    """

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._iterator = iterator
        self.error: Failure | None = None
        self.onMore: Callable[[], None] | None = None
        self._ahead: object = self._pull()

    @property
    def exhausted(self) -> bool:
        return self._ahead is _NOTHING

    def _pull(self) -> object:
        try:
            return next(self._iterator)
        except StopIteration:
            return _NOTHING
        except Exception:
            self.error = Failure()
            return _NOTHING

    def take(self, n: int) -> list[Any]:
        if self._ahead is _NOTHING:
            return []
        items = [self._ahead]
        try:
            # extend keeps what it got before an error.
            items.extend(islice(self._iterator, n - 1))
        except Exception:
            self.error = Failure()
            self._ahead = _NOTHING
            return items
        self._ahead = self._pull() if len(items) == n else _NOTHING
        return items


class SequenceFeed:
    """
    Inputs sliced from a list, tuple or range (a feed, see `IteratorFeed`):
    a batch is one slice, taken in one go instead of input by input (and a
    range's slice is a range: three numbers to send, whatever its length).
    """

    def __init__(self, sequence: Sequence[Any]) -> None:
        self._sequence = sequence
        self._at = 0
        self.error: Failure | None = None
        self.onMore: Callable[[], None] | None = None

    @property
    def exhausted(self) -> bool:
        return self._at >= len(self._sequence)

    def take(self, n: int) -> Sequence[Any]:
        at = self._at
        items = self._sequence[at : at + n]
        self._at = at + len(items)
        return items


def feedOf(iterables: tuple[object, ...], iterators: list[Iterator[Any]]) -> Feed:
    """
    The feed of ``map``'s inputs: slices of a lone list, tuple or range;
    else the *iterators* (those of *iterables*), zipped if several.
    """
    first = iterables[0] if len(iterables) == 1 else None
    if type(first) in (list, tuple, range):  # exactly: a subclass may slice otherwise
        return SequenceFeed(cast("Sequence[Any]", first))
    return IteratorFeed(zip(*iterators, strict=False) if len(iterators) > 1 else iterators[0])


class MapBatch:
    """
    Consecutive inputs sent together, from input number *start*.

    Once done, ``results`` holds one entry per input: the result, or an
    `ItemError` whose ``exception`` is what that input's call raised (or how
    it failed: a timeout, a lost worker); ``errors`` counts those.
    """

    __slots__ = ("calls", "done", "errors", "inputs", "left", "results", "start")

    def __init__(self, start: int, inputs: Sequence[Any]) -> None:
        self.start = start
        self.inputs = inputs
        self.results: list[Any] = []
        self.errors = 0
        self.done = False
        self.calls: list[Deferred[Any]] = []
        self.left = 0  # inputs still out when the batch was split


class MapRun:
    """
    One map over a queue: batches out, results back (see the module docstring).

    Call `next` for each finished batch, one at a time; `close` to stop
    early (batches not started yet are withdrawn). *describe* names the
    call of one input in messages (default: ``func(input)``).
    """

    def __init__(
        self,
        queue: MapQueue,
        func: Callable[..., Any],
        feed: Feed,
        *,
        star: bool = False,
        chunksize: int | None = None,
        ordered: bool = True,
        callKeywords: dict[str, Any] | None = None,
        lengthHint: int | None = None,
        describe: Callable[[Any], str] | None = None,
    ) -> None:
        kw = dict(callKeywords or {})
        self._describe = describe
        self._timeout: float | None = kw.pop("timeout", None)
        kw["returnFailure"] = True
        self._kw = kw
        self._queue = queue
        self._func = func
        self._feed = feed
        self._star = star
        self._fixed = chunksize
        self._ordered = ordered
        self._lengthHint = lengthHint
        self._perItem: float | None = None  # seconds per input, as measured
        self._seconds = self._inputs = 0.0  # what it is measured from
        self._quickest: float | None = None  # the least time a batch took
        self._lastSize = 1  # of the batch sent last
        self._outInputs = 0  # inputs in the batches sent and not yet taken
        self._byteCap: int | None = None
        self._slots = 1  # workers, counting each of a worker's slots
        self._sent = 0  # inputs sent so far
        self._batches: deque[MapBatch] = deque()  # sent, not yet taken
        self._ready: deque[MapBatch] = deque()  # done, not yet taken (as completed)
        self._waiter: Deferred[MapBatch | None] | None = None
        self._closed = False
        self._errorTaken = False
        self._broken = False  # the queue refused a batch: send no more
        self._filling = False
        self._refill = False
        feed.onMore = self._fill
        self._fill()

    # ------------------------------------------------------------ reader side

    def next(self) -> Deferred[MapBatch | None]:
        """
        A Deferred of the next finished batch, None after the last. It fails
        with what the inputs' iterable raised, after the inputs before that.
        """
        if self._waiter is not None:
            raise errors.NotReadyError("the previous batch has not arrived yet")
        batch = self._take()
        if batch is not None:
            self._fill()
            return succeed(batch)
        if self._closed or (not self._batches and self._noMoreInputs()):
            return self._end()
        self._waiter = Deferred()
        return self._waiter

    @property
    def moreLeft(self) -> bool:
        """True while a batch (or the iterable's error) is still to come."""
        if self._closed:
            return False
        return bool(self._batches) or not self._noMoreInputs() or self._hasError()

    def close(self) -> None:
        """Stop: withdraw the batches no worker has taken; ignore the rest."""
        if self._closed:
            return
        self._closed = True
        withdraw = getattr(self._queue, "_withdraw", None)
        for batch in self._batches:
            if not batch.done and withdraw is not None:
                for call in batch.calls:
                    withdraw(call)
        self._batches.clear()
        self._ready.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _noMoreInputs(self) -> bool:
        return self._broken or self._feed.exhausted

    def _hasError(self) -> bool:
        return self._feed.error is not None and not self._errorTaken

    def _end(self) -> Deferred[MapBatch | None]:
        if not self._closed and self._hasError():
            self._errorTaken = True
            return fail(self._feed.error)
        return succeed(None)

    def _take(self) -> MapBatch | None:
        batch = None
        if self._ordered:
            if self._batches and self._batches[0].done:
                batch = self._batches.popleft()
        elif self._ready:
            batch = self._ready.popleft()
            self._batches.remove(batch)
        if batch is not None:
            self._outInputs -= len(batch.inputs)
        return batch

    def _check(self) -> None:
        """Give the waiting reader what it waits for, if it has come."""
        waiter = self._waiter
        if waiter is None:
            return
        batch = self._take()
        if batch is None and (self._batches or not self._noMoreInputs()):
            return
        self._waiter = None
        if batch is not None:
            waiter.callback(batch)
            self._fill()
        else:
            self._end().chainDeferred(waiter)

    # ------------------------------------------------------------ worker side

    def _fill(self) -> None:
        """Send batches while the window has room and inputs are there."""
        if self._filling:  # a batch finished synchronously: loop, don't recurse
            self._refill = True
            return
        self._filling = True
        try:
            self._refill = True
            while self._refill:
                self._refill = False
                window = self._window()
                while not (self._closed or self._broken) and self._room(window):
                    inputs = self._feed.take(self._size())
                    if not inputs:
                        break
                    self._send(inputs)
                self._check()
        finally:
            self._filling = False

    def _room(self, window: int) -> bool:
        """
        May another batch go out? Yes while fewer than *window* are out; and
        while batches are still growing, also while what is out is less than
        *window* batches' worth of work (so growth is not held up by small
        batches waiting to be taken), up to `RAMP_WINDOWS` times *window*.
        """
        out = len(self._batches)
        if out < window:
            return True
        if self._perItem is None or out >= RAMP_WINDOWS * window:
            return False
        # (Never more inputs out than *window* full batches.)
        return (
            self._outInputs * self._perItem < window * TARGET_SECONDS / 2
            and self._outInputs < (window - 1) * MAX_CHUNK
        )

    def _window(self) -> int:
        """How many batches may be out: a few per worker (per slot, for workers
        such as Dask's that run several tasks at once)."""
        slots = 0
        for worker in self._queue.workers():
            try:
                slots += max(1, min(int(getattr(worker, "slots", 1)), MAX_SLOTS))
            except (TypeError, ValueError):
                slots += 1
        self._slots = max(1, slots)
        return WINDOW_PER_WORKER * self._slots + 1

    def _size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        if self._perItem is None:
            return 1
        perItem = max(self._perItem, 1e-9)
        size = min(int(TARGET_SECONDS / perItem), self._lastSize * GROWTH, MAX_CHUNK)
        if self._byteCap is not None:
            size = min(size, self._byteCap)
        if self._lengthHint is not None:
            # Near the end, smaller batches (down to a quarter of the target's
            # work), so that every worker finishes about together.
            left = self._lengthHint - self._sent
            size = min(size, max(left // (2 * self._slots), int(TARGET_SECONDS / 4 / perItem)))
        self._lastSize = size = max(1, size)
        return size

    def _send(self, inputs: Sequence[Any]) -> None:
        batch = MapBatch(self._sent, inputs)
        self._sent += len(inputs)
        self._outInputs += len(inputs)
        if self._byteCap is None and self._fixed is None:
            self._byteCap = max(1, MAX_CHUNK_BYTES // _sizeOf(inputs[0], self._star))
        self._batches.append(batch)
        kw = self._kw
        if self._timeout is not None:
            kw = {**kw, "timeout": self._timeout * len(inputs)}
        try:
            d = self._queue.call(applyChunk, self._func, inputs, self._star, **kw)
        except Exception:
            self._broken = True  # e.g. the queue was shut down
            self._failAll(batch, Failure())
            return
        batch.calls.append(d)
        d.addCallbacks(
            self._batchDone, self._batchFailed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _batchDone(self, result: ChunkResult, batch: MapBatch) -> None:
        results, count, seconds = result
        self._measured(len(results), seconds)
        batch.results = results
        batch.errors = count
        self._finished(batch)

    def _measured(self, n: int, seconds: float) -> None:
        """
        Learn from a batch of *n* inputs that took *seconds* on its worker:
        time over inputs of the recent batches, each batch weighing half as
        much as the next (bigger batches count for more, and one odd batch
        does not swing it). A batch of several inputs counts without its
        fixed part; one of a single input counts whole (its input's share
        cannot be told from the fixed part).
        """
        quickest = self._quickest
        if quickest is None or seconds < quickest:
            self._quickest = quickest = seconds
        if n > 1:
            seconds = max(seconds - min(quickest, FIXED_COST_MAX), 0.0)
        self._seconds = self._seconds / 2 + seconds
        self._inputs = self._inputs / 2 + n
        self._perItem = self._seconds / self._inputs

    def _batchFailed(self, failure: Failure, batch: MapBatch) -> None:
        if self._closed:
            return
        n = len(batch.inputs)
        if (
            n == 1
            or not self._queue.isRunning()
            or failure.check(errors.TaskCancelled, errors.QueueRunError)
        ):
            self._failAll(batch, failure)
            return
        # Run each input on its own: the failure then lands where it belongs.
        batch.results = [None] * n
        batch.left = n
        kw = self._kw
        if self._timeout is not None:
            kw = {**kw, "timeout": self._timeout}
        for i, x in enumerate(batch.inputs):
            try:
                d = self._queue.call(applyChunk, self._func, [x], self._star, **kw)
            except Exception:
                self._singleFailed(Failure(), batch, i)
                continue
            batch.calls.append(d)
            d.addCallbacks(
                self._singleDone,
                self._singleFailed,
                callbackArgs=(batch, i),
                errbackArgs=(batch, i),
            )

    def _singleDone(self, result: ChunkResult, batch: MapBatch, i: int) -> None:
        results, count, _ = result
        batch.results[i] = results[0]
        batch.errors += count
        self._singleLeft(batch)

    def _singleFailed(self, failure: Failure, batch: MapBatch, i: int) -> None:
        if self._closed:
            return
        batch.results[i] = ItemError(self._itemException(failure, batch.inputs[i]))
        batch.errors += 1
        self._singleLeft(batch)

    def _singleLeft(self, batch: MapBatch) -> None:
        batch.left -= 1
        if not batch.left:
            self._finished(batch)

    def _failAll(self, batch: MapBatch, failure: Failure) -> None:
        error = ItemError(failure.value)
        batch.results = [error] * len(batch.inputs)
        batch.errors = len(batch.inputs)
        self._finished(batch)

    def _itemException(self, failure: Failure, x: Any) -> BaseException:
        exc = failure.value
        if isinstance(exc, errors.TimeoutError):
            # Say which input timed out, not which helper call.
            if self._describe is not None:
                text = self._describe(x)
            else:
                text = describeCall(self._func, tuple(x) if self._star else (x,), {})
            exc = errors.TimeoutError(f"{text} timed out after {self._timeout} seconds, 2 times")
        return exc

    def _finished(self, batch: MapBatch) -> None:
        if self._closed:
            return
        batch.done = True
        if not self._ordered:
            self._ready.append(batch)
        self._check()


def _sizeOf(x: Any, star: bool) -> int:
    """About how many bytes input *x* takes (its arguments' sizes, with *star*)."""
    try:
        if star:
            return max(1, sum(sys.getsizeof(a) for a in x))
        return max(1, sys.getsizeof(x))
    except Exception:
        return 64


def lengthHint(iterables: tuple[object, ...]) -> int | None:
    """How many inputs ``zip(*iterables)`` gives, if every one says; else None."""
    try:
        hints = [operator.length_hint(it, -1) for it in iterables]
    except Exception:
        return None
    return None if min(hints) < 0 else min(hints)


# ------------------------------------------------------------ the Deferator


class _MapSource:
    """A `Deferator` source over a `MapRun`: one finished batch per fetch."""

    lowWater = 0

    def __init__(self, run: MapRun) -> None:
        self.run = run

    def fetch(self) -> Deferred[Batch]:
        return self.run.next().addCallback(self._toBatch)

    def _toBatch(self, batch: MapBatch | None) -> Batch:
        if batch is None:
            return [], False, None
        results = batch.results
        if batch.errors:
            # Up to the first failed input, then its exception, as itself.
            for i, result in enumerate(results):
                if isinstance(result, ItemError):
                    return results[:i], False, Failure(result.exception)
        return results, self.run.moreLeft, None

    def close(self) -> None:
        self.run.close()


class MapDeferator(Deferator):
    """
    The `Deferator` that ``map`` returns. ``async for`` runs an async
    generator (`_items`) that hands out a landed batch's items in a plain
    loop over the batch itself (its *spool*), with no Deferred, coroutine or
    deque operation per item (the cost per item counts when each input is
    trivial). ``for d in dr`` still gives Deferreds. Dropping it before the
    end stops it.
    """

    # The rest of the batch an ``async for`` is handing out, or None. Every
    # other way to take items first puts it back into the buffer (`_unspool`).
    _spool: Iterator[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:  # type: ignore[override]
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        """The items, for ``async for``: those landed without waiting, the
        others as `Deferator.__anext__` gives them."""
        while True:
            spool = self._spool
            if spool is None:
                buffer = self._buffer
                if not buffer or self._waiter is not None:
                    try:
                        item = await Deferator.__anext__(self)
                    except StopAsyncIteration:
                        return
                    yield item
                    continue
                # The buffer's items become the spool (a loop that breaks
                # leaves the rest there for the next one).
                spool = self._spool = iter(buffer)
                self._buffer = deque()
            for item in spool:
                yield item
            if self._spool is spool:
                self._spool = None
                self._prefetch()

    def _unspool(self) -> None:
        """Put what the spool holds back in front of the buffer."""
        spool = self._spool
        if spool is not None:
            self._spool = None
            rest = list(spool)  # (an ``async for`` still over it sees its end)
            rest.extend(self._buffer)
            self._buffer = deque(rest)

    def _takeLanded(self) -> deque[Any]:
        self._unspool()
        return Deferator._takeLanded(self)

    @property
    def moreLeft(self) -> bool:
        self._unspool()
        return Deferator.moreLeft.fget(self)  # type: ignore[attr-defined]

    def __next__(self) -> Deferred[Any]:
        self._unspool()
        return Deferator.__next__(self)

    async def __anext__(self) -> Any:  # type: ignore[override]
        self._unspool()
        return await Deferator.__anext__(self)

    def stop(self) -> None:
        self._unspool()
        Deferator.stop(self)

    def __del__(self) -> None:
        # Dropped before the end (``break`` out of ``async for``, which does
        # not call stop): withdraw the batches not started all the same.
        try:
            if not self._done:
                self.stop()
        except Exception:
            pass


def mapDeferator(run: MapRun, representation: str) -> Deferator:
    """A `MapDeferator` of *run*'s results, one item per input."""
    source = _MapSource(run)
    dr = MapDeferator._fromSource(source, ([], run.moreLeft, None), representation)

    def ended(completed: bool) -> bool:
        if not completed:
            run.close()  # stopped, or an input failed: withdraw the rest
        return completed

    dr.d.addCallback(ended)
    return dr

"""
Iterators that cross the reactor/worker boundary: `Deferator` and its sources.

Producers and consumers built on it live in `asynqueue._iter._producers`.

When a task returns an iterator (anything `isIterator` accepts), the caller
does not get the iterator itself but a `Deferator`: an iterator of Deferreds,
one per item, that also supports ``async for``. With a ``consumer``, the items
are written to that IConsumer instead (`consumeInto`).

How items travel
----------------
A Deferator pulls from a *source* in *batches*. Each batch is a tuple
``(items, more, failure)``: the items pulled, whether the iterator has more
after them, and the Failure the iterator raised after them (if any).

"more" is known exactly because the puller always pulls one item *ahead*
and keeps it for the next batch. That lookahead is what lets ``next(dr)``
raise StopIteration synchronously (the original protocol) without first
asking the worker whether anything is left.

Three sources:

- `_SyncSource`: the iterator is advanced right here, in the reactor thread
  (for the `AsyncWorker`, whose tasks run in the reactor thread anyway).
- `_ThreadSource`: every advance of the iterator -- including the first
  one and its ``close()`` -- runs in the worker's own thread through its
  ``deferToThread``. One round trip fetches up to `BATCH_ITEMS` items or
  whatever it got in `BATCH_SECONDS`, so a fast generator costs one thread
  hand-off and one reactor wake-up per batch, not per item.
- `_TripleSource`: the original "next-call" protocol: a callable returning
  (a Deferred of) ``(value, isValid, moreLeft)``; see `Prefetcherator`.

Bounded prefetch: a Deferator asks for another batch only while it holds at
most ``source.lowWater`` items, and never has more than one request in
flight. So at most about two batches (plus the lookahead item) are ever
pulled ahead of what the caller or consumer took, however long -- or
infinite -- the iterator is. A paused push consumer stops requests
altogether; a pull consumer only causes requests when it asks for items.

Errors raised by the iterator are not an "end": they arrive as the error of
the item the caller was waiting for (or the errback of the consumer run).
An empty iterator yields no items. Nothing waits for a Deferator to finish,
so an abandoned one never blocks a worker's or queue's shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure

from ..errors import ImplementationError, NotReadyError
from ._base import _NOTHING, BATCH_ITEMS, BATCH_SECONDS, Batch, isIterator
from ._prefetch import Prefetcherator

__all__ = [
    "Deferator",
    "Delay",
    "deferToDelay",
    "threadDeferator",
]

log = logging.getLogger("asynqueue")


def deferToDelay(delay: float, clock: Any = None) -> Deferred[None]:
    """A Deferred firing with None after *delay* seconds (cancellable)."""
    from twisted.internet import task

    if clock is None:
        from twisted.internet import reactor as clock
    return task.deferLater(clock, delay, lambda: None)


class Delay:
    """
    Makes Deferreds that fire after a delay, and can cut them all short.

    ``Delay(interval=None, backoff=None, timeout=None)`` keeps the original
    signature; ``interval`` is the default delay (0.001 s). ``backoff``
    (1.0 to 1.3) and ``timeout`` serve `untilEvent`, kept for code written
    for the original (asynqueue itself waits on events, never by polling).
    Unlike the original, a Delay registers no reactor shutdown trigger.
    """

    def __init__(
        self,
        interval: float | None = None,
        backoff: float | None = None,
        timeout: float | None = None,
        clock: Any = None,
    ) -> None:
        self.interval = 0.001 if interval is None else interval
        self.backoff = 1.1 if backoff is None else backoff
        if not 1.0 <= self.backoff <= 1.3:
            raise ValueError(f"backoff must be within 1.0 and 1.3, not {backoff!r}")
        self.timeout = timeout
        self._clock = clock
        self._pending: dict[object, tuple[Any, Deferred[None]]] = {}
        self.isShutdown = False

    def __call__(self, delay: float | None = None) -> Deferred[None]:
        """A Deferred firing after *delay* (default: ``interval``) seconds."""
        if self.isShutdown:
            return succeed(None)
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor as clock
        token = object()
        d: Deferred[None] = Deferred(lambda _: self._cancel(token))
        call = clock.callLater(self.interval if delay is None else delay, self._fire, token)
        self._pending[token] = (call, d)
        return d

    def _fire(self, token: object) -> None:
        _, d = self._pending.pop(token)
        d.callback(None)

    def _cancel(self, token: object) -> None:
        entry = self._pending.pop(token, None)
        if entry is not None and entry[0].active():
            entry[0].cancel()

    def untilEvent(self, eventChecker: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """
        Poll ``eventChecker(*args, **kw)`` until it returns something true.

        Fires True when the event happened, False when ``timeout`` seconds
        passed or `shutdown` cut the wait short, and None if the checker
        raised (the error is logged). Checks start every ``interval`` seconds
        and grow ``backoff`` times sparser, up to one a second.
        """
        if not callable(eventChecker):
            raise TypeError(f"untilEvent needs a callable event checker, not {eventChecker!r}")
        return self._poll(eventChecker, args, kw)

    @defer.inlineCallbacks
    def _poll(self, eventChecker: Callable[..., Any], args: Any, kw: Any) -> Any:
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor as clock
        t0 = clock.seconds()
        interval = self.interval
        while True:
            try:
                if eventChecker(*args, **kw):
                    return True
            except Exception:
                log.exception("Event checker %r failed", eventChecker)
                return None
            if self.isShutdown:
                return False
            if self.timeout is not None and clock.seconds() - t0 >= self.timeout:
                return False
            yield self(interval)
            interval = min(interval * self.backoff, 1.0)

    def shutdown(self) -> None:
        """Fire every pending delay now; later delays fire at once."""
        self.isShutdown = True
        pending, self._pending = self._pending, {}
        for call, d in pending.values():
            if call.active():
                call.cancel()
            d.callback(None)


# --------------------------------------------------------------------- pulling


class _Puller:
    """
    Advances one iterator, always one item ahead (see the module docstring).

    Whichever thread runs `pull` owns the iterator for that call; a lock
    keeps a stray concurrent call from entering a running generator.
    """

    __slots__ = ("_ahead", "_done", "_iterator", "_lock", "_next", "_stashed")

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._iterator = iterator
        self._next = iterator.__next__
        self._ahead = _NOTHING
        self._done = False
        self._stashed: Failure | None = None
        self._lock = threading.Lock()

    def pull(self, maxItems: int, maxSeconds: float | None = None) -> Batch:
        """Up to *maxItems* items (at least the lookahead), then one more ahead."""
        with self._lock:
            if self._done:
                return [], False, None
            items: list[Any] = []
            if self._ahead is not _NOTHING:
                items.append(self._ahead)
                self._ahead = _NOTHING
            nxt = self._next
            append = items.append
            try:
                if maxSeconds is None:
                    while len(items) < maxItems:
                        append(nxt())
                else:
                    deadline = monotonic() + maxSeconds
                    while len(items) < maxItems and monotonic() < deadline:
                        append(nxt())
                self._ahead = nxt()
            except StopIteration:
                self._done = True
                return items, False, None
            except Exception:
                self._done = True
                return items, False, Failure()
            return items, True, None

    def nextTriple(self) -> tuple[Any, bool, bool]:
        """
        One item in the original ``(value, isValid, moreLeft)`` form. An error
        of the iterator counts as one more "item": it is raised by the call
        after the last good value.
        """
        stashed = self._stashed
        if stashed is not None:
            self._stashed = None
            stashed.raiseException()
        items, more, failure = self.pull(1)
        if not items:
            if failure is not None:
                failure.raiseException()
            return None, False, False
        self._stashed = failure
        return items[0], True, more or failure is not None

    def close(self) -> None:
        """Stop: drop the lookahead and close the iterator if it can be."""
        with self._lock:
            self._done = True
            self._ahead = _NOTHING
            close = getattr(self._iterator, "close", None)
            if callable(close):
                close()


class _SyncSource:
    """Pulls in the calling (reactor) thread; a fetch completes at once."""

    lowWater = -1  # fetch on demand only: prefetching gains nothing here

    def __init__(self, puller: _Puller, batchSize: int = 1) -> None:
        self.puller = puller
        self.batchSize = batchSize

    def fetch(self) -> Deferred[Batch]:
        return succeed(self.puller.pull(self.batchSize))

    def close(self) -> None:
        try:
            self.puller.close()
        except Exception:
            log.debug("Closing an iterator failed", exc_info=True)


class _ThreadSource:
    """Pulls batches in a worker thread through its ``deferToThread``."""

    def __init__(
        self,
        puller: _Puller,
        deferToThread: Callable[..., Deferred[Any]],
        maxItems: int = BATCH_ITEMS,
        maxSeconds: float = BATCH_SECONDS,
    ) -> None:
        self.puller = puller
        self._deferToThread = deferToThread
        self.maxItems = max(1, maxItems)
        self.maxSeconds = maxSeconds
        # Ask for the next batch while still holding up to one batch, so the
        # thread works while the reactor hands out items: double buffering.
        self.lowWater = self.maxItems

    def fetch(self) -> Deferred[Batch]:
        return maybeDeferred(self._deferToThread, self.puller.pull, self.maxItems, self.maxSeconds)

    def close(self) -> None:
        # In the thread too: closing runs the generator's cleanup code. If
        # the worker has stopped, the generator is left to the garbage
        # collector.
        d = maybeDeferred(self._deferToThread, self.puller.close)
        d.addErrback(lambda f: log.debug("Closing an iterator failed: %s", f.value))


class _TripleSource:
    """The original protocol: ``f(*args, **kw)`` -> (Deferred of) a triple."""

    lowWater = -1

    def __init__(self, f: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]):
        self._f = f
        self._args = args
        self._kw = kw

    def fetch(self) -> Deferred[Batch]:
        return maybeDeferred(self._f, *self._args, **self._kw).addCallback(self._toBatch)

    @staticmethod
    def _toBatch(triple: tuple[Any, bool, bool]) -> Batch:
        value, isValid, moreLeft = triple
        if not isValid:
            return [], False, None
        return [value], bool(moreLeft), None

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ Deferator


_FORWARDED = frozenset(
    ("addCallback", "addCallbacks", "addErrback", "addBoth", "addTimeout",
     "chainDeferred", "called", "result")
)  # fmt: skip


class Deferator:
    """
    An iterator of Deferreds over the items of a (possibly remote) iterator.

    Use it in either of two ways::

        @inlineCallbacks
        def f():
            for d in dr:
                item = yield d      # d fires with the item
                if enough: dr.stop()

        async def g():
            async for item in dr:
                ...

    ``next(dr)`` raises StopIteration as soon as nothing is left (known
    without waiting, thanks to the one-item lookahead), and `NotReadyError`
    if the previous item's Deferred has not fired yet. An exception raised by
    the iterator makes that item's Deferred (or the ``await``) fail with it;
    the iteration then ends.

    Attributes:
        d: fires True when the iteration was exhausted, False when it was
            stopped early or ended in an error. Other public Deferred
            methods (``addCallback``, ...) are forwarded to it.
        representation: text for ``repr``.

    Construction (compatible with the original):

    - ``Deferator(iterator)``: items pulled in this thread, one per step.
    - ``Deferator(representation, f, *args, **kw)``: ``f(*args, **kw)``
      returns (a Deferred of) ``(value, isValid, moreLeft)`` per item; the
      caller promises at least one item.
    - ``Deferator(prefetcherator)``: over a set-up `Prefetcherator`.
    - ``Deferator()`` or ``Deferator(text)``: empty.

    Thread workers make theirs with `threadDeferator`.
    """

    # Where the items come from: None when empty or finished.
    _source: _SyncSource | _ThreadSource | _TripleSource | None

    def __init__(self, objOrRep: Any = None, *args: Any, **kw: Any) -> None:
        self._initState()
        if args and callable(args[0]):
            self.representation = str(objOrRep)
            self._source = _TripleSource(args[0], args[1:], kw)
            self._more = True
        elif isinstance(objOrRep, Prefetcherator):
            self.representation = repr(objOrRep)
            self._source = _TripleSource(objOrRep.getNext, (), {})
            self._more = objOrRep.moreLeft
        elif objOrRep is None or isinstance(objOrRep, str):
            self.representation = objOrRep or ""
        elif isinstance(objOrRep, Deferred):
            raise TypeError("Deferator needs an iterator, not a Deferred")
        else:
            try:
                iterator = iter(objOrRep)
            except TypeError:
                raise TypeError(
                    f"Deferator needs an iterator, iterable or next-callable, not {objOrRep!r}"
                ) from None
            self.representation = _describe(objOrRep)
            puller = _Puller(iterator)
            self._source = _SyncSource(puller)
            # Pull only the lookahead, so an empty iterator shows as empty.
            self._load(puller.pull(0))
        if not self.moreLeft:
            self._end(True)

    def _initState(self, representation: str = "") -> None:
        self.d: Deferred[bool] = Deferred()
        self.representation = representation
        self._source = None
        self._buffer: deque[Any] = deque()
        self._more = False
        self._failure: Failure | None = None
        self._fetching = False
        self._done = False
        self._waiter: Deferred[Any] | None = None
        self._waiterAsync = False
        # Set by an IterationProducer: called whenever a batch lands.
        self._listener: Callable[[], None] | None = None

    @classmethod
    def _fromSource(cls, source: Any, batch: Batch, representation: str) -> Deferator:
        self = cls.__new__(cls)
        self._initState(representation)
        self._source = source
        self._load(batch)
        if not self.moreLeft:
            self._end(True)
        return self

    # ------------------------------------------------------------- public

    @property
    def moreLeft(self) -> bool:
        """True while another item (or the iterator's error) is to come."""
        return bool(self._buffer) or self._failure is not None or (self._more and not self._done)

    def stop(self) -> None:
        """End the iteration now: ``d`` fires False and the iterator is closed."""
        if self._done:
            return
        self._done = True
        self._more = False
        self._buffer.clear()
        self._failure = None
        waiter, self._waiter = self._waiter, None
        if self._source is not None:
            self._source.close()
        if not self.d.called:
            self.d.callback(False)
        if waiter is not None:
            waiter.errback(defer.CancelledError("the Deferator was stopped"))
        if self._listener is not None:
            self._listener()  # a producer writing my items finishes now

    def __iter__(self) -> Deferator:
        return self

    def __next__(self) -> Deferred[Any]:
        if self._waiter is not None:
            raise NotReadyError(f"{self!r}: the previous item has not arrived yet")
        if self._buffer:
            d = succeed(self._buffer.popleft())
            self._prefetch()
        elif self._failure is not None:
            d = fail(self._takeFailure())
        elif self._more and not self._done:
            d = self._wait(isAsync=False)
        else:
            self._end(True)
            raise StopIteration
        d.stop = self.stop  # type: ignore[attr-defined]
        return d

    def __aiter__(self) -> Deferator:
        return self

    def __anext__(self) -> Deferred[Any]:
        """A Deferred (awaitable in Twisted coroutines) of the next item."""
        if self._waiter is not None:
            raise NotReadyError(f"{self!r}: the previous item has not arrived yet")
        if self._buffer:
            d = succeed(self._buffer.popleft())
            self._prefetch()
            return d
        if self._failure is not None:
            return fail(self._takeFailure())
        if self._more and not self._done:
            return self._wait(isAsync=True)
        self._end(True)
        raise StopAsyncIteration

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__.get("d")
        if d is None or name not in _FORWARDED:
            raise AttributeError(name)
        return getattr(d, name)

    def __repr__(self) -> str:
        return f"<Deferator wrapping {self.representation}>"

    # The original's way to ask (still used by custom IWorker implementations).
    isIterator = staticmethod(isIterator)

    # ----------------------------------------------------------- internals

    def _readInBatches(
        self, onItems: Callable[[deque[Any]], None], onEnd: Callable[[Failure | None], None]
    ) -> None:
        """
        Hand the items over a batch at a time instead of one by one (for
        readers that take whole batches, such as the executors' ``map``):
        *onItems* gets each landed batch's items, and the next batch is
        fetched after each; at the end *onEnd* gets None, or the Failure
        that ended the iteration. Stopping the Deferator also ends it (None).
        """

        def pump() -> None:
            items = self._takeLanded()
            if items:
                onItems(items)
            if self._failure is not None:
                self._listener = None
                onEnd(self._takeFailure())
            elif not self._more or self._done:
                self._listener = None
                self._end(True)
                onEnd(None)
            else:
                self._request()  # (a no-op while a fetch is out)

        self._listener = pump
        pump()

    def _takeLanded(self) -> deque[Any]:
        """The items landed and not yet taken, taken."""
        items, self._buffer = self._buffer, deque()
        return items

    def _load(self, batch: Batch) -> None:
        items, more, failure = batch
        self._buffer.extend(items)
        self._more = more
        if failure is not None:
            self._failure = failure
            self._more = False

    def _takeFailure(self) -> Failure:
        failure = self._failure
        assert failure is not None
        self._failure = None
        self._end(False)
        return failure

    def _end(self, completed: bool) -> None:
        self._done = True
        self._more = False
        if not self.d.called:
            self.d.callback(completed)

    def _wait(self, isAsync: bool) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(self._cancelWait)
        self._waiter = d
        self._waiterAsync = isAsync
        self._request()
        return d

    def _cancelWait(self, d: Deferred[Any]) -> None:
        if self._waiter is d:
            self._waiter = None

    def _prefetch(self) -> None:
        if self._source is not None and len(self._buffer) <= self._source.lowWater:
            self._request()

    def _request(self) -> None:
        """Have one batch request in flight, if more items can come."""
        source = self._source
        if self._fetching or not self._more or self._done or source is None:
            return
        self._fetching = True
        source.fetch().addCallbacks(self._arrived, self._fetchFailed)

    def _arrived(self, batch: Batch) -> None:
        self._fetching = False
        if self._done:
            return
        self._load(batch)
        self._notify()

    def _fetchFailed(self, failure: Failure) -> None:
        self._fetching = False
        if self._done:
            return
        self._more = False
        self._failure = failure
        self._notify()

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if self._buffer:
                self._waiter = None
                waiter.callback(self._buffer.popleft())
                self._prefetch()
            elif self._failure is not None:
                self._waiter = None
                waiter.errback(self._takeFailure())
            elif not self._more:
                self._waiter = None
                self._end(True)
                if self._waiterAsync:
                    waiter.errback(StopAsyncIteration())
                else:
                    waiter.errback(
                        ImplementationError(
                            f"{self!r}: the source said more items were left but had none"
                        )
                    )
            else:
                self._request()
        if self._listener is not None:
            self._listener()


def _primed(source: Any, representation: str) -> Deferred[Deferator | None]:
    """Fetch *source*'s first batch; a Deferator, or None if it was empty."""

    def gotFirst(batch: Batch) -> Deferator | None:
        items, more, failure = batch
        if not items and not more and failure is None:
            return None
        return Deferator._fromSource(source, batch, representation)

    return source.fetch().addCallback(gotFirst)


def threadDeferator(
    iterator: Iterator[Any],
    deferToThread: Callable[..., Deferred[Any]],
    maxItems: int = BATCH_ITEMS,
    maxSeconds: float = BATCH_SECONDS,
) -> Deferred[Deferator | list[Any]]:
    """
    A Deferred firing with a `Deferator` over *iterator*, or ``[]`` if empty.

    Every step of *iterator* (the first included) runs through
    ``deferToThread(f, *args)``, which must run ``f`` in the thread that owns
    the iterator and return a Deferred of its result. Items come in batches
    of up to *maxItems* or whatever was pulled in *maxSeconds*.

    The Deferred (rather than a Deferator right away) is what lets an empty
    iterator give ``[]`` without a step in the reactor thread. It fails if
    the first ``deferToThread`` does.
    """
    source = _ThreadSource(_Puller(iterator), deferToThread, maxItems, maxSeconds)
    return _primed(source, _describe(iterator)).addCallback(lambda dr: [] if dr is None else dr)


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."

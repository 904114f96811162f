"""
Iterators that cross the reactor/worker boundary: `Deferator`, producers, consumers.

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
from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import ImplementationError, NotReadyError

__all__ = [
    "BATCH_ITEMS",
    "BATCH_SECONDS",
    "Deferator",
    "Delay",
    "IterationProducer",
    "ListConsumer",
    "Prefetcherator",
    "consumeInto",
    "deferToDelay",
    "isIterator",
    "iteratorToProducer",
    "threadDeferator",
]

log = logging.getLogger("asynqueue")

# Most items one thread round trip fetches. Large enough that the hand-off
# cost (a thread wake-up plus a reactor wake-up, tens of microseconds) is
# negligible per item; small enough that two batches in memory are cheap.
BATCH_ITEMS = 2048

# A batch stops filling after this long, so a slow generator still delivers
# its first items promptly instead of after BATCH_ITEMS of them.
BATCH_SECONDS = 0.01

# Items a producer fed from a synchronous source pulls per request, and
# writes per reactor turn before letting the reactor run other work.
SYNC_BATCH_ITEMS = 256
TURN_ITEMS = 2048

_NOTHING: Any = object()

# (items, more, failure): see the module docstring.
Batch = tuple[list[Any], bool, Failure | None]


def isIterator(obj: Any) -> bool:
    """True for iterators other than plain containers and Deferreds."""
    if isinstance(
        obj,
        (Deferred, str, bytes, bytearray, list, tuple, dict, set, frozenset,
         memoryview, range),
    ):  # fmt: skip
        return False
    return callable(getattr(obj, "__iter__", None)) and callable(getattr(obj, "__next__", None))


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
    (1.0 to 1.3) and ``timeout`` are accepted and checked for compatibility
    but unused: the original's polling ``untilEvent`` is gone, since
    asynqueue waits on events, never by polling. Unlike the original, a Delay
    registers no reactor shutdown trigger.
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
        if self._stashed is not None:
            failure, self._stashed = self._stashed, None
            failure.raiseException()
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
        self._source: Any = None
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
        return f"<Deferator {self.representation}>"

    # ----------------------------------------------------------- internals

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
        if self._fetching or not self._more or self._done:
            return
        self._fetching = True
        self._source.fetch().addCallbacks(self._arrived, self._fetchFailed)

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


# ------------------------------------------------------------------ producers


def _isConsumer(obj: Any) -> bool:
    return IConsumer.providedBy(obj) or all(
        callable(getattr(obj, name, None))
        for name in ("registerProducer", "unregisterProducer", "write")
    )


@implementer(IPushProducer, IPullProducer)
class IterationProducer:
    """
    Writes a Deferator's items to an IConsumer, one ``write`` per item.

    One object serves as either kind of producer; the kind is chosen when it
    registers with its consumer (``streaming``):

    - push (``streaming=True``): it writes items as they come until the
      consumer calls ``pauseProducing``; while paused it requests no more
      items from the worker, and ``resumeProducing`` carries on.
    - pull (``streaming=False``): each ``resumeProducing`` call writes one
      item (when it is available).

    Items that can be pulled right here (a reactor-thread Deferator) are
    written at most `TURN_ITEMS` per reactor turn, so a long iterator does
    not starve the reactor.

    When the last item has been written, the producer unregisters itself from
    the consumer and `run`'s Deferred fires with the consumer. If the
    iterator raises (or the consumer's ``write`` does), the producer
    unregisters and the Deferred fails with that error. If the consumer calls
    ``stopProducing``, the iterator is closed and the Deferred fires with the
    consumer (without another ``unregisterProducer``: the consumer ended it).

    Args:
        dr: a `Deferator`, or an iterator/iterable to wrap in one.
        consumer: if given, register with it now (see `registerConsumer`).
        streaming: the kind of producer to register as (see
            `registerConsumer`).
        reactor: for scheduling reactor turns (the global reactor by default).
    """

    def __init__(
        self,
        dr: Any,
        consumer: Any = None,
        streaming: bool | None = None,
        reactor: Any = None,
    ) -> None:
        if not isinstance(dr, Deferator):
            if isIterator(dr):
                dr = Deferator(dr)
            else:
                raise TypeError(f"IterationProducer needs a Deferator, not {dr!r}")
        self.dr: Deferator = dr
        self.consumer: Any = None
        self.streaming: bool | None = None
        self._reactor = reactor
        self._paused = False
        self._credits = 0
        self._running = False
        self._done = False
        self._outcome: Any = None
        self._consumerStopped = False
        self._pumping = False
        self._again = False
        self._scheduled: Any = None
        self._waiters: list[Deferred[Any]] = []
        source = dr._source
        if isinstance(source, _SyncSource):
            source.batchSize = max(source.batchSize, SYNC_BATCH_ITEMS)
        if consumer is not None:
            self.registerConsumer(consumer, streaming)

    def __repr__(self) -> str:
        return f"<IterationProducer for {self.dr!r}>"

    def registerConsumer(self, consumer: Any, streaming: bool | None = None) -> None:
        """
        Register with *consumer* as a push (``streaming=True``) or pull
        producer. If *streaming* is None, a bool ``streaming`` attribute of
        the consumer decides, and push is the default.

        Raises:
            ImplementationError: *consumer* is not an IConsumer.
            RuntimeError: a consumer is already registered.
        """
        if not _isConsumer(consumer):
            raise ImplementationError(f"{consumer!r} does not provide IConsumer")
        if self.consumer is not None:
            raise RuntimeError(f"{self!r} already has a consumer")
        if streaming is None:
            hint = getattr(consumer, "streaming", None)
            streaming = hint if isinstance(hint, bool) else True
        self.consumer = consumer
        self.streaming = streaming
        consumer.registerProducer(self, streaming)

    def run(self) -> Deferred[Any]:
        """Start producing; fires with the consumer when done (see class doc)."""
        if self.consumer is None:
            return fail(ImplementationError(f"{self!r} has no consumer to run for"))
        if not self._running:
            self._running = True
            self.dr._listener = self._pump
            self._pump()
        return self.deferUntilDone()

    def deferUntilDone(self) -> Deferred[Any]:
        """A Deferred firing like `run`'s, without starting anything."""
        if self._done:
            return (
                fail(self._outcome)
                if isinstance(self._outcome, Failure)
                else succeed(self._outcome)
            )
        d: Deferred[Any] = Deferred()
        self._waiters.append(d)
        return d

    # IPushProducer / IPullProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self.streaming is False:
            self._credits += 1
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        if self._done:
            return
        self._consumerStopped = True
        self.dr.stop()
        self._finish(None)

    # internals

    def _pump(self) -> None:
        # Re-entrant calls (a consumer resuming us from inside write, a batch
        # landing synchronously) just ask the running loop to go round again.
        if not self._running or self._done:
            return
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        budget = TURN_ITEMS
        try:
            while True:
                self._again = False
                budget = self._pumpOnce(budget)
                if self._done:
                    break
                if budget <= 0:
                    self._scheduleTurn()
                    break
                if not self._again:
                    break
        except Exception:
            self.dr.stop()
            self._finish(Failure())
        finally:
            self._pumping = False

    def _pumpOnce(self, budget: int) -> int:
        dr = self.dr
        buffer = dr._buffer
        write = self.consumer.write
        if self.streaming:
            self._maybeRequest()
            while buffer and not self._paused and budget > 0:
                write(buffer.popleft())
                budget -= 1
                if self._done:
                    return budget
        else:
            while buffer and self._credits > 0 and budget > 0:
                self._credits -= 1
                write(buffer.popleft())
                budget -= 1
                if self._done:
                    return budget
        if not buffer:
            if dr._failure is not None:
                self._finish(dr._takeFailure())
                return budget
            if not dr._more or dr._done:
                self._finish(None)
                return budget
        self._maybeRequest()
        return budget

    def _maybeRequest(self) -> None:
        dr = self.dr
        if dr._fetching or not dr._more or dr._done:
            return
        size = len(dr._buffer)
        lowWater = dr._source.lowWater
        if self.streaming:
            wanted = not self._paused and size <= max(lowWater, 0)
        else:
            wanted = (size == 0 and self._credits > 0) or size <= lowWater
        if wanted:
            dr._request()

    def _scheduleTurn(self) -> None:
        if self._scheduled is not None and self._scheduled.active():
            return
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        self._scheduled = reactor.callLater(0, self._pump)

    def _finish(self, failure: Failure | None) -> None:
        if self._done:
            return
        self._done = True
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        dr = self.dr
        dr._listener = None
        dr._end(failure is None and not self._consumerStopped)
        if not self._consumerStopped:
            try:
                self.consumer.unregisterProducer()
            except Exception:
                if failure is None:
                    failure = Failure()
                else:
                    log.exception("unregisterProducer failed for %r", self.consumer)
        self._outcome = self.consumer if failure is None else failure
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if failure is None:
                d.callback(self.consumer)
            else:
                d.errback(failure)


def _asDeferator(result: Any) -> Deferator:
    if isinstance(result, Deferator):
        return result
    return Deferator(result)


def consumeInto(result: Any, consumer: Any, streaming: bool | None = None) -> Deferred[Any]:
    """
    Write the items of *result* to *consumer*; fires with the consumer.

    *result* is what a worker reported with status ``i``: a `Deferator`, a
    plain iterator (pulled in the reactor thread), ``[]``/None (nothing to
    write), an `IterationProducer`, or a Deferred of any of these.

    The producer registers with *consumer* (push or pull, see
    `IterationProducer.registerConsumer`) and unregisters once every item
    has been written; the Deferred then fires with *consumer*. It fails if
    the iterator raises, if *consumer* is not an IConsumer, or if its
    ``registerProducer``/``write`` raise. An empty result registers and
    unregisters at once, so consumers that finish on ``unregisterProducer``
    still do.
    """
    if isinstance(result, Deferred):
        return result.addCallback(consumeInto, consumer, streaming)
    try:
        if isinstance(result, IterationProducer):
            producer = result
        else:
            producer = IterationProducer(_asDeferator(result))
        if producer.consumer is not consumer:
            producer.registerConsumer(consumer, streaming)
    except Exception:
        return fail()
    return producer.run()


def iteratorToProducer(
    iterator: Any,
    consumer: Any = None,
    wrapper: Callable[[Callable[[], Any]], Any] | None = None,
) -> Deferred[IterationProducer | None]:
    """
    An `IterationProducer` over *iterator*, or None if it is not an iterator
    or is empty.

    With a *consumer*, the producer registers with it and runs to the end
    before the Deferred fires (with the producer). *wrapper*, if given, is
    called as ``wrapper(getNext)`` for every item and must return (a Deferred
    of) what ``getNext()`` returns, ``(value, isValid, moreLeft)`` -- e.g.
    ``wrapper=deferToThread`` steps the iterator in a thread.
    """
    if not isIterator(iterator):
        return succeed(None)
    if wrapper is None:
        dr = Deferator(iterator)
        d: Deferred[Deferator | None] = succeed(dr if dr.moreLeft else None)
    elif not callable(wrapper):
        return fail(TypeError(f"wrapper {wrapper!r} is not callable"))
    else:
        source = _TripleSource(wrapper, (_Puller(iterator).nextTriple,), {})
        d = _primed(source, _describe(iterator))

    def gotDeferator(dr: Deferator | None) -> Any:
        if dr is None:
            return None
        producer = IterationProducer(dr)
        if consumer is None:
            return producer
        producer.registerConsumer(consumer)
        return producer.run().addCallback(lambda _: producer)

    return d.addCallback(gotDeferator)


# ------------------------------------------------------------ prefetcherator


class Prefetcherator:
    """
    Steps an iterator (or a next-callable) one item ahead, for the original
    ``(value, isValid, moreLeft)`` protocol.

    ``setup(iteratorOrCallable, *args, **kw)`` takes an iterator, or a
    callable returning the next value (or a Deferred of it) and raising
    StopIteration at the end. ``getNext()`` then gives a Deferred of
    ``(value, True, moreLeft)``, and ``(None, False, False)`` once done. An
    exception other than StopIteration is delivered as the errback of the
    ``getNext`` after the last good value; then it is done.
    """

    def __init__(self, ID: Any = None) -> None:
        self.ID = ID
        self._nextCall: Callable[[], Any] | None = None
        self._ahead: Any = _NOTHING  # a value, _NOTHING (end) or a Failure
        self._busy = False
        self._lock = defer.DeferredLock()

    def __repr__(self) -> str:
        return f"<Prefetcherator ID={self.ID!r}>"

    @property
    def moreLeft(self) -> bool:
        return self._ahead is not _NOTHING

    def isBusy(self) -> bool:
        """True while a step or a ``getNext`` is in progress."""
        return self._busy or self._lock.locked

    def setup(self, iteratorOrCallable: Any, *args: Any, **kw: Any) -> Deferred[bool]:
        """Start on *iteratorOrCallable*; False if already set up or unusable."""
        if self._nextCall is not None:
            return succeed(False)
        if isIterator(iteratorOrCallable):
            self._nextCall = iteratorOrCallable.__next__
        elif callable(iteratorOrCallable):
            self._nextCall = lambda: iteratorOrCallable(*args, **kw)
        else:
            return succeed(False)
        return self._step().addCallback(lambda _: True)

    def _step(self) -> Deferred[None]:
        self._busy = True

        def got(value: Any) -> None:
            self._ahead = value

        def failed(failure: Failure) -> None:
            self._ahead = _NOTHING if failure.check(StopIteration) else failure

        def idle(_: Any) -> None:
            self._busy = False

        assert self._nextCall is not None
        return maybeDeferred(self._nextCall).addCallbacks(got, failed).addBoth(idle)

    def getNext(self) -> Deferred[tuple[Any, bool, bool]]:
        """A Deferred of the next ``(value, isValid, moreLeft)``."""
        return self._lock.run(self._getNext)

    def _getNext(self) -> Any:
        ahead = self._ahead
        if self._nextCall is None or ahead is _NOTHING:
            return succeed((None, False, False))
        if isinstance(ahead, Failure):
            self._ahead = _NOTHING
            return fail(ahead)
        return self._step().addCallback(lambda _: (ahead, True, self.moreLeft))


# ------------------------------------------------------------------ consumers


@implementer(IConsumer)
class ListConsumer:
    """
    An IConsumer that collects what is written to it into a list.

    Keywords become attributes; ``ListConsumer(streaming=False)`` asks a
    producer that honours the hint (`IterationProducer`) to register as a
    pull producer. Both kinds work: a push producer is paused while an item
    is being processed asynchronously; a pull producer is asked for each
    next item once the previous one is processed.

    Override ``processItem(item)`` to transform items; it may return a
    Deferred. Results keep write order even if processing finishes out of
    order. Call the instance for a Deferred of the list, firing once the
    producer has unregistered and every item is processed (or failing with
    the first processing error).
    """

    def __init__(self, **kw: Any) -> None:
        for name, value in kw.items():
            setattr(self, name, value)
        self.producer: Any = None
        self.producerStreaming: bool | None = None
        self.results: list[Any] = []
        self._pendingItems = 0
        self._finished = False
        self._failure: Failure | None = None
        self._pulling = False
        self._pullAgain = False
        self._waiters: list[Deferred[list[Any]]] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"{self!r} already has a producer")
        self.producer = producer
        self.producerStreaming = bool(streaming)
        self._finished = False
        if not streaming:
            self._pull()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._finished = True
        self._check()

    def processItem(self, item: Any) -> Any:
        """Transform one item (may return a Deferred). Identity by default."""
        return item

    def write(self, data: Any) -> None:
        index = len(self.results)
        self.results.append(None)
        try:
            result = self.processItem(data)
        except Exception:
            self._failed(Failure())
            self._pull()
            return
        if not isinstance(result, Deferred):
            self.results[index] = result
            self._pull()
            return
        self._pendingItems += 1
        producer = self.producer
        if self.producerStreaming and producer is not None:
            producer.pauseProducing()

        def processed(value: Any) -> None:
            self.results[index] = value

        def settled(_: Any) -> None:
            self._pendingItems -= 1
            if self._pendingItems == 0 and self.producer is not None:
                if self.producerStreaming:
                    self.producer.resumeProducing()
                else:
                    self._pull()
            self._check()

        result.addCallbacks(processed, self._failed).addBoth(settled)

    def _failed(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure

    def _pull(self) -> None:
        # Ask a pull producer for one more item; a loop, not recursion, since
        # the producer may write the next item from inside resumeProducing.
        if self.producerStreaming or self.producer is None or self._pendingItems:
            return
        if self._pulling:
            self._pullAgain = True
            return
        self._pulling = True
        try:
            while self.producer is not None and not self._pendingItems:
                self._pullAgain = False
                self.producer.resumeProducing()
                if not self._pullAgain:
                    break
        finally:
            self._pulling = False

    def _check(self) -> None:
        if not self._finished or self._pendingItems:
            return
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def _fire(self, d: Deferred[list[Any]]) -> None:
        if self._failure is not None:
            d.errback(self._failure)
        else:
            d.callback(list(self.results))

    def __call__(self) -> Deferred[list[Any]]:
        d: Deferred[list[Any]] = Deferred()
        if self._finished and not self._pendingItems:
            self._fire(d)
        else:
            self._waiters.append(d)
        return d

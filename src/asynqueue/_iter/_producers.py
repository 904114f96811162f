"""
Producers and consumers for iterator results: `IterationProducer` writes a
`Deferator`'s items to an IConsumer with back-pressure (push or pull);
`consumeInto` is what the queue calls for ``call(..., consumer=c)``;
`ListConsumer` keeps the original helper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import ImplementationError
from ._base import SYNC_BATCH_ITEMS, TURN_ITEMS, isIterator
from ._deferator import (
    Deferator,
    _describe,
    _primed,
    _Puller,
    _SyncSource,
    _TripleSource,
    log,
)

__all__ = [
    "IterationProducer",
    "ListConsumer",
    "consumeInto",
    "iteratorToProducer",
]


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
    Cancelling that Deferred closes the iterator, unregisters, and fails it
    with ``CancelledError``.

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

        Registering the same consumer again does nothing: a consumer whose
        ``registerProducer`` calls back here (as the original's consumers do)
        is fine.

        Raises:
            ImplementationError: *consumer* is not an IConsumer.
            RuntimeError: another consumer is already registered.
        """
        if not _isConsumer(consumer):
            raise ImplementationError(f"{consumer!r} does not provide IConsumer")
        if consumer is self.consumer:
            return
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
        d: Deferred[Any] = Deferred(self._cancelled)
        self._waiters.append(d)
        return d

    def _cancelled(self, d: Deferred[Any]) -> None:
        """A waiter was cancelled: stop producing and close the iterator (wherever it is)."""
        if self._done:
            return
        self.dr._listener = None  # (or stopping it would finish me as a success)
        self.dr.stop()
        self._finish(Failure(CancelledError("the items' delivery was cancelled")))

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
        source = dr._source
        if dr._fetching or not dr._more or dr._done or source is None:
            return
        size = len(dr._buffer)
        lowWater = source.lowWater
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

    *result* is what a worker reported with ``Status.ITERATOR``: a `Deferator`, a
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

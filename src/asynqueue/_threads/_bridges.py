"""
Blocking iterators fed from Twisted code, kept from the original's
``asynqueue.threads``: `Consumerator` (an IConsumer), `Filerator` (a
writable file) and `OrderedItemProducer`, on a class-wide thread pool
(`PoolUser`).

Their blocking end (``for item in bridge``) must run in another thread than
the reactor's: a worker thread, or a thread of the pool. Items cross through
a thread-safe FIFO; nothing polls. `IterationGetter` also keeps the
original's lock protocol for subclasses that override its ``loop``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._support._util import DeferredTracker, whenFired

__all__ = ["Consumerator", "Filerator", "IterationGetter", "OrderedItemProducer", "PoolUser"]

_END: Any = object()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class PoolUser:
    """
    A thread pool shared by every instance of every subclass (at least
    ``minThreads``, at most ``maxThreads`` threads), started on first use.
    """

    minThreads = 2
    maxThreads = 10
    _pool: ThreadPool | None = None
    _calls = DeferredTracker()

    @classmethod
    def setup(cls, maxThreads: int | None = None) -> None:
        """Make the shared pool if there is none; *maxThreads* resizes it."""
        if maxThreads:
            PoolUser.maxThreads = maxThreads
            if PoolUser._pool is not None:
                PoolUser._pool.adjustPoolSize(PoolUser.minThreads, maxThreads)
        if PoolUser._pool is None:
            PoolUser._pool = ThreadPool(
                PoolUser.minThreads, PoolUser.maxThreads, name="asynqueue-PoolUser"
            )
            _reactor().addSystemEventTrigger("during", "shutdown", PoolUser._stopPool)

    @classmethod
    def deferToThreadInPool(cls, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """Run ``f(*args, **kw)`` in a pool thread; a Deferred of its result."""
        cls.setup()
        pool = PoolUser._pool
        assert pool is not None
        if not pool.started:
            pool.start()
        return PoolUser._calls.put(deferToThreadPool(_reactor(), pool, f, *args, **kw))

    @classmethod
    def shutdown(cls) -> Deferred[None]:
        """Once every pool call has finished, stop the pool (the next use starts another)."""
        return PoolUser._calls.deferToAll().addCallback(lambda _: PoolUser._stopPool())

    @staticmethod
    def _stopPool() -> None:
        pool, PoolUser._pool = PoolUser._pool, None
        if pool is not None and pool.started:
            pool.stop()


class IterationGetter(PoolUser):
    """
    The base of the blocking bridges: iterating it blocks until the next item.

    Subclasses written for the original override `loop` and follow its lock
    protocol (see `loop`), started by `start`; ours (`Consumerator`,
    `Filerator`) pass their items through a thread-safe FIFO instead.
    """

    class IterationStopper:
        """Set as ``bIterationValue`` to end the iteration."""

    def __init__(self, maxThreads: int | None = None) -> None:
        self.setup(maxThreads)
        self.runState = "init"
        self.dList: list[Deferred[Any]] = []

    def start(self) -> None:
        """Run `loop` in a pool thread, with ``cLock`` and ``bLock`` held and ``nLock`` free."""
        self.runState = "started"
        self.cLock = threading.Semaphore(0)
        self.bLock = threading.Lock()
        self.bLock.acquire()
        self.nLock = threading.Lock()
        self.dList.append(self.deferToThreadInPool(self.loop))

    def loop(self) -> None:
        """
        Override: make the items, in the pool thread. For each one, (1) wait
        for ``cLock`` (released when a value is there for you), (2) acquire
        ``nLock`` and set ``bIterationValue`` to it (an `IterationStopper` to
        end), (3) release ``bLock``.
        """
        raise NotImplementedError("a subclass of IterationGetter must override loop")

    def deferUntilDone(self) -> Deferred[Any]:
        """Fires when every `loop` run has returned."""
        return DeferredList(self.dList)

    def __iter__(self) -> IterationGetter:
        return self

    def __next__(self) -> Any:
        self.bLock.acquire()
        value = self.bIterationValue
        self.nLock.release()
        if isinstance(value, self.IterationStopper):
            raise StopIteration
        return value


class _FifoGetter(IterationGetter):
    """Our bridges' blocking end: items put in at one end, taken in order at the other."""

    def __init__(self, maxThreads: int | None = None) -> None:
        super().__init__(maxThreads)
        self._items: SimpleQueue[Any] = SimpleQueue()
        self._exhausted = False
        self._done: Deferred[None] = Deferred()

    def __next__(self) -> Any:
        if self._exhausted:
            raise StopIteration
        item = self._items.get()
        if item is _END:
            self._exhausted = True
            _reactor().callFromThread(self._finish)
            raise StopIteration
        self._taken()
        return item

    def deferUntilDone(self) -> Deferred[None]:
        """Fires when the blocking end has come to the end."""
        return whenFired(self._done)

    def _put(self, item: Any) -> None:
        self._items.put(item)

    def _taken(self) -> None:
        """Called in the iterating thread after each item."""

    def _finish(self) -> None:
        if not self._done.called:
            self._done.callback(None)


@implementer(IConsumer)
class Consumerator(_FifoGetter):
    """
    An IConsumer for Twisted code and a blocking iterator for code in a
    thread: each ``write`` becomes an item. ``unregisterProducer`` (or
    `stop`) ends the iteration.

    A push producer is paused while ``highWater`` items wait; a pull
    producer is asked for one item at a time.
    """

    highWater = 8

    def __init__(self, producer: Any = None, maxThreads: int | None = None) -> None:
        super().__init__(maxThreads)
        self.producer: Any = None
        self.streaming: bool | None = None
        self._waiting = 0
        self._paused = False
        if producer is not None:
            self.registerProducer(producer, True)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"{self!r} already has a producer")
        self.producer = producer
        self.streaming = streaming
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> Deferred[None]:
        """End the iteration after the items written so far."""
        if self.producer is not None:
            self.producer = None
            self._put(_END)
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Stop the producer and end the iteration."""
        producer = self.producer
        if producer is not None:
            producer.stopProducing()
        return self.unregisterProducer()

    def write(self, data: Any) -> None:
        self._waiting += 1
        self._put(data)
        if self.streaming and not self._paused and self._waiting >= self.highWater:
            self._paused = True
            self.producer.pauseProducing()

    def _taken(self) -> None:
        _reactor().callFromThread(self._onTaken)

    def _onTaken(self) -> None:
        self._waiting -= 1
        producer = self.producer
        if producer is None:
            return
        if not self.streaming:
            producer.resumeProducing()
        elif self._paused and self._waiting <= self.highWater // 2:
            self._paused = False
            producer.resumeProducing()


class Filerator(_FifoGetter):
    """
    A file to write items to (from any thread) and a blocking iterator over
    them; `close` ends the iteration.
    """

    def __init__(self, maxThreads: int | None = None) -> None:
        super().__init__(maxThreads)
        self.closed = False

    def write(self, data: Any) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed Filerator")
        self._put(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Nothing to do: every write is at once available to the iterator."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._put(_END)


@implementer(IPushProducer)
class OrderedItemProducer(PoolUser):
    """
    Feeds a blocking function the items of asynchronous calls, in the order
    of the calls (not the order they finish in).

    ``start(fb, *args, **kw)`` runs ``fb(i, *args, **kw)`` in a pool thread,
    ``i`` being my `Consumerator`; each ``produceItem(fp, *args, **kw)``
    runs ``fp`` (which may return a Deferred) and gives ``i`` its item in
    turn. `stop` ends the iteration once every item is in and fires with
    ``fb``'s result (or its Failure).
    """

    def __init__(self, maxThreads: int | None = None) -> None:
        self.setup(maxThreads)
        self.i = Consumerator(self)
        self._next = 0  # index of the next produceItem call
        self._toWrite = 0  # index of the next item to write
        self._ready: dict[int, Any] = {}
        self._pending = DeferredTracker()
        self._fb: Deferred[Any] | None = None
        self._failure: Failure | None = None
        self.producing = True

    def start(self, fb: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[None]:
        """Run ``fb(i, *args, **kw)`` in a pool thread; fires once it is on its way."""
        self._fb = self.deferToThreadInPool(fb, self.i, *args, **kw)
        self._fb.addErrback(self._fbFailed)
        return succeed(None)

    def _fbFailed(self, failure: Failure) -> Failure:
        self.stopProducing()
        return failure

    def produceItem(self, fp: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """A Deferred of the item ``fp(*args, **kw)`` makes (None once stopped)."""
        if not self.producing:
            return succeed(None)
        k = self._next
        self._next += 1

        def gotItem(item: Any) -> Any:
            self._ready[k] = item
            self._writeReady()
            return item

        def failed(failure: Failure) -> None:
            if self._failure is None:
                self._failure = failure
            self.stopProducing()

        d = maybeDeferred(fp, *args, **kw).addCallbacks(gotItem, failed)
        return self._pending.put(d)

    def _writeReady(self) -> None:
        while self.producing and self._toWrite in self._ready:
            self.i.write(self._ready.pop(self._toWrite))
            self._toWrite += 1

    def stop(self, failureObj: Failure | None = None) -> Deferred[Any]:
        """End the iteration when all items are in; fires with ``fb``'s result."""

        def allIn(_: Any) -> Any:
            self.producing = False
            self.i.unregisterProducer()
            if self._fb is None:
                return None
            return self._fb

        def outcome(result: Any) -> Any:
            failure = failureObj or self._failure
            return result if failure is None else failure

        return self._pending.deferToAll().addCallback(allIn).addBoth(outcome)

    # IPushProducer: items are few and already made, so pausing is moot.
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.producing = False

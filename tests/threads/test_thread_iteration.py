"""Iteration across real threads: `threadDeferator` and `ThreadQueue` results."""

from __future__ import annotations

import queue
import threading
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from asynqueue import ThreadQueue
from asynqueue._iter._base import BATCH_ITEMS
from asynqueue.errors import AsynQueueError
from asynqueue.iteration import Deferator, ListConsumer, consumeInto, threadDeferator


class ThreadRunner:
    """
    A minimal ``deferToThread``: one real thread running calls in order. It
    counts the calls and can tell when none is outstanding.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.outstanding = 0
        self._idleWaiters: list[Deferred[None]] = []
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="test-runner", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            f, args, kw, d = job
            try:
                result: Any = f(*args, **kw)
            except BaseException:
                result = Failure()
            reactor.callFromThread(self._deliver, d, result)

    def _deliver(self, d: Deferred[Any], result: Any) -> None:
        self.outstanding -= 1
        d.callback(result)  # a Failure result makes it an errback
        if not self.outstanding:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def deferToThread(self, f: Any, *args: Any, **kw: Any) -> Deferred[Any]:
        self.calls += 1
        self.outstanding += 1
        d: Deferred[Any] = Deferred()
        self._jobs.put((f, args, kw, d))
        return d

    def whenIdle(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.outstanding:
            self._idleWaiters.append(d)
        else:
            d.callback(None)
        return d

    def stop(self) -> None:
        self._jobs.put(None)
        self.thread.join(5)


class Source:
    """Generators noting how many items were pulled, in which threads, and closing."""

    def __init__(self) -> None:
        self.pulled = 0
        self.threads: set[str] = set()
        self.closedIn: str | None = None

    def gen(self, n: int, failAt: int | None = None):
        try:
            for i in range(n):
                self.threads.add(threading.current_thread().name)
                if i == failAt:
                    raise ValueError(f"boom at {i}")
                self.pulled += 1
                yield i
        except GeneratorExit:
            self.closedIn = threading.current_thread().name
            raise


@implementer(IConsumer)
class CountingConsumer:
    """Counts (and sums) the items; can pause its producer after some."""

    def __init__(self, pauseAfter: int | None = None, streaming: bool = True) -> None:
        self.streaming = streaming
        self.count = 0
        self.total = 0
        self.last = -1
        self.ordered = True
        self.producer: Any = None
        self.unregistered = False
        self.pauseAfter = pauseAfter
        self.reachedPause: Deferred[None] = Deferred()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.unregistered = True

    def write(self, data: int) -> None:
        self.count += 1
        self.total += data
        if data != self.last + 1:
            self.ordered = False
        self.last = data
        if self.count == self.pauseAfter:
            self.producer.pauseProducing()
            self.reachedPause.callback(None)


def settle(turns: int = 5) -> Deferred[None]:
    """Let the reactor go round a few times (nothing may happen meanwhile)."""
    return task.deferLater(reactor, 0.02 * turns, lambda: None)


class ThreadDeferatorTest(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.runner = ThreadRunner()
        self.addCleanup(self.runner.stop)

    @inlineCallbacks
    def test_itemsNeverPulledInReactorThread(self):
        source = Source()
        dr = yield threadDeferator(source.gen(50), self.runner.deferToThread, maxItems=7)
        items = []
        for d in dr:
            items.append((yield d))
        self.assertEqual(items, list(range(50)))
        self.assertEqual(source.threads, {"test-runner"})
        self.assertTrue((yield dr.d))

    @inlineCallbacks
    def test_firstStepIsInTheThread(self):
        source = Source()
        d = threadDeferator(source.gen(3), self.runner.deferToThread)
        # Nothing was pulled synchronously, here in the reactor thread.
        self.assertEqual(source.pulled, 0)
        yield d
        self.assertEqual(source.threads, {"test-runner"})

    @inlineCallbacks
    def test_closedInTheThread(self):
        source = Source()
        dr = yield threadDeferator(source.gen(1000), self.runner.deferToThread, maxItems=10)
        yield next(dr)
        dr.stop()
        self.assertFalse((yield dr.d))
        yield self.runner.whenIdle()
        self.assertEqual(source.closedIn, "test-runner")

    @inlineCallbacks
    def test_batches(self):
        source = Source()
        dr = yield threadDeferator(
            source.gen(10_000), self.runner.deferToThread, maxItems=1000, maxSeconds=60
        )
        count = 0
        for d in dr:
            yield d
            count += 1
        self.assertEqual(count, 10_000)
        self.assertLessEqual(self.runner.calls, 11)

    @inlineCallbacks
    def test_empty(self):
        result = yield threadDeferator(Source().gen(0), self.runner.deferToThread)
        self.assertEqual(result, [])

    @inlineCallbacks
    def test_errorReachesTheItem(self):
        dr = yield threadDeferator(Source().gen(20, failAt=12), self.runner.deferToThread, 5)
        items = []
        with self.assertRaises(ValueError):
            for d in dr:
                items.append((yield d))
        self.assertEqual(items, list(range(12)))
        self.assertFalse((yield dr.d))

    @inlineCallbacks
    def test_errorOnFirstItem(self):
        dr = yield threadDeferator(Source().gen(5, failAt=0), self.runner.deferToThread)
        self.assertIsInstance(dr, Deferator)
        with self.assertRaises(ValueError):
            yield next(dr)

    @inlineCallbacks
    def test_threadGone(self):
        def broken(f: Any, *args: Any) -> Deferred[Any]:
            raise RuntimeError("no thread")

        with self.assertRaises(RuntimeError):
            yield threadDeferator(Source().gen(5), broken)

    @inlineCallbacks
    def test_prefetchIsBounded(self):
        source = Source()
        dr = yield threadDeferator(
            source.gen(10_000_000), self.runner.deferToThread, maxItems=100, maxSeconds=60
        )
        for _ in range(5):  # a slow reader: one item, then a pause
            yield next(dr)
            yield self.runner.whenIdle()
        calls = self.runner.calls
        yield settle()
        self.assertEqual(self.runner.calls, calls)
        self.assertLessEqual(source.pulled, 2 * 100 + 1)
        dr.stop()
        yield self.runner.whenIdle()
        self.assertEqual(source.closedIn, "test-runner")

    @inlineCallbacks
    def test_asyncFor(self):
        dr = yield threadDeferator(Source().gen(300), self.runner.deferToThread, maxItems=64)

        async def collect() -> list[int]:
            return [item async for item in dr]

        self.assertEqual((yield ensureDeferred(collect())), list(range(300)))

    @inlineCallbacks
    def test_consumerPush(self):
        consumer = CountingConsumer()
        dr = yield threadDeferator(Source().gen(20_000), self.runner.deferToThread)
        self.assertIs((yield consumeInto(dr, consumer)), consumer)
        self.assertEqual(consumer.count, 20_000)
        self.assertTrue(consumer.ordered)
        self.assertTrue(consumer.unregistered)

    @inlineCallbacks
    def test_consumerPull(self):
        consumer = ListConsumer(streaming=False)
        dr = yield threadDeferator(Source().gen(3000), self.runner.deferToThread, 100)
        yield consumeInto(dr, consumer)
        self.assertEqual((yield consumer()), list(range(3000)))

    @inlineCallbacks
    def test_consumerIteratorError(self):
        consumer = CountingConsumer()
        dr = yield threadDeferator(Source().gen(500, failAt=321), self.runner.deferToThread, 50)
        with self.assertRaises(ValueError):
            yield consumeInto(dr, consumer)
        self.assertEqual(consumer.count, 321)
        self.assertTrue(consumer.unregistered)

    @inlineCallbacks
    def test_noRequestWhilePaused(self):
        # Paused just as the first batch is written out, with the second
        # batch in flight: once that lands, nothing more is asked for.
        source = Source()
        consumer = CountingConsumer(pauseAfter=100)
        dr = yield threadDeferator(
            source.gen(5000), self.runner.deferToThread, maxItems=100, maxSeconds=60
        )
        done = consumeInto(dr, consumer)
        yield consumer.reachedPause
        yield self.runner.whenIdle()
        yield settle()
        self.assertEqual(self.runner.calls, 2)
        self.assertEqual(source.pulled, 201)
        consumer.producer.stopProducing()
        yield done

    @inlineCallbacks
    def test_pullPrefetchIsBounded(self):
        source = Source()
        consumer = CountingConsumer(streaming=False)
        dr = yield threadDeferator(
            source.gen(10_000_000), self.runner.deferToThread, maxItems=100, maxSeconds=60
        )
        done = consumeInto(dr, consumer)
        consumer.producer.resumeProducing()
        yield self.runner.whenIdle()
        yield settle()
        self.assertEqual(consumer.count, 1)
        self.assertLessEqual(source.pulled, 2 * 100 + 1)
        consumer.producer.stopProducing()
        yield done

    @inlineCallbacks
    def test_pausedConsumerStopsFetching(self):
        source = Source()
        consumer = CountingConsumer(pauseAfter=1)
        dr = yield threadDeferator(
            source.gen(5000), self.runner.deferToThread, maxItems=100, maxSeconds=60
        )
        done = consumeInto(dr, consumer)
        yield consumer.reachedPause
        yield self.runner.whenIdle()
        calls, pulled = self.runner.calls, source.pulled
        yield settle()
        self.assertEqual((self.runner.calls, source.pulled), (calls, pulled))
        self.assertLessEqual(pulled, 2 * 100 + 1)
        self.assertEqual(consumer.count, 1)
        consumer.producer.resumeProducing()
        self.assertIs((yield done), consumer)
        self.assertEqual(consumer.count, 5000)
        self.assertTrue(consumer.ordered)


class ThreadQueueIterationTest(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.q = ThreadQueue(returnFailure=True)
        self.addCleanup(self.q.shutdown)

    @inlineCallbacks
    def test_deferator(self):
        source = Source()
        dr = yield self.q.call(source.gen, 100)
        self.assertIsInstance(dr, Deferator)
        items = []
        for d in dr:
            items.append((yield d))
        self.assertEqual(items, list(range(100)))
        self.assertNotIn(threading.current_thread().name, source.threads)

    @inlineCallbacks
    def test_empty(self):
        self.assertEqual((yield self.q.call(Source().gen, 0)), [])

    @inlineCallbacks
    def test_error(self):
        dr = yield self.q.call(Source().gen, 10, failAt=4)
        items = []
        with self.assertRaises(ValueError):
            for d in dr:
                items.append((yield d))
        self.assertEqual(items, [0, 1, 2, 3])

    @inlineCallbacks
    def test_raw(self):
        it = yield self.q.call(Source().gen, 3, raw=True)
        self.assertNotIsInstance(it, Deferator)
        self.assertEqual(list(it), [0, 1, 2])

    @inlineCallbacks
    def test_asyncFor(self):
        dr = yield self.q.call(Source().gen, 10)

        async def collect() -> list[int]:
            return [item async for item in dr]

        self.assertEqual((yield ensureDeferred(collect())), list(range(10)))

    @inlineCallbacks
    def test_consumer(self):
        consumer = CountingConsumer()
        result = yield self.q.call(Source().gen, 100_000, consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual(consumer.count, 100_000)
        self.assertEqual(consumer.total, sum(range(100_000)))
        self.assertTrue(consumer.ordered)
        self.assertTrue(consumer.unregistered)

    @inlineCallbacks
    def test_consumerEmpty(self):
        consumer = CountingConsumer()
        self.assertIs((yield self.q.call(Source().gen, 0, consumer=consumer)), consumer)
        self.assertEqual(consumer.count, 0)

    @inlineCallbacks
    def test_consumerError(self):
        consumer = CountingConsumer()
        with self.assertRaises(ValueError):
            yield self.q.call(Source().gen, 10, failAt=7, consumer=consumer)
        self.assertEqual(consumer.count, 7)

    @inlineCallbacks
    def test_pullConsumer(self):
        consumer = ListConsumer(streaming=False)
        yield self.q.call(Source().gen, 2000, consumer=consumer)
        self.assertEqual((yield consumer()), list(range(2000)))

    @inlineCallbacks
    def test_tenMillionItemsNeverFillMemory(self):
        source = Source()
        consumer = CountingConsumer(pauseAfter=10)
        done = self.q.call(source.gen, 10_000_000, consumer=consumer)
        yield consumer.reachedPause
        # A call on the same thread runs after any batch already requested.
        yield self.q.deferToThread(lambda: None)
        pulled = source.pulled
        yield settle()
        yield self.q.deferToThread(lambda: None)
        self.assertEqual(source.pulled, pulled)
        self.assertLessEqual(pulled, consumer.count + 2 * BATCH_ITEMS + 1)
        consumer.pauseAfter = consumer.count + 50_000
        consumer.reachedPause = Deferred()
        consumer.producer.resumeProducing()
        yield consumer.reachedPause
        self.assertTrue(consumer.ordered)
        consumer.producer.stopProducing()
        self.assertIs((yield done), consumer)
        yield self.q.deferToThread(lambda: None)
        self.assertIsNotNone(source.closedIn)
        self.assertNotEqual(source.closedIn, threading.current_thread().name)

    @inlineCallbacks
    def test_earlyStopThenShutdown(self):
        source = Source()
        dr = yield self.q.call(source.gen, 10_000_000)
        for d in dr:
            if (yield d) == 3:
                dr.stop()
        self.assertFalse((yield dr.d))
        yield self.q.shutdown()
        self.assertNotEqual(source.closedIn, threading.current_thread().name)

    @inlineCallbacks
    def test_abandonedDeferatorDoesNotBlockShutdown(self):
        dr = yield self.q.call(Source().gen, 10_000_000)
        yield next(dr)
        yield self.q.shutdown()
        self.assertTrue(dr.moreLeft)
        # Reading on after shutdown ends in an error (no thread to pull in),
        # once the items already fetched are used up; it does not hang.
        count = 1
        with self.assertRaises(AsynQueueError):
            for d in dr:
                yield d
                count += 1
        self.assertLessEqual(count, 2 * BATCH_ITEMS + 1)
        self.assertFalse((yield dr.d))

"""Deferator, producers and consumers in the reactor thread (no worker threads)."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from twisted.trial import unittest
from zope.interface import implementer

from asynqueue._iter._base import SYNC_BATCH_ITEMS, TURN_ITEMS
from asynqueue.errors import ImplementationError, NotReadyError
from asynqueue.iteration import (
    Deferator,
    Delay,
    IterationProducer,
    ListConsumer,
    Prefetcherator,
    consumeInto,
    deferToDelay,
    isIterator,
    iteratorToProducer,
)


class Source:
    """Generators that count the items pulled and note whether they were closed."""

    def __init__(self) -> None:
        self.pulled = 0
        self.closed = False

    def gen(self, n: int, failAt: int | None = None):
        try:
            for i in range(n):
                if i == failAt:
                    raise ValueError(f"boom at {i}")
                self.pulled += 1
                yield i
        except GeneratorExit:
            self.closed = True
            raise


@implementer(IConsumer)
class RecordingConsumer:
    """Records writes and producer (un)registration; can pause or stop the producer."""

    def __init__(
        self,
        pauseAfter: int | None = None,
        stopAfter: int | None = None,
        failAt: int | None = None,
    ) -> None:
        self.items: list[Any] = []
        self.producer: Any = None
        self.registeredStreaming: bool | None = None
        self.registrations = 0
        self.unregistrations = 0
        self.pauseAfter = pauseAfter
        self.stopAfter = stopAfter
        self.failAt = failAt

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.registeredStreaming = streaming
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.unregistrations += 1

    def write(self, data: Any) -> None:
        if self.failAt is not None and len(self.items) == self.failAt:
            raise RuntimeError("consumer is full")
        self.items.append(data)
        if self.pauseAfter is not None and len(self.items) == self.pauseAfter:
            self.producer.pauseProducing()
        if self.stopAfter is not None and len(self.items) == self.stopAfter:
            self.producer.stopProducing()


class PullConsumer(RecordingConsumer):
    """Asks to be fed by a pull producer (the ``streaming`` hint)."""

    streaming = False


class ManualTurns:
    """A reactor stand-in whose ``callLater`` calls run only when told, one at a time."""

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        turns = self

        class Call:
            def active(self) -> bool:
                return self in turns.pending

            def cancel(self) -> None:
                turns.pending.remove(self)

            def run(self) -> None:
                f(*args)

        call = Call()
        self.pending.append(call)
        return call

    def runOne(self) -> None:
        self.pending.pop(0).run()


class IsIteratorTest(unittest.TestCase):
    timeout = 10

    def test_iterators(self) -> None:
        self.assertTrue(isIterator(x for x in ()))
        self.assertTrue(isIterator(iter([1])))
        self.assertTrue(isIterator(map(str, [1])))

    def test_notIterators(self) -> None:
        for obj in ([], (), "ab", b"ab", {}, set(), range(3), {}.keys(), 5, Deferred()):
            self.assertFalse(isIterator(obj), obj)


class DeferatorTest(unittest.TestCase):
    timeout = 10

    @inlineCallbacks
    def test_iterate(self):
        source = Source()
        dr = Deferator(source.gen(5))
        items = []
        for d in dr:
            items.append((yield d))
        self.assertEqual(items, [0, 1, 2, 3, 4])
        self.assertTrue((yield dr.d))
        self.assertFalse(dr.moreLeft)

    def test_pullsLazily(self) -> None:
        source = Source()
        dr = Deferator(source.gen(100))
        self.assertEqual(source.pulled, 1)  # just the lookahead
        next(dr)
        next(dr)
        self.assertEqual(source.pulled, 3)

    def test_emptyYieldsNothing(self) -> None:
        for empty in (iter([]), Source().gen(0), []):
            dr = Deferator(empty)
            self.assertFalse(dr.moreLeft)
            self.assertEqual(list(dr), [])
            self.assertIs(dr.d.result, True)

    def test_iterable(self) -> None:
        dr = Deferator([7, 8])
        self.assertEqual([d.result for d in dr], [7, 8])

    def test_notIterable(self) -> None:
        self.assertRaises(TypeError, Deferator, 5)
        self.assertRaises(TypeError, Deferator, Deferred())

    @inlineCallbacks
    def test_errorReachesTheItem(self):
        dr = Deferator(Source().gen(5, failAt=3))
        items = []
        with self.assertRaises(ValueError) as caught:
            for d in dr:
                items.append((yield d))
        self.assertEqual(str(caught.exception), "boom at 3")
        self.assertEqual(items, [0, 1, 2])
        self.assertRaises(StopIteration, next, dr)
        self.assertIs((yield dr.d), False)

    def test_errorOnFirstItem(self) -> None:
        dr = Deferator(Source().gen(5, failAt=0))
        self.assertTrue(dr.moreLeft)
        self.failureResultOf(next(dr), ValueError)
        self.assertRaises(StopIteration, next, dr)

    @inlineCallbacks
    def test_stopEarly(self):
        source = Source()
        dr = Deferator(source.gen(100))
        items = []
        for d in dr:
            items.append((yield d))
            if len(items) == 2:
                d.stop()
        self.assertEqual(items, [0, 1])
        self.assertIs((yield dr.d), False)
        self.assertTrue(source.closed)
        self.assertLessEqual(source.pulled, 3)
        self.assertRaises(StopIteration, next, dr)

    def test_notReady(self) -> None:
        pending: list[Deferred] = []

        def getNext() -> Deferred:
            pending.append(Deferred())
            return pending[-1]

        dr = Deferator("manual", getNext)
        d = next(dr)
        self.assertNoResult(d)
        self.assertRaises(NotReadyError, next, dr)
        pending[0].callback((1, True, False))
        self.assertEqual(self.successResultOf(d), 1)
        self.assertRaises(StopIteration, next, dr)
        self.assertIs(dr.d.result, True)

    def test_tripleFormWithoutPromisedItem(self) -> None:
        dr = Deferator("liar", lambda: (None, False, False))
        self.failureResultOf(next(dr), ImplementationError)
        self.assertRaises(StopIteration, next, dr)

    def test_stopWhileWaiting(self) -> None:
        dr = Deferator("manual", lambda: Deferred())
        d = next(dr)
        dr.stop()
        self.failureResultOf(d, defer.CancelledError)
        self.assertIs(dr.d.result, False)

    def test_forwardsToDoneDeferred(self) -> None:
        dr = Deferator(iter([1]))
        seen: list[bool] = []
        dr.addCallback(seen.append)
        list(dr)
        self.assertEqual(seen, [True])
        self.assertRaises(AttributeError, getattr, dr, "callback")

    def test_repr(self) -> None:
        self.assertIn("Deferator", repr(Deferator("thing", lambda: None)))
        self.assertIn("thing", repr(Deferator("thing", lambda: None)))

    def test_asyncFor(self) -> None:
        dr = Deferator(Source().gen(4))

        async def collect() -> list[int]:
            return [item async for item in dr]

        self.assertEqual(self.successResultOf(ensureDeferred(collect())), [0, 1, 2, 3])
        self.assertIs(dr.d.result, True)

    def test_asyncForEmpty(self) -> None:
        async def collect() -> list[int]:
            return [item async for item in Deferator(iter([]))]

        self.assertEqual(self.successResultOf(ensureDeferred(collect())), [])

    def test_asyncForError(self) -> None:
        items: list[int] = []

        async def collect() -> None:
            async for item in Deferator(Source().gen(5, failAt=2)):
                items.append(item)

        self.failureResultOf(ensureDeferred(collect()), ValueError)
        self.assertEqual(items, [0, 1])

    def test_asyncForWaitsForItems(self) -> None:
        pending: list[Deferred] = []

        def getNext() -> Deferred:
            pending.append(Deferred())
            return pending[-1]

        items: list[int] = []

        async def collect() -> str:
            async for item in Deferator("manual", getNext):
                items.append(item)
            return "done"

        result = ensureDeferred(collect())
        pending[0].callback((10, True, True))
        pending[1].callback((11, True, True))
        self.assertNoResult(result)
        pending[2].callback((None, False, False))  # end without a promised item
        self.assertEqual(self.successResultOf(result), "done")
        self.assertEqual(items, [10, 11])


class PrefetcheratorTest(unittest.TestCase):
    timeout = 10

    def test_iterator(self) -> None:
        pf = Prefetcherator("x")
        self.assertTrue(self.successResultOf(pf.setup(iter([1, 2]))))
        self.assertEqual(self.successResultOf(pf.getNext()), (1, True, True))
        self.assertEqual(self.successResultOf(pf.getNext()), (2, True, False))
        self.assertEqual(self.successResultOf(pf.getNext()), (None, False, False))
        self.assertEqual(self.successResultOf(pf.getNext()), (None, False, False))
        self.assertIn("x", repr(pf))

    def test_setupRejects(self) -> None:
        pf = Prefetcherator()
        self.assertFalse(self.successResultOf(pf.setup(5)))
        self.assertTrue(self.successResultOf(pf.setup(iter([1]))))
        self.assertFalse(self.successResultOf(pf.setup(iter([1]))))

    def test_callables(self) -> None:
        for deferred in (False, True):
            values = iter([5, 6])

            def nextValue(values=values, deferred=deferred) -> Any:
                value = next(values)
                return succeed(value) if deferred else value

            pf = Prefetcherator()
            self.successResultOf(pf.setup(nextValue))
            self.assertEqual(self.successResultOf(pf.getNext()), (5, True, True))
            self.assertEqual(self.successResultOf(pf.getNext()), (6, True, False))
            self.assertEqual(self.successResultOf(pf.getNext()), (None, False, False))

    def test_busyWhileStepping(self) -> None:
        step: list[Deferred] = []
        pf = Prefetcherator()
        d = pf.setup(lambda: step.append(Deferred()) or step[-1])
        self.assertTrue(pf.isBusy())
        step[0].callback(1)
        self.successResultOf(d)
        self.assertFalse(pf.isBusy())

    def test_error(self) -> None:
        pf = Prefetcherator()
        self.successResultOf(pf.setup(Source().gen(3, failAt=1)))
        self.assertEqual(self.successResultOf(pf.getNext()), (0, True, True))
        self.failureResultOf(pf.getNext(), ValueError)
        self.assertEqual(self.successResultOf(pf.getNext()), (None, False, False))

    @inlineCallbacks
    def test_withDeferator(self):
        pf = Prefetcherator()
        yield pf.setup(iter([1, 2, 3]))
        items = []
        for d in Deferator(pf):
            items.append((yield d))
        self.assertEqual(items, [1, 2, 3])


class ConsumeIntoTest(unittest.TestCase):
    timeout = 10

    def test_push(self) -> None:
        source = Source()
        dr = Deferator(source.gen(10))
        consumer = RecordingConsumer()
        self.assertIs(self.successResultOf(consumeInto(dr, consumer)), consumer)
        self.assertEqual(consumer.items, list(range(10)))
        self.assertIs(consumer.registeredStreaming, True)
        self.assertEqual((consumer.registrations, consumer.unregistrations), (1, 1))
        self.assertTrue(IPushProducer.providedBy(consumer.producer))
        self.assertIs(dr.d.result, True)

    def test_plainIterator(self) -> None:
        consumer = RecordingConsumer()
        self.successResultOf(consumeInto(iter("abc"), consumer))
        self.assertEqual(consumer.items, ["a", "b", "c"])

    def test_emptyFiresAtOnce(self) -> None:
        for result in ([], None, succeed([]), Deferator(iter([]))):
            consumer = RecordingConsumer()
            self.assertIs(self.successResultOf(consumeInto(result, consumer)), consumer)
            self.assertEqual(consumer.items, [])
            self.assertEqual((consumer.registrations, consumer.unregistrations), (1, 1))

    def test_emptyPullFiresAtOnce(self) -> None:
        consumer = PullConsumer()
        self.successResultOf(consumeInto([], consumer))
        self.assertEqual(consumer.unregistrations, 1)

    def test_deferredOfDeferator(self) -> None:
        consumer = RecordingConsumer()
        self.successResultOf(consumeInto(succeed(Deferator(iter([1, 2]))), consumer))
        self.assertEqual(consumer.items, [1, 2])

    def test_failingIterator(self) -> None:
        consumer = RecordingConsumer()
        dr = Deferator(Source().gen(5, failAt=2))
        failure = self.failureResultOf(consumeInto(dr, consumer), ValueError)
        self.assertEqual(str(failure.value), "boom at 2")
        self.assertEqual(consumer.items, [0, 1])
        self.assertEqual(consumer.unregistrations, 1)
        self.assertIs(dr.d.result, False)

    def test_writeRaises(self) -> None:
        source = Source()
        consumer = RecordingConsumer(failAt=2)
        self.failureResultOf(consumeInto(source.gen(10_000), consumer), RuntimeError)
        self.assertEqual(consumer.items, [0, 1])
        self.assertTrue(source.closed)
        self.assertEqual(consumer.unregistrations, 1)

    def test_notAConsumer(self) -> None:
        self.failureResultOf(consumeInto(iter([1]), object()), ImplementationError)

    def test_consumerStopsEarly(self) -> None:
        source = Source()
        consumer = RecordingConsumer(stopAfter=3)
        self.assertIs(self.successResultOf(consumeInto(source.gen(10_000), consumer)), consumer)
        self.assertEqual(consumer.items, [0, 1, 2])
        self.assertTrue(source.closed)
        self.assertEqual(consumer.unregistrations, 0)

    def test_deferatorStoppedWhileConsumed(self) -> None:
        source = Source()
        dr = Deferator(source.gen(10_000))
        consumer = RecordingConsumer(pauseAfter=2)
        d = consumeInto(dr, consumer)
        self.assertNoResult(d)
        dr.stop()
        self.assertIs(self.successResultOf(d), consumer)
        self.assertEqual(consumer.items, [0, 1])
        self.assertEqual(consumer.unregistrations, 1)
        self.assertTrue(source.closed)

    def test_pushPauseAndResume(self) -> None:
        source = Source()
        consumer = RecordingConsumer(pauseAfter=5)
        d = consumeInto(source.gen(1000), consumer)
        self.assertNoResult(d)
        self.assertEqual(consumer.items, list(range(5)))
        pulledWhilePaused = source.pulled
        self.assertLessEqual(pulledWhilePaused, 5 + SYNC_BATCH_ITEMS + 1)
        consumer.producer.resumeProducing()
        self.assertIs(self.successResultOf(d), consumer)
        self.assertEqual(consumer.items, list(range(1000)))

    def test_pausedHugeGeneratorStaysBounded(self) -> None:
        source = Source()
        consumer = RecordingConsumer(pauseAfter=1)
        d = consumeInto(source.gen(10_000_000), consumer)
        for _ in range(3):  # pausing twice more changes nothing
            consumer.producer.pauseProducing()
        self.assertLessEqual(source.pulled, SYNC_BATCH_ITEMS + 2)
        consumer.producer.stopProducing()
        self.successResultOf(d)
        self.assertTrue(source.closed)

    def test_pull(self) -> None:
        source = Source()
        consumer = PullConsumer()
        d = consumeInto(source.gen(3), consumer)
        self.assertIs(consumer.registeredStreaming, False)
        self.assertTrue(IPullProducer.providedBy(consumer.producer))
        self.assertEqual(consumer.items, [])
        consumer.producer.resumeProducing()
        self.assertEqual(consumer.items, [0])
        consumer.producer.resumeProducing()
        self.assertEqual(consumer.items, [0, 1])
        self.assertNoResult(d)
        consumer.producer.resumeProducing()
        # The last item is known to be the last: done without another request.
        self.assertIs(self.successResultOf(d), consumer)
        self.assertEqual(consumer.unregistrations, 1)

    def test_streamingArgumentOverridesHint(self) -> None:
        consumer = RecordingConsumer()
        d = consumeInto(iter([1, 2]), consumer, streaming=False)
        self.assertIs(consumer.registeredStreaming, False)
        self.assertNoResult(d)
        consumer.producer.resumeProducing()
        consumer.producer.resumeProducing()
        self.successResultOf(d)

    def test_yieldsToTheReactor(self) -> None:
        turns = ManualTurns()
        consumer = RecordingConsumer()
        n = 2 * TURN_ITEMS + 5
        producer = IterationProducer(Deferator(iter(range(n))), consumer, reactor=turns)
        d = producer.run()
        self.assertEqual(len(consumer.items), TURN_ITEMS)
        turns.runOne()
        self.assertEqual(len(consumer.items), 2 * TURN_ITEMS)
        turns.runOne()
        self.assertEqual(consumer.items, list(range(n)))
        self.successResultOf(d)
        self.assertEqual(turns.pending, [])


class IterationProducerTest(unittest.TestCase):
    timeout = 10

    def test_rejects(self) -> None:
        self.assertRaises(TypeError, IterationProducer, 5)
        producer = IterationProducer(iter([1]))
        self.failureResultOf(producer.run(), ImplementationError)
        self.assertRaises(ImplementationError, producer.registerConsumer, object())
        producer.registerConsumer(RecordingConsumer())
        self.assertRaises(RuntimeError, producer.registerConsumer, RecordingConsumer())

    def test_deferUntilDone(self) -> None:
        consumer = RecordingConsumer()
        producer = IterationProducer(Deferator(iter([1])), consumer)
        before = producer.deferUntilDone()
        self.assertNoResult(before)
        producer.run()
        self.assertIs(self.successResultOf(before), consumer)
        self.assertIs(self.successResultOf(producer.deferUntilDone()), consumer)


class IteratorToProducerTest(unittest.TestCase):
    timeout = 10

    def test_notIteratorOrEmpty(self) -> None:
        self.assertIsNone(self.successResultOf(iteratorToProducer([1, 2])))
        self.assertIsNone(self.successResultOf(iteratorToProducer(iter([]))))
        self.assertIsNone(self.successResultOf(iteratorToProducer(iter([]), wrapper=lambda f: f())))

    def test_withConsumer(self) -> None:
        consumer = RecordingConsumer()
        producer = self.successResultOf(iteratorToProducer(iter([1, 2]), consumer))
        self.assertIsInstance(producer, IterationProducer)
        self.assertEqual(consumer.items, [1, 2])
        self.assertEqual(consumer.unregistrations, 1)

    def test_withoutConsumer(self) -> None:
        producer = self.successResultOf(iteratorToProducer(iter([1])))
        consumer = RecordingConsumer()
        producer.registerConsumer(consumer)
        self.successResultOf(producer.run())
        self.assertEqual(consumer.items, [1])

    def test_wrapper(self) -> None:
        calls: list[Any] = []

        def wrapper(getNext: Any) -> Deferred:
            calls.append(getNext)
            return succeed(getNext())

        consumer = RecordingConsumer()
        self.successResultOf(iteratorToProducer(Source().gen(3), consumer, wrapper))
        self.assertEqual(consumer.items, [0, 1, 2])
        self.assertGreaterEqual(len(calls), 3)

    def test_wrapperError(self) -> None:
        consumer = RecordingConsumer()
        d = iteratorToProducer(Source().gen(3, failAt=1), consumer, lambda f: f())
        self.failureResultOf(d, ValueError)
        self.assertEqual(consumer.items, [0])

    def test_nonCallableWrapper(self) -> None:
        self.failureResultOf(iteratorToProducer(iter([1]), wrapper=5), TypeError)


class ListConsumerTest(unittest.TestCase):
    timeout = 10

    def test_collects(self) -> None:
        consumer = ListConsumer(label="x")
        self.assertEqual(consumer.label, "x")
        self.successResultOf(consumeInto(iter([1, 2, 3]), consumer))
        self.assertEqual(self.successResultOf(consumer()), [1, 2, 3])

    def test_onlyOneProducer(self) -> None:
        consumer = ListConsumer()
        consumer.registerProducer(object(), True)
        self.assertRaises(RuntimeError, consumer.registerProducer, object(), True)

    def _delayedConsumer(self, clock: task.Clock, **kw: Any) -> ListConsumer:
        rng = random.Random(4)
        test = self

        class Delayed(ListConsumer):
            pending = 0
            maxPending = 0

            def processItem(self, item: Any) -> Deferred:
                Delayed.pending += 1
                Delayed.maxPending = max(Delayed.maxPending, Delayed.pending)

                def done(_: Any) -> int:
                    Delayed.pending -= 1
                    return item * 10

                return task.deferLater(clock, rng.random(), lambda: None).addCallback(done)

        test.Delayed = Delayed
        return Delayed(**kw)

    def _runDelayed(self, **kw: Any) -> None:
        clock = task.Clock()
        consumer = self._delayedConsumer(clock, **kw)
        d = consumeInto(iter(range(20)), consumer)
        while clock.getDelayedCalls():
            clock.advance(1)
        self.assertIs(self.successResultOf(d), consumer)
        self.assertEqual(self.successResultOf(consumer()), [i * 10 for i in range(20)])
        # The producer was held back while an item was being processed.
        self.assertEqual(self.Delayed.maxPending, 1)

    def test_pushWithAsyncProcessing(self) -> None:
        self._runDelayed()

    def test_pullWithAsyncProcessing(self) -> None:
        self._runDelayed(streaming=False)

    @inlineCallbacks
    def test_pullManyItems(self):
        # Many more items than one reactor turn writes: no deep recursion
        # between the consumer's resumeProducing and the producer's write.
        consumer = ListConsumer(streaming=False)
        yield consumeInto(iter(range(20_000)), consumer)
        self.assertEqual((yield consumer()), list(range(20_000)))

    def test_processingError(self) -> None:
        class Failing(ListConsumer):
            def processItem(self, item: Any) -> Any:
                if item == 1:
                    raise KeyError(item)
                return item

        consumer = Failing()
        self.successResultOf(consumeInto(iter([0, 1, 2]), consumer))
        self.failureResultOf(consumer(), KeyError)


class DelayTest(unittest.TestCase):
    timeout = 10

    def test_deferToDelay(self) -> None:
        clock = task.Clock()
        d = deferToDelay(1.5, clock)
        clock.advance(1.4)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))

    def test_delayAndShutdown(self) -> None:
        clock = task.Clock()
        delay = Delay(interval=2, clock=clock)
        first, second = delay(), delay(10)
        clock.advance(2)
        self.successResultOf(first)
        self.assertNoResult(second)
        delay.shutdown()
        self.successResultOf(second)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.successResultOf(delay(100))

    def test_cancel(self) -> None:
        clock = task.Clock()
        d = Delay(clock=clock)(5)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_badBackoff(self) -> None:
        self.assertRaises(ValueError, Delay, backoff=2.0)

"""Names and behaviours kept for code written against the original AsynQueue 0.9.x."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IConsumer
from twisted.trial import unittest
from zope.interface import implementer

from asynqueue import base, misc, util
from asynqueue.errors import QueueRunError
from asynqueue.interfaces import IWorker
from asynqueue.iteration import Deferator, Delay, IterationProducer, Prefetcherator
from asynqueue.tasks import Task


def gen(n: int):
    yield from range(n)


class DeferatorCompat(unittest.TestCase):
    def test_isIteratorOnTheClass(self) -> None:
        self.assertTrue(Deferator.isIterator(gen(2)))
        self.assertTrue(Deferator.isIterator(iter([1])))
        for notOne in (None, "xyz", (1, 2), [3], {1: 2}, gen, Deferred()):
            self.assertFalse(Deferator.isIterator(notOne), repr(notOne))

    def test_reprSaysWhatItWraps(self) -> None:
        self.assertEqual(
            repr(Deferator("thing", lambda: (1, True, False))), "<Deferator wrapping thing>"
        )


class UntilEvent(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.checks = 0
        self.happened = False

    def checker(self) -> bool:
        self.checks += 1
        return self.happened

    def test_firesTrueWhenTheEventHappens(self) -> None:
        delay = Delay(interval=0.01, clock=self.clock)
        d = delay.untilEvent(self.checker)
        self.clock.advance(0.5)
        self.assertNoResult(d)
        self.happened = True
        self.clock.advance(1.0)
        self.assertIs(self.successResultOf(d), True)

    def test_checksGrowSparser(self) -> None:
        delay = Delay(interval=0.01, backoff=1.3, clock=self.clock)
        delay.untilEvent(self.checker)
        self.clock.pump([0.01] * 100)  # one simulated second
        # Every 10 ms would be 100 checks; backing off makes far fewer.
        self.assertLess(self.checks, 20)
        self.assertGreater(self.checks, 3)

    def test_timeoutGivesFalse(self) -> None:
        delay = Delay(interval=0.01, timeout=0.2, clock=self.clock)
        d = delay.untilEvent(self.checker)
        self.clock.pump([0.05] * 10)
        self.assertIs(self.successResultOf(d), False)

    def test_shutdownEndsTheWait(self) -> None:
        delay = Delay(interval=0.01, clock=self.clock)
        d = delay.untilEvent(self.checker)
        self.clock.advance(0.1)
        delay.shutdown()
        self.assertIs(self.successResultOf(d), False)

    def test_checkerErrorGivesNone(self) -> None:
        def broken() -> bool:
            raise ValueError("no")

        with self.assertLogs("asynqueue", "ERROR") as logged:
            d = Delay(clock=self.clock).untilEvent(broken)
        self.assertIsNone(self.successResultOf(d))
        self.assertIn("ValueError: no", logged.output[0])

    def test_argsGoToTheChecker(self) -> None:
        d = Delay(clock=self.clock).untilEvent(lambda a, b=0: a + b == 3, 1, b=2)
        self.assertIs(self.successResultOf(d), True)

    def test_notCallableRaisesAtTheCallSite(self) -> None:
        with self.assertRaises(TypeError):
            Delay(clock=self.clock).untilEvent(42)


class PrefetcheratorCompat(unittest.TestCase):
    @inlineCallbacks
    def test_lastFetchFollowsTheItemAhead(self) -> Any:
        pf = Prefetcherator()
        self.assertEqual(pf.lastFetch, (None, False))
        yield pf.setup(gen(2))
        self.assertEqual(pf.lastFetch, (0, True))
        yield pf.getNext()
        self.assertEqual(pf.lastFetch, (1, True))
        yield pf.getNext()
        self.assertEqual(pf.lastFetch, (None, False))


@implementer(IConsumer)
class CallingBackConsumer:
    """Registers back with its producer, as the original's consumers did."""

    def __init__(self) -> None:
        self.data: list[Any] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        producer.registerConsumer(self)

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: Any) -> None:
        self.data.append(data)


class ProducerCompat(unittest.TestCase):
    @inlineCallbacks
    def test_sameConsumerMayRegisterTwice(self) -> Any:
        consumer = CallingBackConsumer()
        ip = IterationProducer(Deferator(gen(5)))
        ip.registerConsumer(consumer)
        ip.registerConsumer(consumer)
        result = yield ip.run()
        self.assertIs(result, consumer)
        self.assertEqual(consumer.data, [0, 1, 2, 3, 4])

    def test_anotherConsumerIsRefused(self) -> None:
        ip = IterationProducer(Deferator(gen(5)), CallingBackConsumer())
        with self.assertRaises(RuntimeError):
            ip.registerConsumer(CallingBackConsumer())


class TaskOrder(unittest.TestCase):
    def test_byPriorityThenAge(self) -> None:
        first, second = Task(print, (), {}, 5), Task(print, (), {}, 5)
        urgent = Task(print, (), {}, -1)
        self.assertTrue(urgent < first < second)
        self.assertTrue(second > first)
        self.assertEqual(sorted([second, first, urgent]), [urgent, first, second])

    def test_anyTaskBeforeNone(self) -> None:
        t = Task(print, (), {}, 10_000)
        self.assertTrue(t < None)
        self.assertFalse(t > None)

    def test_equalPrioritiesAreStillDistinctTasks(self) -> None:
        a, b = Task(print, (), {}, 1), Task(print, (), {}, 1)
        self.assertNotEqual(a, b)
        self.assertEqual([a, b].index(b), 1)


@implementer(IWorker)
class OriginalStyleWorker:
    """Reports by firing ``task.d`` itself, as workers written for the original do."""

    cQualified: list[Any] = []

    def __init__(self) -> None:
        self.iQualified: list[Any] = []

    def setResignator(self, callableObject: Any) -> None:
        pass

    def run(self, task: Any) -> Deferred[None]:
        f, args, kw = task.callTuple
        ready: Deferred[None] = Deferred()
        task.d.addCallback(lambda result: ready.callback(None) or result)
        from twisted.internet import reactor

        reactor.callLater(0, task.d.callback, (b"r", f(*args, **kw)))
        return ready

    def stop(self) -> Deferred[None]:
        return defer.succeed(None)

    def crash(self) -> list[Any]:
        return []


class TaskDFiredByTheWorker(unittest.TestCase):
    @inlineCallbacks
    def test_queueGetsTheResult(self) -> Any:
        q = base.TaskQueue()
        try:
            yield q.attachWorker(OriginalStyleWorker())
            results = yield defer.gatherResults([q.call(pow, 2, k) for k in range(5)])
            self.assertEqual(results, [1, 2, 4, 8, 16])
        finally:
            yield q.shutdown()

    def test_reportViaCallbackStillFiresD(self) -> None:
        t = Task(print)
        d = t.d
        t.callback(("r", 7))
        self.assertEqual(self.successResultOf(d), ("r", 7))
        self.assertTrue(t.reported)


class PriorityHeap(unittest.TestCase):
    def test_getsSmallestFirst(self) -> None:
        heap = base.Priority()
        for item in (2, 1, 4, 0, 3):
            heap.put(item)
        self.assertEqual([self.successResultOf(heap.get()) for _ in range(5)], [0, 1, 2, 3, 4])

    def test_waitingGettersServedOldestFirst(self) -> None:
        heap = base.Priority()
        d1, d2 = heap.get(), heap.get()
        heap.put("a")
        self.assertEqual(self.successResultOf(d1), "a")
        self.assertNoResult(d2)
        heap.put("b")
        self.assertEqual(self.successResultOf(d2), "b")

    def test_cancelRemovesSelected(self) -> None:
        heap = base.Priority()
        for item in range(5):
            heap.put(item)
        heap.cancel(lambda x: x % 2 == 0)
        self.assertEqual([self.successResultOf(heap.get()) for _ in range(2)], [1, 3])
        self.assertNoResult(heap.get())

    def test_shutdownFailsWaitingGetters(self) -> None:
        heap = base.Priority()
        d = heap.get()
        heap.shutdown()
        self.failureResultOf(d, QueueRunError)

    def test_cancelledGetterIsForgotten(self) -> None:
        heap = base.Priority()
        d = heap.get()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        heap.put(1)
        self.assertEqual(self.successResultOf(heap.get()), 1)


class ToyObjects(unittest.TestCase):
    def test_testStuff(self) -> None:
        stuff = util.TestStuff().setStuff(3, 4)
        self.assertEqual(list(stuff.stufferator()), ["xxx"] * 4)
        self.assertEqual(stuff.add(1, 2), 3)
        self.assertEqual(util.TestStuff.divide(6, 3), 2)
        self.assertEqual([stuff.accumulate(y) for y in (1, 2, 3)], [1, 3, 6])

    def test_miscUniverseOffersTheToyMethods(self) -> None:
        universe = misc.TestUniverse()
        self.assertEqual(universe.method("add")(2, 3), 5)
        universe.method("setStuff")(2, 5)
        self.assertEqual(universe.method("getStuff")(), [b"abcde", b"abcde"])
        self.assertEqual(list(universe.method("stufferator")()), [b"abcde", b"abcde"])

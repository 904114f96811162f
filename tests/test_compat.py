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


class ErrorText(unittest.TestCase):
    @inlineCallbacks
    def test_namesTheExceptionAndTheCall(self) -> Any:
        from asynqueue.threads import ThreadQueue

        q = ThreadQueue(warn=True)
        try:
            with self.assertLogs("asynqueue", "ERROR"):
                text = yield q.call(divmod, 1, 0)
        finally:
            yield q.shutdown()
        self.assertIn("Exception 'integer division or modulo by zero' (ZeroDivisionError)", text)
        self.assertIn("doing call 'divmod(1, 0)'", text)
        self.assertIn("Traceback", text)

    @inlineCallbacks
    def test_aProcessWorkersErrorSaysTheSame(self) -> Any:
        # Raised in another process: the same first lines, then the child's
        # traceback; and for an exception that cannot travel as itself, its
        # own short type name and message.
        from asynqueue.process import ProcessQueue

        from .helpers import process as helpers

        q = ProcessQueue(1, warn=True)
        try:
            with self.assertLogs("asynqueue", "ERROR"):
                text = yield q.call(divmod, 1, 0)
                unrebuilt = yield q.call(helpers.raiseUnrebuildable)
        finally:
            yield q.shutdown()
        self.assertTrue(
            text.startswith(
                "Exception 'integer division or modulo by zero' (ZeroDivisionError)\n"
                " doing call 'divmod(1, 0)'\nTraceback"
            ),
            text,
        )
        self.assertTrue(
            unrebuilt.startswith("Exception '1 and 2' (Unrebuildable)\n doing call "), unrebuilt
        )
        self.assertIn("in raiseUnrebuildable", unrebuilt)  # (the child's traceback)


class ProcessWorkerCompat(unittest.TestCase):
    @inlineCallbacks
    def test_processIsAliveUntilStopped(self) -> Any:
        from asynqueue.process import ProcessWorker

        from .helpers import process as helpers

        worker = ProcessWorker()
        q = base.TaskQueue(worker)
        try:
            childPid = yield q.call(helpers.pid)
            self.assertEqual(worker.process.pid, childPid)
            self.assertTrue(worker.process.is_alive())
        finally:
            yield q.shutdown()
        self.assertFalse(worker.process.is_alive())
        self.assertIsNone(worker.process.pid)

    @inlineCallbacks
    def test_memUsageIsTheChildsVmSizeInKiB(self) -> Any:
        from asynqueue.process import ProcessWorker

        from .helpers import process as helpers

        def vmSize(pid: int) -> int:
            with open(f"/proc/{pid}/status") as f:
                line = next(x for x in f if x.startswith("VmSize:"))
            return int(line.split()[1])

        worker = ProcessWorker()
        q = base.TaskQueue(worker)
        try:
            childPid = yield q.call(helpers.pid)
            before = worker.memUsage()
            self.assertIsInstance(before, int)
            self.assertEqual(before, vmSize(childPid))
            yield q.call(helpers.hoard, 64)  # (kept in the child)
            grown = worker.memUsage() - before
            self.assertGreaterEqual(grown, 64 << 10)
            self.assertLess(grown, 2 * (64 << 10))
        finally:
            yield q.shutdown()
        self.assertIsNone(worker.memUsage())


class LooperCompat(unittest.TestCase):
    def setUp(self) -> None:
        from asynqueue.threads import ThreadLooper

        self.t = ThreadLooper()
        self.addCleanup(self.t.stop)

    @inlineCallbacks
    def test_callGivesTheOriginalStatusResult(self) -> Any:
        self.assertEqual((yield self.t.call(divmod, 7, 2)), (b"r", (3, 1)))
        status, text = yield self.t.call(divmod, 1, 0)
        self.assertEqual(status, b"e")
        self.assertIn("ZeroDivisionError", text)

    @inlineCallbacks
    def test_iteratorResultIsADeferatorPulledInTheThread(self) -> Any:
        import threading

        def names(n: int):
            for _ in range(n):
                yield threading.current_thread().name

        status, dr = yield self.t.call(names, 3)
        self.assertEqual(status, b"i")
        self.assertIsInstance(dr, Deferator)
        items = []
        for d in dr:
            items.append((yield d))
        self.assertEqual(len(items), 3)
        self.assertNotIn(threading.current_thread().name, items)
        status, empty = yield self.t.call(names, 0)
        self.assertEqual((status, empty), (b"i", []))

    @inlineCallbacks
    def test_rawGivesTheIterator(self) -> Any:
        status, it = yield self.t.call(gen, 3, raw=True)
        self.assertEqual(status, b"r")
        self.assertEqual(list(it), [0, 1, 2])

    @inlineCallbacks
    def test_oneAtATimeAndDoNextJumpsTheLine(self) -> Any:
        import threading

        gate = threading.Event()
        order: list[str] = []
        first = self.t.call(lambda: gate.wait(10) and order.append("first"))
        second = self.t.call(order.append, "second")
        urgent = self.t.call(order.append, "urgent", doNext=True)
        gate.set()
        yield defer.gatherResults([first, second, urgent])
        self.assertEqual(order, ["first", "urgent", "second"])

    @inlineCallbacks
    def test_deferToThread(self) -> Any:
        self.assertEqual((yield self.t.deferToThread(pow, 2, 10)), 1024)
        from asynqueue.errors import ThreadError

        error = yield self.assertFailure(self.t.deferToThread(divmod, 1, 0), ThreadError)
        self.assertIn("ZeroDivisionError", str(error))
        consumer = CallingBackConsumer()
        result = yield self.t.deferToThread(gen, 4, consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual(consumer.data, [0, 1, 2, 3])

    @inlineCallbacks
    def test_stopEndsTheThread(self) -> Any:
        d = self.t.call(pow, 3, 3)
        self.assertTrue(self.t.threadRunning)
        yield self.t.stop()
        self.assertEqual(self.successResultOf(d), (b"r", 27))
        self.assertFalse(self.t.threadRunning)


class ThreadWorkerCompat(unittest.TestCase):
    @inlineCallbacks
    def test_threadRunningUntilStopped(self) -> Any:
        from asynqueue.threads import ThreadWorker

        worker = ThreadWorker()
        self.assertIs(worker.t, worker)
        self.assertTrue(worker.t.threadRunning)
        yield worker.stop()
        self.assertFalse(worker.t.threadRunning)

    def test_crashedIsNotRunning(self) -> None:
        from asynqueue.threads import ThreadWorker

        worker = ThreadWorker()
        worker.crash()
        self.assertFalse(worker.threadRunning)


class ModuleDeferToThread(unittest.TestCase):
    @inlineCallbacks
    def test_iteratorComesAsDeferatorUnlessRaw(self) -> Any:
        from asynqueue.threads import deferToThread

        dr = yield deferToThread(gen, 3)
        self.assertIsInstance(dr, Deferator)
        items = []
        for d in dr:
            items.append((yield d))
        self.assertEqual(items, [0, 1, 2])
        it = yield deferToThread(gen, 2, raw=True)
        self.assertEqual(list(it), [0, 1])
        consumer = CallingBackConsumer()
        self.assertIs((yield deferToThread(gen, 2, consumer=consumer, doNext=True)), consumer)
        self.assertEqual(consumer.data, [0, 1])


class Bridges(unittest.TestCase):
    def tearDown(self) -> Any:
        from asynqueue.threads import PoolUser

        return PoolUser.shutdown()

    @inlineCallbacks
    def test_consumeratorWithPushProducer(self) -> Any:
        from twisted.internet.interfaces import IPushProducer

        from asynqueue.threads import Consumerator

        @implementer(IPushProducer)
        class Pusher:
            paused = 0

            def pauseProducing(self) -> None:
                self.paused += 1

            def resumeProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                pass

        c = Consumerator()
        producer = Pusher()
        c.registerProducer(producer, True)
        for k in range(3 * c.highWater):
            c.write(k)
        c.unregisterProducer()
        self.assertEqual(producer.paused, 1)  # over the high-water mark: paused once
        items = yield c.deferToThreadInPool(list, c)
        self.assertEqual(items, list(range(3 * c.highWater)))
        yield c.deferUntilDone()

    @inlineCallbacks
    def test_consumeratorAsksAPullProducerPerItem(self) -> Any:
        from twisted.internet.interfaces import IPullProducer

        from asynqueue.threads import Consumerator

        c = Consumerator()

        @implementer(IPullProducer)
        class Puller:
            k = 0

            def resumeProducing(self) -> None:
                if self.k < 5:
                    c.write(self.k)
                    self.k += 1
                else:
                    c.unregisterProducer()

            def stopProducing(self) -> None:
                pass

        c.registerProducer(Puller(), False)
        items = yield c.deferToThreadInPool(list, c)
        self.assertEqual(items, [0, 1, 2, 3, 4])

    @inlineCallbacks
    def test_fileratorWrittenFromAnotherThread(self) -> Any:
        from asynqueue.threads import Filerator

        f = Filerator()

        def writer() -> None:
            f.writelines(range(4))
            f.flush()
            f.close()

        items, _ = yield defer.gatherResults(
            [f.deferToThreadInPool(list, f), f.deferToThreadInPool(writer)]
        )
        self.assertEqual(items, [0, 1, 2, 3])
        self.assertTrue(f.closed)
        with self.assertRaises(ValueError):
            f.write(5)
        yield f.deferUntilDone()

    @inlineCallbacks
    def test_orderedItemProducerKeepsTheCallOrder(self) -> Any:
        from asynqueue.threads import OrderedItemProducer

        p = OrderedItemProducer()
        yield p.start(lambda i, factor: [factor * x for x in i], 10)
        later: list[Deferred[Any]] = [Deferred() for _ in range(4)]
        produced = [p.produceItem(lambda d=d: d) for d in later]
        for k in (3, 1, 0, 2):  # items arrive out of order
            later[k].callback(k)
        self.assertEqual([self.successResultOf(d) for d in produced], [0, 1, 2, 3])
        self.assertEqual((yield p.stop()), [0, 10, 20, 30])

    @inlineCallbacks
    def test_orderedItemProducerReportsAFailedItem(self) -> Any:
        from asynqueue.threads import OrderedItemProducer

        p = OrderedItemProducer()
        yield p.start(list)
        p.produceItem(lambda: 1)
        p.produceItem(lambda: 1 / 0)
        self.assertIsNone(self.successResultOf(p.produceItem(lambda: 2)))  # stopped
        yield self.assertFailure(p.stop(), ZeroDivisionError)


@implementer(IWorker)
class HandlerWorker:
    """Runs a task when told to; records what it ran."""

    cQualified: list[Any] = []

    def __init__(self, series: tuple[Any, ...] = ()) -> None:
        self.iQualified = list(series)
        self.ran: list[Any] = []
        self.current: Any = None
        self.stopD: Deferred[None] = Deferred()

    def setResignator(self, callableObject: Any) -> None:
        self.resign = callableObject

    def run(self, task: Any) -> Deferred[None]:
        self.current = task
        self.ran.append(task)
        ready: Deferred[None] = Deferred()

        def done(result: Any) -> Any:
            ready.callback(None)
            return result

        task.d.addCallback(done)
        return ready

    def finish(self) -> None:
        task, self.current = self.current, None
        f, args, kw = task.callTuple
        task.callback(("r", f(*args, **kw)))

    def stop(self) -> Deferred[None]:
        return self.stopD

    def crash(self) -> list[Any]:
        return [] if self.current is None else [self.current]


class Handler(unittest.TestCase):
    def setUp(self) -> None:
        from asynqueue.tasks import TaskHandler

        self.th = TaskHandler()

    def test_hireChecksTheWorker(self) -> None:
        from asynqueue.errors import ImplementationError, InvariantError

        with self.assertRaises(ImplementationError):
            self.th.hire(object())
        bogus = HandlerWorker()
        bogus.iQualified = "x"  # type: ignore[assignment]
        with self.assertRaises(InvariantError):
            self.th.hire(bogus)
        worker = HandlerWorker()
        ID = self.successResultOf(self.th.hire(worker))
        self.assertEqual(worker.ID, ID)
        self.assertIs(self.th.workers[ID], worker)

    def test_tasksGoByPriorityToQualifiedWorkers(self) -> None:
        plain, special = HandlerWorker(), HandlerWorker(series=("s",))
        low, high = Task(pow, (2, 2), {}, 5), Task(pow, (2, 3), {}, -5)
        only = Task(pow, (2, 4), {}, 0, "s")
        accepted = [self.th(t) for t in (low, only, high)]
        self.th.hire(plain)
        self.assertEqual(plain.ran, [high])  # the most urgent it may run
        self.th.hire(special)
        self.assertEqual(special.ran, [only])
        plain.finish()
        self.assertEqual(plain.ran, [high, low])
        for d in accepted:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.successResultOf(high.d), ("r", 8))

    def test_terminateStopsOrCrashes(self) -> None:
        a, b = HandlerWorker(), HandlerWorker()
        IDa = self.successResultOf(self.th.hire(a))
        IDb = self.successResultOf(self.th.hire(b))
        task = Task(pow, (3, 2))
        self.th(task)
        busy, idle = (a, IDa) if a.current else (b, IDb), (b, IDb) if a.current else (a, IDa)
        self.assertEqual(self.successResultOf(self.th.terminate(busy[1], crash=True)), [task])
        d = self.th.terminate(idle[1])
        self.assertNoResult(d)
        idle[0].stopD.callback(None)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.th.workers, {})

    @inlineCallbacks
    def test_terminateTimeoutCrashesAStuckWorker(self) -> Any:
        worker = HandlerWorker()
        ID = yield self.th.hire(worker)
        task = Task(pow, (3, 3))
        self.th(task)
        unfinished = yield self.th.terminate(ID, timeout=0.01)
        self.assertEqual(unfinished, [task])

    def test_reassignOnResignation(self) -> None:
        a, b = HandlerWorker(), HandlerWorker()
        self.th.hire(a)
        task = Task(pow, (2, 5))
        self.th(task)
        self.th.hire(b)
        a.resign()
        self.assertEqual(b.ran, [task])
        b.finish()
        self.assertEqual(self.successResultOf(task.d), ("r", 32))

    def test_shutdownFailsWaitingTasks(self) -> None:
        d = self.th(Task(pow, (2, 2)))
        result = self.th.shutdown()
        self.failureResultOf(d, QueueRunError)
        self.assertEqual(self.successResultOf(result), [])
        with self.assertRaises(QueueRunError):
            self.th(Task(pow, (2, 2)))


class Chunks(unittest.TestCase):
    def test_chunkyStringSlicesAndLetsGo(self) -> None:
        from asynqueue.wire import ChunkyString

        cs = ChunkyString(b"0123456789" * 3)
        cs.chunkSize = 7
        chunks = list(cs)
        self.assertEqual([len(c) for c in chunks], [7, 7, 7, 7, 2])
        self.assertEqual(b"".join(chunks), b"0123456789" * 3)
        self.assertIsNone(cs.bigString)
        self.assertEqual(list(ChunkyString("")), [])


class OriginalWireForm(unittest.TestCase):
    """ServerManager, WireWorker(universe, description) and calls by method name."""

    def setUp(self) -> None:
        from asynqueue.wire import ServerManager

        self.manager = ServerManager("asynqueue.misc.TestUniverse")
        self.queue = base.TaskQueue()
        self.addCleanup(self.manager.done)
        self.addCleanup(self.queue.shutdown)

    @inlineCallbacks
    def attachServer(self) -> Any:
        from asynqueue.wire import WireWorker

        description = self.manager.newSocket()
        self.assertTrue(description.startswith("unix:"))
        pid = yield self.manager.spawn(description)
        worker = WireWorker(misc.TestUniverse(), description)
        self.assertEqual(worker.description, description)
        yield self.queue.attachWorker(worker)
        return pid

    @inlineCallbacks
    def test_callByName(self) -> Any:
        yield self.attachServer()
        self.assertEqual((yield self.queue.call("add", 1, 2)), 3)
        yield self.queue.call("setStuff", 3, 4)
        dr = yield self.queue.call("stufferator")
        chunks = []
        for d in dr:
            chunks.append((yield d))
        self.assertEqual(chunks, [b"abcd"] * 3)

    @inlineCallbacks
    def test_callGoesToANewServerAfterTheFirstDies(self) -> Any:
        pid = yield self.attachServer()
        yield util.killProcess(pid)
        d = self.queue.call("add", 2, 3)
        yield self.attachServer()
        self.assertEqual((yield d), 5)

    @inlineCallbacks
    def test_doneStopsTheServers(self) -> Any:
        from asynqueue._support._util import _exited

        pid = yield self.manager.spawn(self.manager.newSocket())
        yield self.manager.done()
        self.assertTrue(_exited(pid))


class NameWithoutAWireWorker(unittest.TestCase):
    @inlineCallbacks
    def test_aNameRunsOnlyOnAWireWorker(self) -> Any:
        from asynqueue.errors import ImplementationError
        from asynqueue.null import NullQueue

        q = NullQueue(returnFailure=True)
        try:
            error = yield self.assertFailure(q.call("add", 1, 2), ImplementationError)
        finally:
            yield q.shutdown()
        self.assertIn("runs only on a WireWorker", str(error))


class Runner(unittest.TestCase):
    def setUp(self) -> None:
        from asynqueue.wire import WireRunner

        self.wr = WireRunner()
        self.addCleanup(self.wr.shutdown)

    @inlineCallbacks
    def test_responses(self) -> Any:
        from asynqueue.util import p2o

        response = yield self.wr.call(divmod, 7, 2)
        self.assertEqual(response, {"status": b"r", "result": util.o2p((3, 1))})
        self.assertEqual((yield self.wr.call(print, end="")), {"status": b"n", "result": b""})
        response = yield self.wr.call(divmod, 1, 0)
        self.assertEqual(response["status"], b"e")
        self.assertIn("ZeroDivisionError", response["result"])
        big = yield self.wr.call(bytes, 100_000)
        self.assertEqual(big["status"], b"c")
        chunks = []
        while True:
            item = yield self.wr.getNext(big["result"])
            if not item["isValid"]:
                break
            self.assertTrue(item["isRaw"])
            chunks.append(item["value"])
        self.assertGreater(len(chunks), 1)
        self.assertEqual(p2o(b"".join(chunks)), bytes(100_000))

    @inlineCallbacks
    def test_iteratorById(self) -> Any:
        from asynqueue.util import p2o

        response = yield self.wr.call(lambda: iter([b"raw", 2]))
        self.assertEqual(response["status"], b"i")
        ID = response["result"]
        first = yield self.wr.getNext(ID)
        second = yield self.wr.getNext(ID)
        end = yield self.wr.getNext(ID)
        self.assertEqual(first, {"value": b"raw", "isValid": True, "isRaw": True})
        self.assertEqual((p2o(second["value"]), second["isRaw"]), (2, False))
        self.assertEqual(end, {"value": b"", "isValid": False, "isRaw": False})
        self.assertNotIn(ID, self.wr.iterators)
        raw = yield self.wr.call(lambda: iter([1]), raw=True)
        self.assertEqual(raw["status"], b"r")  # kept whole: a list_iterator pickles

    @inlineCallbacks
    def test_inAThreadAndShutdownWaits(self) -> Any:
        import threading

        response = yield self.wr.call(lambda: threading.current_thread().name, thread=True)
        self.assertNotEqual(util.p2o(response["result"]), threading.current_thread().name)
        results: list[Any] = []
        self.wr.call(deferLater, 0.05).addCallback(results.append)
        yield self.wr.shutdown()
        self.assertEqual(len(results), 1)


def deferLater(seconds: float) -> Deferred[None]:
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


class Assignments(unittest.TestCase):
    def setUp(self) -> None:
        from asynqueue.tasks import AssignmentFactory

        self.af = AssignmentFactory()

    def test_requestThenNew(self) -> None:
        worker = HandlerWorker()
        worker.hired = False
        self.af.request(worker, None)
        self.assertEqual([len(v) for v in worker.assignments.values()], [1])
        task = Task(pow, (2, 3))
        self.assertIsNone(self.successResultOf(self.af.new(task)))
        self.assertEqual(worker.ran, [task])
        self.assertEqual(worker.assignments, {None: []})

    def test_newThenRequestAndAHiredWorkerAsksAgain(self) -> None:
        first, second = Task(pow, (2, 1), {}, 0, "s"), Task(pow, (2, 2), {}, 0, "s")
        d1, d2 = self.af.new(first), self.af.new(second)
        worker = HandlerWorker()
        worker.hired = True
        self.af.request(worker, "s")
        self.assertEqual(worker.ran, [first])
        self.assertNoResult(d2)
        worker.finish()  # ready again: it asks for the next one
        self.assertEqual(worker.ran, [first, second])
        self.successResultOf(d1)
        self.successResultOf(d2)

    def test_cancelledRequestsTakeNothing(self) -> None:
        worker = HandlerWorker()
        self.af.request(worker, None)
        self.af.cancelRequests(worker)
        d = self.af.new(Task(pow, (2, 2)))
        self.assertNoResult(d)
        self.assertEqual(worker.ran, [])


class LoopSubclass(unittest.TestCase):
    """A subclass written for the original: its loop follows the lock protocol."""

    def tearDown(self) -> Any:
        from asynqueue.threads import PoolUser

        return PoolUser.shutdown()

    @inlineCallbacks
    def test_loopFeedsTheIterator(self) -> Any:
        from asynqueue.threads import IterationGetter

        class Counter(IterationGetter):
            def loop(self) -> None:
                for value in [*range(3), self.IterationStopper()]:
                    self.nLock.acquire()
                    self.bIterationValue = value
                    self.bLock.release()

        counter = Counter()
        counter.start()
        items = yield counter.deferToThreadInPool(list, counter)
        self.assertEqual(items, [0, 1, 2])
        yield counter.deferUntilDone()

    def test_loopMustBeOverridden(self) -> None:
        from asynqueue.threads import IterationGetter

        with self.assertRaises(NotImplementedError):
            IterationGetter().loop()

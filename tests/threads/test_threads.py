"""ThreadWorker and ThreadQueue with real threads."""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from asynqueue import TaskQueue, ThreadQueue, ThreadWorker, deferToThread, errors
from asynqueue.tasks import Task

from ..helpers import common as helpers


def threadName(*_: Any) -> str:
    return threading.current_thread().name


def boom() -> None:
    raise KeyError("thread boom")


class Payload:
    """A result that can be weakly referred to."""


class ThreadQueueTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.q = ThreadQueue(2, returnFailure=True)
        self.addCleanup(self.q.shutdown)

    @inlineCallbacks
    def test_runs_off_the_reactor_thread(self) -> Any:
        name = yield self.q.call(threadName)
        self.assertIn("ThreadWorker", name)
        self.assertNotEqual(name, threading.current_thread().name)
        self.assertEqual(len(self.q), 2)

    @inlineCallbacks
    def test_a_call_from_another_thread_is_refused_at_once(self) -> Any:
        # It would race the reactor's own changes to the queue; the error
        # says what to do instead, and that way works.
        from twisted.internet import reactor, threads

        yield self.q.call(threadName)  # (the reactor runs: its thread is known)
        raised: list[BaseException] = []

        def callHere() -> None:
            try:
                self.q.call(threadName)
            except BaseException as e:
                raised.append(e)

        other = threading.Thread(target=callHere, name="not-the-reactor")
        other.start()
        other.join(10)
        self.assertEqual(len(raised), 1, "the call was not refused")
        self.assertIsInstance(raised[0], errors.WrongThreadError)
        self.assertIsInstance(raised[0], RuntimeError)
        self.assertIn("'not-the-reactor'", str(raised[0]))
        self.assertIn("callFromThread", str(raised[0]))
        name = yield threads.deferToThread(
            threads.blockingCallFromThread, reactor, self.q.call, threadName
        )
        self.assertIn("ThreadWorker", name)

    @inlineCallbacks
    def test_every_other_use_from_another_thread_is_refused_and_changes_nothing(self) -> Any:
        # map, update, shutdown and the changes of workers race the reactor
        # as a call would: each is refused where it is made, and the queue
        # is as it was.
        yield self.q.call(threadName)  # (the reactor runs: its thread is known)
        worker = self.q.workers()[0]
        spare = ThreadWorker()
        self.addCleanup(spare.stop)
        uses = {
            "map": lambda: self.q.map(abs, [-1, -2]),
            "update": lambda: self.q.update(abs, -1),
            "shut down": self.q.shutdown,
            "attach": lambda: self.q.attachWorker(spare),
            "detach": lambda: self.q.detachWorker(worker),
            "qualify": lambda: self.q.qualifyWorker(worker, "lane"),
        }
        raised: dict[str, BaseException | None] = {}

        def useHere() -> None:
            for name, use in uses.items():
                try:
                    use()
                except BaseException as e:
                    raised[name] = e
                else:
                    raised[name] = None

        other = threading.Thread(target=useHere, name="not-the-reactor")
        other.start()
        other.join(10)
        self.assertEqual(set(raised), set(uses))
        for name, error in raised.items():
            self.assertIsInstance(error, errors.WrongThreadError, name)
            self.assertTrue(str(error).startswith(f"Cannot {name}"), str(error))
            self.assertIn("'not-the-reactor'", str(error))
        # Nothing changed: still running, the same two workers, no update
        # remembered, no qualification, and calls and maps still work.
        self.assertTrue(self.q.isRunning())
        self.assertEqual(len(self.q.workers()), 2)
        self.assertNotIn(spare, self.q.workers())
        self.assertNotIn("lane", worker.iQualified)
        self.assertEqual(self.q._updates, [])
        self.assertEqual((yield self.q.call(abs, -3)), 3)
        self.assertEqual((yield helpers.collect(self.q.map(abs, [-4, -5]))), [4, 5])

    @inlineCallbacks
    def test_an_idle_worker_keeps_no_result_alive(self) -> Any:
        # A big result held by an idle worker would hold its memory, and be
        # freed inside that worker's next call, delaying it.
        result = yield self.q.call(Payload)
        ref = weakref.ref(result)
        del result
        yield helpers.waitUntil(lambda: ref() is None, limit=5.0)

    @inlineCallbacks
    def test_many_calls_all_arrive_in_order(self) -> Any:
        results = yield defer.gatherResults([self.q.call(abs, -i) for i in range(5000)])
        self.assertEqual(results, list(range(5000)))

    @inlineCallbacks
    def test_both_workers_share_the_load(self) -> Any:
        names = yield defer.gatherResults(
            [self.q.call(lambda: (time.sleep(0.01), threadName())[1]) for _ in range(20)]
        )
        self.assertEqual(len(set(names)), 2)

    @inlineCallbacks
    def test_exception_keeps_type_and_worker_goes_on(self) -> Any:
        with self.assertRaises(KeyError) as ctx:
            yield self.q.call(boom)
        self.assertIn("thread boom", str(ctx.exception))
        self.assertEqual((yield self.q.call(abs, -1)), 1)

    @inlineCallbacks
    def test_series_dispatch_order_across_workers(self) -> Any:
        starts: list[int] = []
        lock = threading.Lock()

        def work(i: int) -> int:
            with lock:
                starts.append(i)
            time.sleep(0.002)
            return i

        results = yield defer.gatherResults([self.q.call(work, i, series="s") for i in range(40)])
        self.assertEqual(results, list(range(40)))
        # Dispatch is in order; with two threads two neighbours may swap at start.
        for pos, i in enumerate(starts):
            self.assertLessEqual(abs(pos - i), 1)

    @inlineCallbacks
    def test_unqualified_series_runs(self) -> Any:
        # The original never ran this.
        self.assertEqual((yield self.q.call(abs, -3, series="x")), 3)

    @inlineCallbacks
    def test_defer_to_thread_skips_the_queue(self) -> Any:
        name = yield self.q.deferToThread(threadName)
        self.assertIn("ThreadWorker", name)


class ThreadWindowTests(TestCase):
    timeout = 15

    @inlineCallbacks
    def test_the_window_follows_the_time_tasks_take(self) -> Any:
        # About WINDOW_WORK seconds of tasks in flight, by the recent
        # average: the most for tiny ones, few for slow ones.
        from asynqueue._core._window import windowFor
        from asynqueue._threads._worker import THREAD_MAX_WINDOW

        q = ThreadQueue(1)
        self.addCleanup(q.shutdown)
        worker = q.worker
        for _ in range(20):
            yield q.call(int, 1)
        tiny = worker._adaptive
        self.assertEqual(tiny, windowFor(worker._avgRun, THREAD_MAX_WINDOW))
        for _ in range(20):
            yield q.call(time.sleep, 0.003)
        slow = worker._adaptive
        self.assertEqual(slow, windowFor(worker._avgRun, THREAD_MAX_WINDOW))
        self.assertGreater(worker._avgRun, 0.002)
        self.assertEqual(slow, 1)
        self.assertGreater(tiny, 4)


class LateBellsTests(TestCase):
    def test_one_record_of_late_doorbells_per_reactor(self) -> None:
        # The workers of one reactor share it: a task given to one while
        # another's flush delivers waits for that flush's end to ring.
        from twisted.internet.task import Clock

        from asynqueue._threads._worker import _lateBellsOf

        first, second = Clock(), Clock()
        self.assertIs(_lateBellsOf(first), _lateBellsOf(first))
        self.assertIsNot(_lateBellsOf(first), _lateBellsOf(second))

        class Unreferenced:
            __slots__ = ()

        odd = Unreferenced()  # (no weak reference: a record of its own each time)
        self.assertIsNot(_lateBellsOf(odd), _lateBellsOf(odd))


class ThreadTimeoutTests(TestCase):
    timeout = 15

    @inlineCallbacks
    def test_stuck_thread_is_replaced_and_late_result_dropped(self) -> Any:
        q = ThreadQueue(returnFailure=True)
        release = threading.Event()
        self.addCleanup(release.set)
        calls = []

        def stuck() -> str:
            calls.append(threading.get_ident())
            release.wait(10)
            return "late"

        with self.assertRaises(errors.TimeoutError):
            yield q.call(stuck, timeout=0.2)
        self.assertEqual(len(calls), 2)
        # Two abandoned threads are still blocked; a fresh one serves the queue.
        fresh = yield q.call(threading.get_ident)
        self.assertEqual(len({*calls, fresh}), 3)
        release.set()
        yield q.shutdown()

    @inlineCallbacks
    def test_retry_after_timeout_can_succeed(self) -> Any:
        q = ThreadQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        tries = []

        def slowOnce() -> int:
            tries.append(1)
            if len(tries) == 1:
                time.sleep(0.5)
            return len(tries)

        self.assertEqual((yield q.call(slowOnce, timeout=0.2)), 2)


class ThreadShutdownTests(TestCase):
    timeout = 15

    @inlineCallbacks
    def test_shutdown_finishes_queued_tasks_and_ends_threads(self) -> Any:
        before = {t.name for t in threading.enumerate()}
        q = ThreadQueue(2, returnFailure=True)
        ds = [q.call(time.sleep, 0.02) for _ in range(10)]
        yield q.shutdown()
        for d in ds:
            self.assertIsNone(self.successResultOf(d))
        for _ in range(100):
            extra = {t.name for t in threading.enumerate()} - before
            if not [n for n in extra if "ThreadWorker" in n]:
                break
            yield _sleep(0.02)
        self.assertFalse([n for n in extra if "ThreadWorker" in n])

    @inlineCallbacks
    def test_shutdown_with_a_timeout_fails_what_is_not_done_and_ends(self) -> Any:
        release = threading.Event()
        self.addCleanup(release.set)
        q = ThreadQueue(2)
        stuck = q.call(release.wait, 30)
        yield _sleep(0.05)
        quick = [q.call(time.sleep, 0) for _ in range(3)]  # (on the other worker)
        stuckToo = q.call(release.wait, 30)
        queued = q.call(time.sleep, 0)  # (behind the two stuck ones)
        yield q.shutdown(timeout=0.3)
        for d in quick:
            self.assertIsNone(self.successResultOf(d))
        for d in (stuck, stuckToo, queued):
            failure = self.failureResultOf(d, errors.QueueRunError)
            self.assertIn("shutdown's timeout (0.3 s)", str(failure.value))
        self.assertEqual(q.workers(), [])

    @inlineCallbacks
    def test_crash_detach_of_a_stuck_worker_reassigns(self) -> Any:
        release = threading.Event()
        self.addCleanup(release.set)
        w1, w2 = ThreadWorker(), ThreadWorker()
        from asynqueue import TaskQueue

        q = TaskQueue(w1, returnFailure=True)
        d = q.call(release.wait, 10)
        yield _sleep(0.05)
        q.attachWorker(w2)
        left = yield q.detachWorker(w1, reassign=True, crash=True)
        self.assertEqual(left, [])
        release.set()
        self.assertTrue((yield d))  # re-run on w2
        yield q.shutdown()

    @inlineCallbacks
    def test_module_defer_to_thread(self) -> Any:
        self.assertEqual((yield deferToThread(lambda a, b: a * b, 6, 7)), 42)
        with self.assertRaises(ZeroDivisionError):
            yield deferToThread(lambda: 1 / 0)
        results = yield defer.gatherResults([deferToThread(abs, -i) for i in range(50)])
        self.assertEqual(results, list(range(50)))
        yield deferToThread()


def _sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor

    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class ThreadNothingLostTests(TestCase):
    """Real threads: random calls, timeouts, detaches and crashes, then shutdown."""

    timeout = 30

    @inlineCallbacks
    def test_every_deferred_fires_exactly_once(self) -> Any:
        import random

        from asynqueue import TaskQueue

        rng = random.Random(1234)
        q = TaskQueue(returnFailure=True, timeout=0.5)
        workers = [ThreadWorker() for _ in range(2)]
        for w in workers:
            q.attachWorker(w)
        fired: dict[int, int] = {}
        ds = []

        def record(result: Any, i: int) -> None:
            fired[i] = fired.get(i, 0) + 1

        def work(seconds: float, fail: bool) -> float:
            time.sleep(seconds)
            if fail:
                raise ValueError("planned")
            return seconds

        for _ in range(300):
            op = rng.random()
            if op < 0.8:
                i = len(ds)
                d = q.call(
                    work,
                    rng.choice([0, 0, 0.001, 0.01, 0.3]),
                    rng.random() < 0.1,
                    timeout=rng.choice([None, 0.05, 1]),
                    series=rng.choice([None, "a"]),
                )
                d.addBoth(record, i)
                d.addErrback(lambda f: None)
                ds.append(d)
            elif op < 0.88:
                w = ThreadWorker(series=rng.choice([(), ("a",)]))
                workers.append(w)
                q.attachWorker(w)
            elif op < 0.96 and len(workers) > 1:
                w = workers.pop(rng.randrange(len(workers)))
                q.detachWorker(w, reassign=rng.random() < 0.5, crash=rng.random() < 0.5)
            else:
                yield _sleep(0.01)
        yield q.shutdown()
        yield _sleep(0.05)
        self.assertEqual(sorted(fired), list(range(len(ds))))
        self.assertEqual(set(fired.values()), {1})


class ThreadSchedulingTests(TestCase):
    """Niceness with real threads while the other worker is stuck in a long task."""

    timeout = 15

    @inlineCallbacks
    def test_half_rate_while_one_worker_is_busy(self) -> Any:
        q = ThreadQueue(2, returnFailure=True)
        self.addCleanup(q.shutdown)
        # Tiny tasks first, so both workers pipeline deeply.
        yield defer.gatherResults([q.call(abs, -i) for i in range(500)])
        started = threading.Event()
        release = threading.Event()
        self.addCleanup(release.set)

        def long() -> None:
            started.set()
            release.wait(10)

        busy = q.call(long)
        yield deferToThreadWait(started)
        yield _sleep(0.02)  # well past the pipelining patience
        order: list[str] = []
        ds = []
        for i in range(40):
            ds.append(q.call(order.append, "A", series="A", niceness=0))
            if i % 2 == 0:
                ds.append(q.call(order.append, "B", series="B", niceness=10))
        yield defer.gatherResults(ds)
        release.set()
        yield busy
        window = order[:30]
        self.assertEqual(window.count("A"), 20, order)
        self.assertEqual(window.count("B"), 10, order)


class ThreadHandBackTests(TestCase):
    """Tasks lined up behind a long one in a worker move to a free worker."""

    timeout = 20

    @inlineCallbacks
    def test_tasks_behind_a_long_task_run_on_the_other_worker(self) -> Any:
        # Two workers with deep windows: a burst lines tasks up behind the
        # long one too. Those must not wait for it while the other worker is
        # free: each records which thread ran it, and all finish first.
        long_, other = ThreadWorker(window=16), ThreadWorker(window=16)
        q = TaskQueue(long_, other, returnFailure=True)
        self.addCleanup(q.shutdown)
        release = threading.Event()
        self.addCleanup(release.set)
        busy = q.call(release.wait, 15)
        quick = [q.call(threadName) for _ in range(30)]
        names = yield defer.gatherResults(quick)
        self.assertFalse(busy.called)  # (they did not wait for it)
        self.assertFalse(long_.threadRunning and long_._inbox)
        self.assertEqual(len(set(names)), 1, names)  # all on the free worker
        release.set()
        self.assertIs((yield busy), True)

    @inlineCallbacks
    def test_hand_back_keeps_the_running_task_and_the_thread_calls(self) -> Any:
        w = ThreadWorker(window=8)
        self.addCleanup(w.stop)
        release = threading.Event()
        self.addCleanup(release.set)
        first = Task(release.wait, (15,))
        self.assertIsNone(w.run(first))
        waiting = [Task(abs, (-i,)) for i in range(3)]
        for task in waiting:
            w.run(task)
        yield helpers.waitUntil(lambda: first.startedAt is not None)
        viaThread = w.deferToThread(abs, -7)  # (ahead of tasks: it waits only for the first)
        w.handBack()
        for task in waiting:
            self.assertEqual(task.d.result, ("d", "handed back from behind a long task"))
            self.assertTrue(task.innocent)
        self.assertFalse(viaThread.called)
        release.set()
        self.assertEqual((yield first.d), ("r", True))
        self.assertEqual((yield viaThread), 7)


def deferToThreadWait(event: threading.Event) -> defer.Deferred[Any]:
    from twisted.internet import threads

    return threads.deferToThread(event.wait, 10)


class ThreadWakePipeTests(TestCase):
    """A thread worker wakes the reactor through a pipe of its own, closed when it ends."""

    timeout = 15

    def pipeOf(self, w: ThreadWorker) -> Any:
        from twisted.internet import reactor

        pipe = w._pipe
        self.assertIsNotNone(pipe)
        self.assertIn(pipe, reactor.getReaders())
        return pipe

    def assertClosed(self, pipe: Any) -> None:
        from twisted.internet import reactor

        self.assertTrue(pipe.closed)
        self.assertNotIn(pipe, reactor.getReaders())
        for fd in (pipe._r, pipe._w):
            self.assertRaises(OSError, os.fstat, fd)

    @inlineCallbacks
    def test_stop_closes_the_pipe(self) -> Any:
        w = ThreadWorker()
        pipe = self.pipeOf(w)
        self.assertEqual((yield w.deferToThread(abs, -3)), 3)
        yield w.stop()
        self.assertClosed(pipe)

    @inlineCallbacks
    def test_crash_closes_the_pipe_and_still_delivers_finished_thread_calls(self) -> Any:
        w = ThreadWorker()
        pipe = self.pipeOf(w)
        release = threading.Event()
        self.addCleanup(release.set)
        done = w.deferToThread(abs, -5)
        # (This reactor turn waits for it: its result sits in the outbox,
        # its wake-up byte in the pipe, when the crash comes.)
        helpers.waitUntilSync(lambda: bool(w._outbox), limit=5)
        self.assertFalse(done.called)
        blocked = w.deferToThread(release.wait, 10)
        self.assertEqual(w.crash(), [])
        self.assertClosed(pipe)
        self.assertEqual((yield done), 5)  # finished before the crash: delivered
        yield self.assertFailure(blocked, errors.ThreadError)

    @inlineCallbacks
    def test_a_reactor_without_descriptors_gets_thread_calls(self) -> Any:
        from twisted.internet import reactor

        class CallsOnly:
            """Only what a thread worker needs of a reactor besides descriptors."""

            def callFromThread(self, f: Any, *args: Any) -> None:
                reactor.callFromThread(f, *args)

            def callLater(self, *args: Any) -> Any:
                return reactor.callLater(*args)

            def seconds(self) -> float:
                return reactor.seconds()

        q = TaskQueue(ThreadWorker(reactor=CallsOnly()), returnFailure=True)
        self.addCleanup(q.shutdown)
        (w,) = q.workers()
        self.assertIsNone(w._pipe)
        results = yield defer.gatherResults([q.call(abs, -i) for i in range(300)])
        self.assertEqual(results, list(range(300)))


class ThreadWakeUpTests(TestCase):
    """
    The thread sleeps only when it has nothing to do, and the reactor rings
    its doorbell only when it says it is idle: no task may be left waiting
    with the thread asleep, whatever the timing.
    """

    timeout = 60

    @inlineCallbacks
    def test_sequential_calls_with_random_pauses_all_complete(self) -> Any:
        import random

        rng = random.Random(42)
        q = ThreadQueue(2, returnFailure=True)
        self.addCleanup(q.shutdown)
        for i in range(400):
            work = rng.choice([0, 0, 0, 0.0001, 0.0005])
            result = yield q.call(lambda w=work, i=i: (time.sleep(w), i)[1])
            self.assertEqual(result, i)
            pause = rng.choice([0, 0, 0, 0.0002, 0.001, 0.003])
            if pause:
                # Long enough for the thread to go back to sleep (or not).
                yield _sleep(pause)

    @inlineCallbacks
    def test_bursts_after_idle_spells(self) -> Any:
        q = ThreadQueue(2, returnFailure=True)
        self.addCleanup(q.shutdown)
        for size in (1, 2, 3, 50, 700, 5, 2000, 1):
            results = yield defer.gatherResults([q.call(abs, -i) for i in range(size)])
            self.assertEqual(results, list(range(size)))
            yield _sleep(0.005)  # both threads fall asleep

    @inlineCallbacks
    def test_calls_submitted_as_results_arrive(self) -> Any:
        # Each call is made from the callback of the previous result, that is
        # while the thread is posting that result and about to sleep.
        q = ThreadQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        done: defer.Deferred[int] = defer.Deferred()

        def chain(n: int) -> None:
            if n == 2000:
                done.callback(n)
            else:
                q.call(abs, n + 1).addCallback(chain)

        chain(0)
        self.assertEqual((yield done), 2000)

    def lateBellsFor(self, seconds: float) -> None:
        from asynqueue._threads import _worker

        self.patch(_worker, "LATE_BELLS_LIMIT", seconds)

    @inlineCallbacks
    def test_a_task_given_while_results_are_delivered_starts_when_they_are(self) -> Any:
        # Given from the callback of its worker's own result, its doorbell
        # rings when that delivery (the flush) ends, not while the reactor
        # still runs the rest of its turn.
        self.lateBellsFor(30.0)  # (however slow the machine: the bell waits)
        q = ThreadQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        (worker,) = q.workers()
        started = threading.Event()
        seen: list[bool] = []
        given: list[defer.Deferred[Any]] = []

        def deliver(_: object) -> None:
            helpers.waitUntilSync(lambda: worker._idle)  # (its thread sleeps)
            given.append(q.call(started.set))
            seen.append(started.wait(0.05))  # (lets the thread run, were it awake)

        yield q.call(abs, -1).addCallback(deliver)
        self.assertEqual(seen, [False])
        yield given[0]
        self.assertTrue(started.is_set())

    @inlineCallbacks
    def test_a_callback_that_blocks_after_giving_a_task_still_sees_it_start(self) -> Any:
        # A held-back doorbell cannot leave the task waiting while the
        # reactor blocks (an anti-pattern, but no reason to hang): the
        # thread's first wait after its result ends by itself.
        self.lateBellsFor(0.25)
        q = ThreadQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        (worker,) = q.workers()
        started = threading.Event()
        seen: list[bool] = []

        def deliver(_: object) -> None:
            helpers.waitUntilSync(lambda: worker._idle)  # (its thread sleeps)
            q.call(started.set)
            seen.append(started.wait(20))

        yield q.call(abs, -1).addCallback(deliver)
        self.assertEqual(seen, [True])

    @inlineCallbacks
    def test_defer_to_thread_interleaved_with_calls(self) -> Any:
        q = ThreadQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        for round in range(50):
            ds = [q.call(abs, -i) for i in range(round)]
            vip = q.deferToThread(lambda r=round: r * 2)
            self.assertEqual((yield vip), round * 2)
            self.assertEqual((yield defer.gatherResults(ds)), list(range(round)))
            if round % 10 == 0:
                yield _sleep(0.002)

    @inlineCallbacks
    def test_a_withdrawn_task_leaves_the_thread_responsive(self) -> Any:
        # A task withdrawn from the inbox (timed out before it started)
        # leaves its doorbell token behind: the thread must shrug it off and
        # still wake up for the next task.
        from asynqueue.tasks import Task

        w = ThreadWorker(window=10)
        release = threading.Event()
        self.addCleanup(release.set)
        blocker = Task(release.wait, (10,))
        queued = Task(abs, (-1,))
        w.run(blocker)
        w.run(queued)
        w.timedOut(queued)
        release.set()
        self.assertEqual((yield blocker.d), ("r", True))
        yield _sleep(0.01)  # the thread takes the stale token, then sleeps
        self.assertFalse(queued.reported)
        later = Task(abs, (-2,))
        w.run(later)
        self.assertEqual((yield later.d), ("r", 2))
        yield w.stop()

    @inlineCallbacks
    def test_a_reactor_of_its_own_kind_is_woken_through_its_call_from_thread(self) -> Any:
        # The stock reactors are woken by writing their waker's byte; any
        # other reactor through its own callFromThread.
        from twisted.internet import reactor as realReactor

        from asynqueue.tasks import Task

        class ForwardingReactor:
            """The real reactor, counting the calls it is asked to make from threads."""

            def __init__(self) -> None:
                self.fromThreads = 0

            def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
                self.fromThreads += 1
                realReactor.callFromThread(f, *args, **kw)

            def callLater(self, *args: Any, **kw: Any) -> Any:
                return realReactor.callLater(*args, **kw)

        forwarding = ForwardingReactor()
        w = ThreadWorker(reactor=forwarding)
        for i in range(5):
            task = Task(abs, (-i,))
            w.run(task)
            self.assertEqual((yield task.d), ("r", i))
        self.assertGreaterEqual(forwarding.fromThreads, 5)
        yield w.stop()

    @inlineCallbacks
    def test_stop_while_idle_ends_the_thread(self) -> Any:
        before = {t.ident for t in threading.enumerate()}
        w = ThreadWorker()
        from asynqueue.tasks import Task

        task = Task(threading.get_ident)
        w.run(task)
        _, ident = yield task.d
        self.assertNotIn(ident, before)
        yield _sleep(0.01)  # asleep in the doorbell
        yield w.stop()
        for _ in range(100):
            if ident not in {t.ident for t in threading.enumerate()}:
                break
            yield _sleep(0.01)
        self.assertNotIn(ident, {t.ident for t in threading.enumerate()})

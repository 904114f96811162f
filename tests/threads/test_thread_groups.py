"""
Groups on thread workers: while calls wait, a ThreadWorker takes the plain
calls the queue would hand out next as one task (`asynqueue._core._dispatch`,
*Groups*), each call with the outcome it would have had alone. Real threads.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from asynqueue import TaskQueue
from asynqueue._core._window import GROUP_MAX, GROUP_WINDOW
from asynqueue.iteration import Deferator
from asynqueue.threads import ThreadQueue, ThreadWorker

from ..helpers.common import waitUntil, watchGroups, watchWorkerGroups


def inc(x: int) -> int:
    return x + 1


class Boom(Exception):
    pass


class Abort(BaseException):
    """Not an Exception: a lone call's thread catches it all the same."""


def mixed(i: int) -> Any:
    """A result, None, an error or an iterator, by *i*."""
    kind = i % 5
    if kind == 0:
        raise Boom(f"boom {i}")
    if kind == 1:
        return None
    if kind == 2:
        return iter(range(i, i + 3))
    if kind == 3 and i % 15 == 3:
        raise Abort(f"abort {i}")
    return i * 2


class ThreadGroupTests(TestCase):
    timeout = 30

    def makeQueue(self, workers: int, **kw: Any) -> ThreadQueue:
        q = ThreadQueue(workers, returnFailure=True, **kw)
        self.addCleanup(q.shutdown)
        return q

    @inlineCallbacks
    def warmWorker(self) -> Any:
        """A ThreadWorker that has run calls (so it groups), detached again."""
        worker = ThreadWorker()
        q = TaskQueue()
        yield q.attachWorker(worker)
        for _ in range(5):
            yield q.call(inc, 0)
        yield q.detachWorker(worker)
        yield q.shutdown()
        # (Detached means stopped: a fresh worker with the same history.)
        fresh = ThreadWorker()
        fresh._avgRun = worker._avgRun
        return fresh

    @inlineCallbacks
    def test_a_backlog_runs_in_groups_in_the_workers_threads(self) -> Any:
        q = self.makeQueue(2)
        yield q.call(inc, 0)  # (the calls so far say how long one takes)
        groups = watchGroups(q)
        reactorThread = threading.get_ident()
        threads = set()

        def where(i: int) -> int:
            threads.add(threading.get_ident())
            return i + 1

        results = yield defer.gatherResults([q.call(where, i) for i in range(3000)])
        self.assertEqual(results, [i + 1 for i in range(3000)])
        self.assertTrue(groups, "no group was formed")
        self.assertGreater(sum(map(len, groups)), 1500)  # (most calls went in groups)
        self.assertLessEqual(max(map(len, groups)), GROUP_MAX)
        self.assertNotIn(reactorThread, threads)

    @inlineCallbacks
    def test_each_call_of_a_group_has_the_outcome_it_has_alone(self) -> Any:
        q = self.makeQueue(2)
        yield q.call(inc, 0)
        alone = []
        for i in range(30):  # (one at a time: never in a group)
            alone.append((yield defer.DeferredList([q.call(mixed, i)], consumeErrors=True)))
        groups = watchGroups(q)
        burst = yield defer.DeferredList(
            [q.call(mixed, i) for i in range(3000)], consumeErrors=True
        )
        self.assertTrue(groups, "no group was formed")

        @inlineCallbacks
        def described(i: int, ok: bool, value: Any) -> Any:
            if not ok:
                return ("error", value.type, str(value.value))
            if isinstance(value, Deferator):
                items = []
                for d in value:
                    items.append((yield d))
                return ("items", items)
            return ("result", value)

        for i in range(3000):
            [(ok, value)] = alone[i % 30] if i < 30 else [(None, None)]
            got = yield described(i, *burst[i])
            if i < 30:
                self.assertEqual(got, (yield described(i, ok, value)))
            expected = {
                0: ("error", Boom, f"boom {i}"),
                1: ("result", None),
                2: ("items", [i, i + 1, i + 2]),
                3: ("error", Abort, f"abort {i}") if i % 15 == 3 else ("result", i * 2),
                4: ("result", i * 2),
            }[i % 5]
            self.assertEqual(got, expected, i)

    @inlineCallbacks
    def test_a_worker_holds_a_few_groups_at_a_time(self) -> Any:
        # A window of groups would commit far more calls to one thread than
        # a window of calls (every series among them held): GROUP_WINDOW.
        q = self.makeQueue(2)
        yield q.call(inc, 0)
        most = [0]
        for slot in q._dispatcher._slotList:
            worker = slot.worker
            run = worker.run

            def counting(task: Any, run: Any = run, worker: Any = worker) -> Any:
                ready = run(task)
                held = [t for t in (worker._current, *worker._inbox) if t is not None]
                groups = sum(1 for t in held if t.callTuple[0] is worker.groupRunner)
                most[0] = max(most[0], groups)
                return ready

            worker.run = counting  # type: ignore[method-assign]
        gate = threading.Event()
        d = q.call(gate.wait, 10)
        ds = [q.call(inc, i) for i in range(5000)]
        yield waitUntil(lambda: most[0] >= GROUP_WINDOW)
        gate.set()
        self.assertTrue((yield d))
        results = yield defer.gatherResults(ds)
        self.assertEqual(results, [i + 1 for i in range(5000)])
        self.assertEqual(most[0], GROUP_WINDOW)

    @inlineCallbacks
    def test_a_cancelled_call_of_a_group_never_runs_and_the_others_do(self) -> Any:
        worker = yield self.warmWorker()
        q = TaskQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        ran: list[int] = []
        gate = threading.Event()

        def record(i: int) -> int:
            if i == 0:
                gate.wait(10)
            ran.append(i)
            return i

        # Queued before any worker: the worker's first task is a group of
        # the first calls, the first of which waits at the gate; two more
        # groups wait behind it in the worker.
        ds = [q.call(record, i) for i in range(3 * GROUP_MAX + 10)]
        groups = watchWorkerGroups(worker, [], lambda call: call[1][0])  # (each call's i)
        yield q.attachWorker(worker)
        yield waitUntil(lambda: worker._current is not None and len(groups) >= 2)
        self.assertEqual(groups[0][0], 0)
        running = groups[0][GROUP_MAX // 2]  # (in the running group, not started)
        waiting = groups[1][1]  # (in a group that waits in the worker)
        ds[running].cancel()
        ds[waiting].cancel()
        gate.set()
        outcomes = yield defer.DeferredList(ds, consumeErrors=True)
        for i, (ok, value) in enumerate(outcomes):
            if i in (running, waiting):
                self.assertFalse(ok)
                value.trap(CancelledError)
            else:
                self.assertEqual((ok, value), (True, i))
        self.assertEqual(sorted(ran), [i for i in range(len(ds)) if i not in (running, waiting)])

    @inlineCallbacks
    def test_a_long_call_gives_back_the_rest_of_its_group_to_another_worker(self) -> Any:
        # The group's first call waits for a later call of the same group:
        # that call runs only if the group's calls not started come back
        # (the stall rule) and the other worker takes them.
        first = yield self.warmWorker()
        q = TaskQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        later = threading.Event()

        def waiter() -> bool:
            return later.wait(10)

        def setter() -> str:
            later.set()
            return "set"

        ds = [q.call(waiter)] + [q.call(inc, i) for i in range(5)]
        ds.append(q.call(setter))
        ds += [q.call(inc, i) for i in range(5)]
        groups = watchWorkerGroups(first, [])
        yield q.attachWorker(first)
        self.assertEqual(list(map(len, groups)), [len(ds)])  # (all in one group, the waiter first)
        yield q.attachWorker(ThreadWorker())
        results = yield defer.gatherResults(ds)
        self.assertEqual(results, [True, 1, 2, 3, 4, 5, "set", 1, 2, 3, 4, 5])

    @inlineCallbacks
    def test_shutdown_after_groups_of_iterators_ends(self) -> Any:
        # Each iterator's first batch is asked of the thread: a quitting
        # thread waits for those requests, which must all come.
        q = self.makeQueue(2)
        yield q.call(inc, 0)
        workers = [slot.worker for slot in q._dispatcher._slotList]
        groups = watchGroups(q)
        results = yield defer.gatherResults([q.call(iter, range(i % 4)) for i in range(2000)])
        self.assertTrue(groups, "no group was formed")
        # (An empty one comes as an empty list, as a lone call's does.)
        self.assertEqual(
            [type(r) for r in results],
            [list if i % 4 == 0 else Deferator for i in range(2000)],
        )
        items = []
        for d in results[1]:
            items.append((yield d))
        self.assertEqual(items, [0])
        yield q.shutdown()
        self.assertFalse(any(worker.threadRunning for worker in workers))

    @inlineCallbacks
    def test_a_crashed_worker_runs_no_more_of_its_group(self) -> Any:
        # Its thread is abandoned in the group's running call; the group's
        # calls go to another worker, and the old thread, once that call
        # returns, must not run the rest of them too.
        worker = yield self.warmWorker()
        q = TaskQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        gate = threading.Event()
        ran: list[int] = []
        returned = []

        def record(i: int) -> int:
            if i == 0:
                gate.wait(10)
                returned.append(threading.get_ident())
            ran.append(i)
            return i

        ds = [q.call(record, i) for i in range(12)]
        groups = watchWorkerGroups(worker, [], lambda call: call[1][0])
        yield q.attachWorker(worker)
        yield waitUntil(lambda: worker._current is not None)
        self.assertEqual(groups, [list(range(12))])
        unfinished = yield q.detachWorker(worker, reassign=True, crash=True)
        self.assertEqual(len(unfinished), 0)  # (reassigned: none left to the caller)
        yield q.attachWorker(ThreadWorker())
        gate.set()
        results = yield defer.gatherResults(ds)
        self.assertEqual(results, list(range(12)))
        # The old thread's call 0 returns too (it was running: it ran twice).
        yield waitUntil(lambda: len(returned) == 2)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(sorted(ran), [0, *range(12)])

"""ProcessWorker and ProcessQueue, with real child processes."""

from __future__ import annotations

import functools
import gc
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from asynqueue import errors
from asynqueue._core._chunk import applyChunk
from asynqueue._core._task import Task
from asynqueue._iter._producers import ListConsumer
from asynqueue._wire import _codec
from asynqueue.process import ProcessBase, ProcessQueue, ProcessWorker

from ..helpers import process as h
from ..helpers.common import collect, isGone, waitUntil

BIG = 100 * 2**20  # large data both ways; big enough to need many reads and writes


def readyAtOnce(ready: Any) -> bool:
    """Whether a worker's ``run`` said it can take another task now."""
    return ready is None or ready.called


class TrackingWorker(ProcessWorker):
    """Remembers the PID of every child it starts."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.allPids: list[int] = []
        super().__init__(*args, **kw)

    def _spawn(self) -> Any:
        child = super()._spawn()
        if child is not None:
            self.allPids.append(child.pid)
        return child


def _unread(sock: socket.socket) -> bool:
    """Whether bytes wait to be read on *sock*."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def isZombie(pid: int | None) -> bool:
    """Whether process *pid* has ended and waits to be reaped (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


class WorkerTestCase(TestCase):
    timeout = 20

    def makeWorker(self, **kw: Any) -> TrackingWorker:
        worker = TrackingWorker(**kw)
        self.addCleanup(self.stopAndCheck, worker)
        return worker

    def makeQueue(self, workers: int) -> ProcessQueue:
        q = ProcessQueue(workers, returnFailure=True)
        self.addCleanup(q.shutdown)
        return q

    @inlineCallbacks
    def stopAndCheck(self, worker: TrackingWorker) -> Any:
        yield worker.stop()
        self.assertEqual(worker.pids, [])
        self.assertReaped(worker.allPids)

    def assertReaped(self, pids: list[int]) -> None:
        for pid in pids:
            # Reaped: not our child any more, and gone.
            self.assertRaises(ChildProcessError, os.waitpid, pid, os.WNOHANG)
            self.assertTrue(isGone(pid), f"process {pid} is still there")

    def call(self, worker: ProcessWorker, f: Any, *args: Any, **taskKw: Any) -> Deferred[Any]:
        """Run one task on *worker*; fires with ``(status, result)``."""
        task = Task(f, args, taskKw.pop("kw", {}), **taskKw)
        worker.run(task)
        return task.d

    @inlineCallbacks
    def value(self, worker: ProcessWorker, f: Any, *args: Any, **taskKw: Any) -> Any:
        status, result = yield self.call(worker, f, *args, **taskKw)
        if status == "e":
            result.raiseException()
        self.assertIn(status, ("r", "n"), result)
        return result


# ---------------------------------------------------------------- calls


class CallTests(WorkerTestCase):
    @inlineCallbacks
    def test_module_functions_lambdas_closures_and_main_functions(self) -> Any:
        w = self.makeWorker()
        self.assertEqual((yield self.value(w, h.add, 2, 3)), 5)
        self.assertEqual((yield self.value(w, lambda x: x * 3, 4)), 12)
        k = 10
        self.assertEqual((yield self.value(w, lambda x: x + k, 1)), 11)

        def fromMain(x: int) -> str:
            return f"main {x}"

        fromMain.__module__ = "__main__"  # plain pickle would send it by a bad reference
        fromMain.__qualname__ = "fromMain"
        self.assertEqual((yield self.value(w, fromMain, 1)), "main 1")
        self.assertEqual((yield self.call(w, h.nothing)), ("n", None))
        self.assertEqual((yield self.value(w, h.add, "a", kw={"b": "b"})), "ab")

    @inlineCallbacks
    def test_plain_calls_go_by_name_and_find_their_function_in_the_child(self) -> Any:
        w = self.makeWorker()
        self.assertEqual((yield self.value(w, h.byNameTarget)), "original")
        self.assertEqual((yield self.value(w, h.add, 2, 3)), 5)
        heads = yield self.value(w, h.byNameHeads)
        module = h.__name__.encode()
        self.assertIn(module + b"\0byNameTarget", heads)
        self.assertIn(module + b"\0add", heads)
        # Rebound in the child (by an update, say): the child calls what its
        # module holds now, as unpickling a reference would find it.
        yield self.value(w, h.rebindTarget)
        self.assertEqual((yield self.value(w, h.byNameTarget)), "replacement")

    @inlineCallbacks
    def test_a_function_rebound_in_the_parent_is_sent_by_value(self) -> Any:
        w = self.makeWorker()
        original = h.byNameTarget
        self.assertEqual((yield self.value(w, original)), "original")  # by name
        self.patch(h, "byNameTarget", h._replacement)
        # No longer what its module holds: by name, the child would find the
        # replacement. It travels by value and runs as it is.
        self.assertIsNone(_codec.dumpsCallByName(original, (), {}))
        self.assertEqual((yield self.value(w, original)), "original")
        self.assertEqual((yield self.value(w, h.byNameTarget)), "replacement")

    @inlineCallbacks
    def test_child_is_lean_and_separate(self) -> Any:
        w = self.makeWorker()
        modules = yield self.value(w, h.modules)
        self.assertFalse([m for m in modules if m.startswith(("twisted", "zope"))], modules)
        childPid = yield self.value(w, h.pid)
        self.assertNotEqual(childPid, os.getpid())
        self.assertEqual(w.pids, [childPid])

    @inlineCallbacks
    def test_exception_keeps_its_type_and_the_child_traceback(self) -> Any:
        w = self.makeWorker()
        status, failure = yield self.call(w, h.raiseKeyError, "missing")
        self.assertEqual(status, "e")
        self.assertIsInstance(failure.value, KeyError)
        self.assertIn("raise KeyError(key)", failure.value.remoteTraceback)
        self.assertIn("helpers/process.py", failure.value.remoteTraceback)
        self.assertEqual((yield self.value(w, h.add, 1, 1)), 2)

    @inlineCallbacks
    def test_exception_that_does_not_unpickle_becomes_process_error(self) -> Any:
        w = self.makeWorker()
        status, failure = yield self.call(w, h.raiseUnrebuildable)
        self.assertEqual(status, "e")
        self.assertIsInstance(failure.value, errors.ProcessError)
        self.assertTrue(failure.value.typeName.endswith("Unrebuildable"))
        self.assertIn("1 and 2", str(failure.value))
        self.assertIn("raise Unrebuildable(1, 2)", failure.value.remoteTraceback)

    @inlineCallbacks
    def test_unpicklable_argument_fails_that_call_only(self) -> Any:
        import threading

        w = self.makeWorker()
        task = Task(h.add, (1, threading.Lock()))
        ready = w.run(task)
        self.assertTrue(task.d.called, "reported before anything was sent")
        self.assertIsNone(ready)  # ready for another at once
        status, failure = yield task.d
        self.assertEqual(status, "e")
        self.assertIsInstance(failure.value, pickle.PicklingError)
        self.assertIn("argument 1", str(failure.value))
        status, failure = yield self.call(w, functools.partial(h.add, threading.Lock()))
        self.assertEqual(status, "e")
        self.assertIn("the callable", str(failure.value))
        self.assertEqual((yield self.value(w, h.add, 1, 2)), 3)

    @inlineCallbacks
    def test_plain_results_come_back_equal_and_of_their_type(self) -> Any:
        import operator

        from asynqueue._wire._framing import BYTES_MIN

        w = self.makeWorker()
        calls = [
            ((int, "12345678901234567890"), 12345678901234567890),
            ((float, "1.5"), 1.5),
            ((complex, 1, 2), 1 + 2j),
            ((bool, 1), True),
            ((operator.mul, "é", 3), "ééé"),
            # Too long for one small pickle: sent the other way, still equal.
            ((operator.mul, "x", 2 * BYTES_MIN), "x" * (2 * BYTES_MIN)),
        ]
        for (f, *args), expected in calls:
            result = yield self.value(w, f, *args)
            self.assertEqual(result, expected)
            self.assertIs(type(result), type(expected))

    @inlineCallbacks
    def test_unpicklable_result_fails_that_call_only(self) -> Any:
        w = self.makeWorker()
        before = yield self.value(w, h.pid)
        status, failure = yield self.call(w, h.unpicklableResult)
        self.assertEqual(status, "e")
        self.assertIsInstance(failure.value, pickle.PicklingError)
        self.assertIn("result of unpicklableResult", str(failure.value))
        self.assertEqual((yield self.value(w, h.pid)), before)

    @inlineCallbacks
    def test_many_calls_are_pipelined_and_come_back_in_order(self) -> Any:
        w = self.makeWorker()
        tasks = [Task(h.add, (i, 1)) for i in range(3000)]
        windows = []
        for task in tasks:
            yield w.run(task)
            windows.append(w._window())
        results = yield defer.gatherResults([t.d for t in tasks])
        self.assertEqual(results, [("r", i + 1) for i in range(3000)])
        self.assertGreater(max(windows), 2)  # fast tasks: the window opened up
        self.assertTrue(all(t.startedAt is not None for t in tasks))
        starts = [t.startedAt for t in tasks]
        self.assertEqual(starts, sorted(starts))

    @inlineCallbacks
    def test_slow_tasks_get_a_small_window(self) -> Any:
        w = self.makeWorker()
        yield self.value(w, h.pidAfter, 0.05)
        self.assertEqual(w._window(), 1)
        task = Task(h.pidAfter, (0.05,))
        ready = w.run(task)
        self.assertFalse(readyAtOnce(ready))  # no room for another until it is done
        yield task.d
        self.assertTrue(readyAtOnce(ready))

    @inlineCallbacks
    def test_a_short_map_batch_may_wait_behind_another(self) -> Any:
        # With a window of one task, a map batch of a few milliseconds takes
        # a second one, to wait in the child behind it; a plain task does
        # not, and neither does a batch of longer work.
        w = self.makeWorker()
        yield self.value(w, h.pidAfter, 0.005)
        # The rule is under test, not the machine's speed: the average task
        # time it reads is pinned (on a loaded machine a 5 ms task can be
        # measured at over BATCH_BEHIND_LIMIT).
        pinned = [0.005]
        noteRuns = w._noteRuns

        def notePinned(runs: list[tuple[float, float]], now: float) -> None:
            noteRuns(runs, now)
            w._avgRun = pinned[0]

        w._noteRuns = notePinned  # type: ignore[method-assign]
        w._avgRun = pinned[0]
        self.assertEqual(w._window(), 1)
        first = Task(applyChunk, (h.pidAfter, [0.005]))
        self.assertIsNone(w.run(first))  # room for one behind it (ready at once)
        second = Task(applyChunk, (h.pidAfter, [0.005]))
        ready = w.run(second)
        self.assertFalse(readyAtOnce(ready))  # never more than one behind
        yield first.d
        self.assertTrue(readyAtOnce(ready))
        yield second.d
        plain = Task(h.pidAfter, (0.005,))
        self.assertFalse(readyAtOnce(w.run(plain)))
        yield plain.d
        self.assertEqual(w._avgRun, 0.005)  # (pinned through every result so far)
        pinned[0] = w._avgRun = 0.05  # batches of longer work
        self.assertEqual(w._window(), 1)
        long = Task(applyChunk, (h.pidAfter, [0.05]))
        self.assertFalse(readyAtOnce(w.run(long)))
        status, (results, errors, _) = yield long.d
        self.assertEqual((status, errors), ("r", 0))
        self.assertEqual(results, w.pids)

    @inlineCallbacks
    def test_large_data_both_ways(self) -> Any:
        w = self.makeWorker()
        data = b"\x01" * BIG
        self.assertEqual((yield self.value(w, h.length, data)), BIG)
        del data
        result = yield self.value(w, h.makeBytes, BIG)
        self.assertEqual(len(result), BIG)
        self.assertEqual(result[:3] + result[-3:], b"\xab" * 6)

    @inlineCallbacks
    def test_process_base_data_stays_in_each_child(self) -> Any:
        counter = h.Counter()
        self.assertIsInstance(counter, ProcessBase)
        w1, w2 = self.makeWorker(), self.makeWorker()
        results = []
        for w in (w1, w1, w2, w1):
            results.append((yield self.value(w, counter.bump)))
        pid1, pid2 = w1.pids[0], w2.pids[0]
        self.assertEqual(results, [(pid1, 1), (pid1, 2), (pid2, 1), (pid1, 3)])
        self.assertEqual(counter.data, {})  # nothing happened in this process


# ---------------------------------------------------------------- iterators


class IteratorTests(WorkerTestCase):
    @inlineCallbacks
    def test_iterator_streams_in_batches(self) -> Any:
        w = self.makeWorker()
        w.batchItems = 500  # several batches
        status, dr = yield self.call(w, h.squares, 3000)
        self.assertEqual(status, "i")
        self.assertEqual((yield collect(dr)), [i * i for i in range(3000)])
        self.assertTrue((yield dr.d))
        # The worker is free for more.
        self.assertEqual((yield self.value(w, h.add, 1, 2)), 3)

    @inlineCallbacks
    def test_empty_iterator_gives_an_empty_list(self) -> Any:
        w = self.makeWorker()
        self.assertEqual((yield self.call(w, h.squares, 0)), ("i", []))

    @inlineCallbacks
    def test_iterator_error_comes_after_the_items(self) -> Any:
        w = self.makeWorker()
        _, dr = yield self.call(w, h.failingAfter, 3)
        items = []
        with self.assertRaises(ValueError) as ctx:
            for d in dr:
                items.append((yield d))
        self.assertEqual(items, [0, 1, 2])
        self.assertIn("gave up after 3", str(ctx.exception))
        self.assertIn("raise ValueError", ctx.exception.remoteTraceback)

    @inlineCallbacks
    def test_unpicklable_item_ends_the_iteration_with_an_error(self) -> Any:
        w = self.makeWorker()
        _, dr = yield self.call(w, h.unpicklableItems)
        self.assertEqual((yield next(dr)), 1)
        with self.assertRaises(pickle.PicklingError):
            yield next(dr)

    @inlineCallbacks
    def test_raw_iterators_are_pickled(self) -> Any:
        w = self.makeWorker(raw=True)
        status, it = yield self.call(w, iter, [1, 2, 3])
        self.assertEqual((status, list(it)), ("r", [1, 2, 3]))
        status, failure = yield self.call(w, h.squares, 3)
        self.assertEqual(status, "e")  # a generator does not pickle
        self.assertIsInstance(failure.value, pickle.PicklingError)
        self.assertEqual((yield self.call(w, h.squares, 2, raw=False))[0], "i")

    @inlineCallbacks
    def test_stopped_and_abandoned_iterators_are_closed_in_the_child(self) -> Any:
        w = self.makeWorker(maxTasks=1)  # the child retires after one task
        w.firstBatchItems = 2
        _, dr = yield self.call(w, h.squares, 10**9)
        child = w._children[0]
        self.assertEqual(len(child.sources), 1)
        self.assertEqual((yield next(dr)), 0)
        yield self.value(w, h.add, 1, 1)  # runs in a new child
        self.assertIn(child, w._children)  # kept alive by the iterator
        dr.stop()
        self.assertEqual(child.sources, {})
        yield waitUntil(lambda: child not in w._children)  # it exited
        # A Deferator dropped unexhausted has its iterator closed too.
        _, dr = yield self.call(w, h.squares, 10**9)
        child = w._children[-1]
        self.assertEqual(len(child.sources), 1)
        del dr
        gc.collect()
        yield waitUntil(lambda: not child.sources)

    @inlineCallbacks
    def test_stop_does_not_wait_for_an_unexhausted_iterator(self) -> Any:
        w = TrackingWorker()
        _, dr = yield self.call(w, h.squares, 10**9)
        self.assertEqual((yield next(dr)), 0)
        yield w.stop()
        self.assertReaped(w.allPids)

    @inlineCallbacks
    def test_consumer_through_the_queue(self) -> Any:
        q = self.makeQueue(1)
        consumer = ListConsumer()
        result = yield q.call(h.squares, 5, consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual((yield consumer()), [0, 1, 4, 9, 16])


# ---------------------------------------------------------------- faults


class CrashTests(WorkerTestCase):
    crashes = [
        ("exit code", h.exitWith, (3,), "exited with code 3"),
        ("SIGKILL", h.killSelf, (signal.SIGKILL,), "signal 9 (SIGKILL)"),
        ("SIGTERM", h.killSelf, (signal.SIGTERM,), "signal 15 (SIGTERM)"),
        ("segfault", h.segfault, (), "signal 11 (SIGSEGV)"),
        ("death mid-result", h.dieMidResult, (), "exited with code 1"),
    ]

    @inlineCallbacks
    def test_crash_table(self) -> Any:
        w = self.makeWorker()
        yield self.value(w, h.add, 0, 0)  # child up and running
        for label, f, args, reason in self.crashes:
            before = w.pid
            running = Task(f, args)
            queued = Task(h.add, (1, 2))
            w.run(running)
            w.run(queued)
            status, text = yield running.d
            self.assertEqual(status, "d", label)
            self.assertIn(reason, text, label)
            self.assertIn(str(before), text, label)
            self.assertFalse(running.innocent, label)
            self.assertEqual((yield queued.d)[0], "d", label)
            self.assertTrue(queued.innocent, label)
            # Replaced by a new child, and the dead one was reaped.
            self.assertEqual((yield self.value(w, h.add, 2, 2)), 4, label)
            self.assertNotEqual(w.pid, before, label)
            self.assertReaped([before])

    @inlineCallbacks
    def test_death_mid_iteration_fails_the_iteration(self) -> Any:
        w = self.makeWorker()
        w.firstBatchItems = 1
        w.batchItems = 2
        yield self.value(w, h.add, 0, 0)
        w._retire(w._children[0], "the next child gets the small first batch")
        status, dr = yield self.call(w, h.dyingAfter, 5, 9)
        self.assertEqual(status, "i")
        items = []
        with self.assertRaises(errors.ProcessError) as ctx:
            for d in dr:
                items.append((yield d))
        self.assertIn("exited with code 9", str(ctx.exception))
        self.assertLess(len(items), 5)
        self.assertEqual(items, list(range(len(items))))
        self.assertEqual((yield self.value(w, h.add, 1, 2)), 3)

    @inlineCallbacks
    def test_queue_reruns_a_lost_task_once_then_fails_it(self) -> Any:
        q = self.makeQueue(1)
        [w] = q.workers()
        first = w.pid
        with self.assertRaises(errors.WorkerLost) as ctx:
            yield q.call(h.exitWith, 5)
        self.assertIn("exited with code 5", str(ctx.exception))
        pid = yield q.call(h.pid)
        self.assertNotIn(pid, (first, None))

    @inlineCallbacks
    def test_persistent_updates_are_replayed_to_new_children(self) -> Any:
        w = self.makeWorker()
        self.assertEqual((yield self.call(w, h.setState, "k", 42, update="persistent"))[0], "n")
        yield self.call(w, h.setState, "e", 1, update="ephemeral")
        yield self.call(w, h.exitWith, 1)
        self.assertEqual((yield self.value(w, h.getState, "k")), 42)
        self.assertIsNone((yield self.value(w, h.getState, "e")))
        self.assertEqual(len(w.allPids), 2)

    @inlineCallbacks
    def test_queue_update_reaches_later_and_respawned_children(self) -> Any:
        q = self.makeQueue(2)
        yield q.update(h.setState, "u", "yes")
        yield q.call(h.exitWith, 1).addErrback(lambda _: None)
        values = yield defer.gatherResults([q.call(h.getState, "u") for _ in range(6)])
        self.assertEqual(values, ["yes"] * 6)

    @inlineCallbacks
    def test_a_queue_whose_children_all_die_at_start_fails_its_calls(self) -> Any:
        # Its only worker gives up: the calls fail instead of waiting for ever
        # (a program whose children cannot start must not hang).
        q = self.makeQueue(1)
        yield q.update(h.exitWith, 1).addErrback(lambda _: None)  # replayed to every child
        error = yield self.assertFailure(q.call(h.add, 1, 1), errors.WorkerError)
        self.assertIn("last worker gave up", str(error))
        self.assertIn("died before running a task", str(error))
        self.assertEqual(q.workers(), [])
        yield self.assertFailure(q.call(h.add, 2, 2), errors.WorkerError)

    @inlineCallbacks
    def test_children_dying_before_any_task_make_the_worker_resign(self) -> Any:
        w = self.makeWorker()
        resigned: list[bool] = []
        w.setResignator(lambda: resigned.append(True))
        # A persistent update that kills every child it is replayed to.
        yield self.call(w, h.exitWith, 1, update="persistent")
        yield waitUntil(lambda: resigned)
        self.assertEqual(resigned, [True])
        task = Task(h.add, (1, 1))
        ready = w.run(task)
        status, text = yield task.d
        self.assertEqual(status, "d")
        self.assertIn("died before running a task", text)
        self.assertFalse(readyAtOnce(ready))

    @inlineCallbacks
    def test_a_child_that_closes_its_socket_and_runs_on_is_killed_and_reported(self) -> Any:
        # Not a kill of ours: the call it was running is the culprit, the one
        # behind it innocent, and neither waits forever.
        w = self.makeWorker()
        before = yield self.value(w, h.pid)
        closer = Task(h.closeSocketAndSleep, (60,))
        behind = Task(h.add, (1, 2))
        w.run(closer)
        w.run(behind)
        status, text = yield closer.d
        self.assertEqual(status, "d")
        self.assertIn("SIGKILL", text)
        self.assertFalse(closer.innocent)
        self.assertEqual((yield behind.d)[0], "d")
        self.assertTrue(behind.innocent)
        self.assertNotEqual((yield self.value(w, h.pid)), before)
        self.assertReaped([before])

    @inlineCallbacks
    def resultUnread(self, w: ProcessWorker, task: Task) -> Any:
        """
        Run *task* alone on *w*'s child (its result goes out at once), the
        parent not reading: fires with the child once the result waits.
        """
        yield self.value(w, h.add, 0, 0)
        child = w._current
        assert child is not None and child.channel is not None
        child.channel.pauseReading()
        w.run(task)
        yield waitUntil(lambda: _unread(child.channel.socket))
        return child

    @inlineCallbacks
    def test_results_read_with_the_end_of_file_come_before_the_held_ones(self) -> Any:
        # The read that meets the end of file reaps the child (processEnded,
        # within that read): the result it read comes before the one the
        # child held, as the calls ran.
        w = self.makeWorker()
        # (A large result: the read asks for the rest of it exactly, so it
        # reads on, to the end of file.)
        first = Task(h.makeBytes, (1_000_000,))
        child = yield self.resultUnread(w, first)
        # Then the rest in one message: the results of the first two are
        # held, with calls queued behind them.
        slow = Task(h.pidAfter, (0.05,))
        held = Task(h.add, (2, 2))
        tasks = [slow, held, Task(h.exitWith, (3,)), Task(h.add, (3, 3)), Task(h.add, (4, 4))]
        fired: list[Any] = []
        for task in (first, slow, held):
            task.d.addCallback(lambda report: fired.append(report) or report)
        child.holdSends(True)
        for task in tasks:
            w.run(task)
        child.holdSends(False)
        # Without letting the reactor reap the child, wait for its end, then
        # read: its end of file is in the same read as the first result.
        deadline = time.monotonic() + 10
        while not isZombie(child.pid):
            self.assertLess(time.monotonic(), deadline, "the child did not exit")
            time.sleep(0.005)
        child.channel.readLast()
        self.assertTrue(child.ended)
        self.assertEqual(fired, [("r", h.makeBytes(1_000_000)), ("r", child.pid), ("r", 4)])
        self.assertEqual((yield tasks[2].d)[0], "d")
        for task in tasks[3:]:
            self.assertEqual((yield task.d)[0], "d")
            self.assertTrue(task.innocent)

    @inlineCallbacks
    def test_results_sent_before_a_crash_are_read_when_it_is_reaped(self) -> Any:
        # The parent does not read (as if it learnt of the child's end first):
        # the result the child sent before it died still comes.
        w = self.makeWorker()
        first = Task(h.add, (1, 1))
        yield self.resultUnread(w, first)
        crash = Task(h.exitWith, (3,))
        w.run(crash)
        self.assertEqual((yield first.d), ("r", 2))
        status, text = yield crash.d
        self.assertEqual(status, "d")
        self.assertIn("exited with code 3", text)
        self.assertFalse(crash.innocent)


class HeldResultsTests(WorkerTestCase):
    """
    A child holds the results of short calls while others are queued behind
    them, and sends them together (see `asynqueue._process._child`, *Results*).
    """

    def countResults(self, w: ProcessWorker) -> list[int]:
        """How many results each RESULTS message from *w*'s child carries, from now on."""
        child = w._current
        assert child is not None
        sizes: list[int] = []
        results = child._results

        def counting(parts: list[Any], filling: Any = None) -> None:
            sizes.append(len(pickle.loads(parts[0])[0]))
            results(parts, filling)

        child._results = counting  # type: ignore[method-assign]
        return sizes

    @inlineCallbacks
    def test_queued_calls_come_back_several_per_message(self) -> Any:
        w = self.makeWorker()
        yield self.value(w, h.add, 0, 0)
        sizes = self.countResults(w)
        hasArena = w._current is not None and w._current.arena is not None
        values = yield defer.gatherResults([self.value(w, h.add, i, 1) for i in range(40)])
        self.assertEqual(values, [i + 1 for i in range(40)])
        self.assertEqual(sum(sizes), 40)
        if hasArena:
            self.assertGreater(max(sizes), 1, sizes)
        else:  # (no memfd: a crash could not be blamed right, so nothing is held)
            self.assertEqual(sizes, [1] * 40)

    @inlineCallbacks
    def test_iterators_and_errors_among_held_results_keep_their_order(self) -> Any:
        # An iterator result sends its first items at once, and the results
        # held before it go first; errors are held like values.
        q = self.makeQueue(1)
        yield q.call(h.add, 0, 0)
        ds = []
        for i in range(30):
            if i % 7 == 3:
                ds.append(q.call(h.squares, i))
            elif i % 5 == 4:
                ds.append(q.call(h.raiseKeyError, f"k{i}").addErrback(lambda f: f.value.args))
            else:
                ds.append(q.call(h.add, i, 1))
        outcomes = yield defer.gatherResults(ds)
        for i, outcome in enumerate(outcomes):
            if i % 7 == 3:
                self.assertEqual((yield collect(outcome)), [k * k for k in range(i)])
            elif i % 5 == 4:
                self.assertEqual(outcome, (f"k{i}",))
            else:
                self.assertEqual(outcome, i + 1)

    @inlineCallbacks
    def test_timed_calls_are_answered_one_by_one(self) -> Any:
        # The parent times a call from its start, which it learns from the
        # result before it: no result waits around a timed call.
        w = self.makeWorker()
        yield self.value(w, h.add, 0, 0)
        sizes = self.countResults(w)
        values = yield defer.gatherResults(
            [self.value(w, h.add, i, 1, timeout=30) for i in range(40)]
        )
        self.assertEqual(values, [i + 1 for i in range(40)])
        self.assertEqual(sizes, [1] * 40)

    @inlineCallbacks
    def test_a_long_call_does_not_keep_the_results_before_it(self) -> Any:
        # `meet` waits (up to 10 s) for a file that the test writes only
        # once the results of the calls before it are in.
        folder = tempfile.mkdtemp(prefix="aq-held")
        self.addCleanup(shutil.rmtree, folder, True)
        w = self.makeWorker()
        yield self.value(w, h.add, 0, 0)
        before = [self.value(w, h.add, i, 1) for i in range(3)]
        meeting = self.value(w, h.meet, folder, "long", "results-in", 10.0)
        after = [self.value(w, h.add, i, 2) for i in range(3)]
        self.assertEqual((yield defer.gatherResults(before)), [1, 2, 3])
        self.assertFalse(meeting.called)
        with open(os.path.join(folder, "results-in"), "w"):
            pass
        self.assertIs((yield meeting), True)
        self.assertEqual((yield defer.gatherResults(after)), [2, 3, 4])

    @inlineCallbacks
    def test_a_crash_is_blamed_on_the_running_call_not_on_held_results(self) -> Any:
        w = self.makeWorker()
        yield self.value(w, h.add, 0, 0)
        done = [Task(h.add, (i, 1)) for i in range(3)]
        crash = Task(h.exitWith, (3,))
        queued = [Task(h.add, (i, 2)) for i in range(3)]
        for task in [*done, crash, *queued]:
            w.run(task)
        hasArena = w._current is not None and w._current.arena is not None
        status, text = yield crash.d
        self.assertEqual(status, "d")
        self.assertIn("exited with code 3", text)
        self.assertFalse(crash.innocent)
        for i, task in enumerate(done):
            status, result = yield task.d
            if hasArena:
                # Sent before the crash, or held back and found in the arena.
                self.assertEqual((status, result), ("r", i + 1))
            elif status != "r":
                # (Without an arena nothing is held: a result not yet read
                # when the child was reaped is lost, and the call runs again.)
                self.assertEqual(status, "d")
                self.assertTrue(task.innocent)
        for task in queued:
            status, _ = yield task.d
            self.assertEqual(status, "d")  # never run: not the culprit, run again free
            self.assertTrue(task.innocent)

    @inlineCallbacks
    def test_a_crash_runs_no_finished_call_again(self) -> Any:
        # Each call appends a line to a file: after a crash among them,
        # every call has run once (the crashing one never gets that far).
        folder = tempfile.mkdtemp(prefix="aq-once")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "lines")
        q = self.makeQueue(1)
        yield q.call(h.add, 0, 0)
        for round in range(3):
            texts = [f"{round}-{i}" for i in range(12)]
            calls = [q.call(h.appendLine, path, text) for text in texts[:6]]
            crash = q.call(h.exitWith, 3)
            calls += [q.call(h.appendLine, path, text) for text in texts[6:]]
            self.assertEqual((yield defer.gatherResults(calls)), texts)
            with self.assertRaises(errors.WorkerLost):
                yield crash
            with open(path) as f:
                lines = f.read().split()
            self.assertEqual(len(lines), len(set(lines)), lines)
            self.assertEqual(set(lines), {f"{r}-{i}" for r in range(round + 1) for i in range(12)})

    @inlineCallbacks
    def test_with_a_sigalrm_handler_of_the_users_every_result_goes_at_once(self) -> Any:
        w = self.makeWorker()
        self.assertIs((yield self.value(w, h.installAlarmHandler)), True)
        sizes = self.countResults(w)
        values = yield defer.gatherResults([self.value(w, h.add, i, 1) for i in range(40)])
        self.assertEqual(values, [i + 1 for i in range(40)])
        self.assertEqual(sizes, [1] * 40)

    @inlineCallbacks
    def test_code_timing_itself_with_sigalrm_gets_its_own_alarm(self) -> Any:
        w = self.makeWorker()
        yield self.value(w, h.add, 0, 0)
        calls = [self.value(w, h.add, i, 1) for i in range(5)]
        calls.append(self.value(w, h.ownAlarm))
        calls += [self.value(w, h.add, i, 1) for i in range(5)]
        values = yield defer.gatherResults(calls)
        self.assertIs(values[5], True)
        self.assertEqual(values[:5] + values[6:], [1, 2, 3, 4, 5] * 2)


class TimeoutTests(WorkerTestCase):
    @inlineCallbacks
    def test_timed_out_task_kills_the_child_and_frees_the_others(self) -> Any:
        w = self.makeWorker()
        before = yield self.value(w, h.pid)
        stuck = Task(time.sleep, (30,))
        queued = Task(h.add, (1, 2))
        w.run(stuck)
        w.run(queued)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertIsNotNone(stuck.startedAt)
        w.timedOut(stuck)
        status, _ = yield queued.d
        self.assertEqual(status, "d")
        self.assertTrue(queued.innocent)
        self.assertNotEqual((yield self.value(w, h.pid)), before)
        yield waitUntil(lambda: before not in w.pids)
        self.assertFalse(stuck.d.called)  # the queue gave up on it; no late report
        self.assertReaped([before])

    @inlineCallbacks
    def test_queue_timeout_retries_once_then_fails(self) -> Any:
        q = self.makeQueue(1)
        [w] = q.workers()
        first = w.pid
        slow = q.call(time.sleep, 30, timeout=0.3)
        fast = q.call(h.add, 1, 2)
        with self.assertRaises(errors.TimeoutError):
            yield slow
        self.assertEqual((yield fast), 3)
        self.assertNotEqual((yield q.call(h.pid)), first)


class RecycleTests(WorkerTestCase):
    @inlineCallbacks
    def test_max_tasks_replaces_the_child(self) -> Any:
        w = self.makeWorker(maxTasks=3)
        yield self.call(w, h.setState, "k", "kept", update="persistent")
        pids = []
        for _ in range(7):
            pids.append((yield self.value(w, h.pid)))
        self.assertEqual((yield self.value(w, h.getState, "k")), "kept")  # replayed
        # The update counted as one of the first child's three tasks.
        self.assertEqual(len(set(pids[:2])), 1)
        self.assertEqual(len(set(pids[2:5])), 1)
        self.assertEqual(len(set(pids)), 3)
        retired = sorted(set(pids[:5]))
        yield waitUntil(lambda: not set(retired) & set(w.pids))
        self.assertReaped(retired)

    @inlineCallbacks
    def test_max_rss_replaces_the_child(self) -> Any:
        w = self.makeWorker(maxRSS="150M")
        first = yield self.value(w, h.hoard, 10)
        self.assertEqual((yield self.value(w, h.pid)), first)
        self.assertEqual((yield self.value(w, h.hoard, 200)), first)
        second = yield self.value(w, h.pid)
        self.assertNotEqual(second, first)

    def test_parse_size(self) -> None:
        from asynqueue._support._system import parseSize

        self.assertEqual(parseSize("500M"), 500 * 2**20)
        self.assertEqual(parseSize("1.5 GB"), int(1.5 * 2**30))
        self.assertEqual(parseSize(1000), 1000)
        self.assertIsNone(parseSize(None))
        self.assertRaises(ValueError, parseSize, "lots")
        self.assertRaises(ValueError, parseSize, 0)


class ShutdownTests(WorkerTestCase):
    @inlineCallbacks
    def test_stop_finishes_the_tasks_in_hand(self) -> Any:
        w = TrackingWorker()
        tasks = [Task(h.pidAfter, (0.05,)) for _ in range(3)]
        for t in tasks:
            w.run(t)
        yield w.stop()
        self.assertTrue(all(t.d.called for t in tasks))
        results = yield defer.gatherResults([t.d for t in tasks])
        self.assertEqual({s for s, _ in results}, {"r"})
        self.assertEqual(w.pids, [])
        self.assertReaped(w.allPids)
        # A stopped worker hands tasks back and never looks ready again.
        task = Task(h.add, (1, 1))
        ready = w.run(task)
        self.assertEqual((yield task.d)[0], "d")
        self.assertTrue(task.innocent)
        self.assertFalse(readyAtOnce(ready))

    @inlineCallbacks
    def test_crash_returns_unfinished_tasks_and_reaps(self) -> Any:
        w = TrackingWorker()
        yield self.value(w, h.add, 1, 1)
        tasks = [Task(time.sleep, (30,)), Task(h.add, (1, 2))]
        for t in tasks:
            w.run(t)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(w.crash(), tasks)
        yield w.waitForExit()
        self.assertFalse(any(t.d.called for t in tasks))
        self.assertReaped(w.allPids)

    @inlineCallbacks
    def test_process_queue_shutdown_reaps_every_child(self) -> Any:
        q = ProcessQueue(2, returnFailure=True)
        workers = q.workers()
        pids = yield defer.gatherResults([q.call(h.pidAfter, 0.02) for _ in range(6)])
        self.assertEqual(len(set(pids)), 2)
        yield q.shutdown()
        for w in workers:
            self.assertEqual(w.pids, [])
        self.assertReaped(sorted(set(pids)))

    @inlineCallbacks
    def test_process_queue_shutdown_with_a_timeout_kills_a_busy_child(self) -> Any:
        q = ProcessQueue(1)
        [w] = q.workers()
        pid = yield q.call(h.pid)
        stuck = q.call(time.sleep, 30)
        queued = q.call(h.add, 1, 2)
        yield q.shutdown(timeout=0.3)
        for d in (stuck, queued):
            failure = self.failureResultOf(d, errors.QueueRunError)
            self.assertIn("shutdown's timeout", str(failure.value))
        yield w.waitForExit()
        self.assertReaped([pid])


def test_children_die_with_their_parent(tmp_path: Any) -> None:
    """A parent killed with SIGKILL leaves no child behind, idle or busy."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from twisted.internet import reactor
            from asynqueue.process import ProcessQueue

            def double(x):  # defined in __main__: sent by value
                return 2 * x

            q = ProcessQueue(2, returnFailure=True)

            def go():
                d1 = q.call(double, 21)
                def report(value):
                    print(value, *[w.pid for w in q.workers()], flush=True)
                    q.call(time.sleep, 60)  # one child busy, the other idle
                    reactor.callLater(0.3, os.kill, os.getpid(), 9)
                d1.addCallback(report)

            reactor.callWhenRunning(go)
            reactor.run()
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, env=env
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    value, *pids = proc.stdout.split()
    assert value == "42"
    assert len(pids) == 2
    deadline = time.monotonic() + 15
    while not all(isGone(int(p)) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(isGone(int(p)) for p in pids), pids


def test_stopping_the_reactor_with_queued_calls(tmp_path: Any) -> None:
    """reactor.stop() with calls queued and running: a clean, prompt exit."""
    script = tmp_path / "stopper.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            from twisted.internet import reactor
            from asynqueue.process import ProcessQueue

            q = ProcessQueue(2, returnFailure=True)
            print(*[w.pid for w in q.workers()], flush=True)
            for _ in range(5):
                q.call(time.sleep, 30).addErrback(lambda f: None)
            reactor.callLater(0.3, reactor.stop)
            reactor.run()
            print("stopped", len(q), *[p for w in q.workers() for p in w.pids])
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, env=env
    )
    assert proc.returncode == 0, proc.stderr
    pids, last = proc.stdout.splitlines()
    assert last == "stopped 0"  # workers detached, no child left
    assert all(isGone(int(p)) for p in pids.split())


class QueueTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_process_queue_api(self) -> Any:
        q = ProcessQueue(2, callStats=True, returnFailure=True)
        self.addCleanup(q.shutdown)
        self.assertEqual(len(q), 2)
        self.assertEqual(ProcessQueue.cores(), ProcessWorker.cores())
        self.assertGreaterEqual(q.cores(), 1)
        results = yield defer.gatherResults([q.call(h.add, i, i) for i in range(50)])
        self.assertEqual(results, [2 * i for i in range(50)])
        stats = yield q.stats()
        self.assertEqual(len(stats), 50)
        self.assertTrue(all(rt >= 0 and inChild >= 0 for rt, inChild in stats))
        with self.assertRaises(ZeroDivisionError):
            yield q.call(divmod, 1, 0)
        for w in q.workers():
            self.assertEqual(w.cQualified, ["process", "local"])

    @inlineCallbacks
    def test_calls_waiting_behind_a_long_one_go_to_a_free_child(self) -> Any:
        # A child takes a window of calls at once; those behind one that
        # runs long come back unrun (HANDBACK) and run in the other child,
        # each exactly once: they all finish before the long one.
        q = ProcessQueue(2, returnFailure=True)
        self.addCleanup(q.shutdown)
        yield defer.gatherResults([q.call(h.pid) for _ in range(100)])  # (wide windows)
        path = self.mktemp()
        finished: list[str] = []

        def call(tag: str, seconds: float = 0.0) -> Deferred[Any]:
            return q.call(h.logRun, path, tag, seconds).addCallback(finished.append)

        ds = [call(f"before{i}") for i in range(5)]
        ds.append(call("long", 2.0))
        ds += [call(f"after{i}") for i in range(40)]
        yield defer.gatherResults(ds)
        self.assertEqual(finished[-1], "long")
        self.assertEqual(len(finished), 46)
        with open(path) as f:
            lines = f.read().splitlines()
        # Each ran once: one start and one end per call.
        self.assertEqual(sorted(lines), sorted(f"{x} {t}" for t in finished for x in "be"))

    @inlineCallbacks
    def test_calls_are_asked_back_once(self) -> Any:
        # A call that takes SIGUSR1 for itself keeps the child from reading
        # the request: the calls behind it wait it out, and the child is
        # signalled once for them, not again each time the queue looks.
        q = ProcessQueue(2, returnFailure=True)
        self.addCleanup(q.shutdown)
        yield defer.gatherResults([q.call(h.pid) for _ in range(100)])  # (wide windows)
        long = q.call(h.ownUsr1, 1.0)
        quick = [q.call(h.add, i, 1) for i in range(40)]
        # (More calls meanwhile: each one handed to a busy worker has the
        # queue look for stalled ones again.)
        more = []
        for _ in range(10):
            yield deferLater(reactor, 0.05, lambda: None)
            more += [q.call(h.add, i, 2) for i in range(10)]
        self.assertEqual((yield defer.gatherResults(quick)), [i + 1 for i in range(40)])
        yield defer.gatherResults(more)
        self.assertLessEqual((yield long), 1)

    @inlineCallbacks
    def test_a_cancelled_call_dropped_as_the_child_reads_is_no_crash(self) -> Any:
        # The child reads before each call: an ABANDON (or HANDBACK) read
        # there may leave no call to run (it used to pop an empty queue).
        q = ProcessQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        pid = yield q.call(h.pid)
        for _ in range(20):
            ds = [q.call(h.add, i, i) for i in range(10)]
            for d in ds[5:]:
                d.addErrback(lambda f: f.trap(errors.TaskCancelled, defer.CancelledError))
                d.cancel()
            self.assertEqual((yield defer.gatherResults(ds[:5])), [0, 2, 4, 6, 8])
        self.assertEqual((yield q.call(h.pid)), pid)  # (the same child, alive)

    @inlineCallbacks
    def test_process_queue_defaults_to_one_worker_per_core(self) -> Any:
        q = ProcessQueue(returnFailure=True)
        self.addCleanup(q.shutdown)
        self.assertEqual(len(q), ProcessQueue.cores())
        self.assertEqual((yield q.call(h.add, 1, 2)), 3)

    @inlineCallbacks
    def test_crash_workers(self) -> Any:
        q = ProcessQueue(2, returnFailure=True)
        workers = q.workers()
        d = q.call(time.sleep, 30)
        caught: list[Any] = []
        d.addErrback(caught.append)
        yield deferLater(reactor, 0.1, lambda: None)
        unfinished = yield q.crashWorkers()
        self.assertEqual(sorted(len(u) for u in unfinished), [0, 1])
        self.assertEqual(len(q), 0)
        yield q.shutdown()
        yield defer.gatherResults([w.waitForExit() for w in workers])
        self.assertIsInstance(caught[0].value, errors.TaskCancelled)


def test_a_child_whose_loop_breaks_exits_with_its_error_not_its_alarm(tmp_path: Any) -> None:
    """
    The child's loop raising outside any call, with results held (the timer
    armed): the child exits with the error, not killed by its own SIGALRM.
    """
    script = tmp_path / "broken_loop.py"
    script.write_text(
        textwrap.dedent(
            """
            import signal, socket
            from asynqueue._process import _child

            mine, theirs = socket.socketpair()

            def serve(self):
                signal.setitimer(signal.ITIMER_REAL, 30)  # (as a held result does)
                raise RuntimeError("the loop broke")

            _child.ChildLoop.serve = serve
            try:
                _child.main([str(mine.fileno())])
            except RuntimeError as e:
                print("raised", e)
            print("armed", signal.getitimer(signal.ITIMER_REAL)[0])
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["raised the loop broke", "armed 0.0"], proc.stdout

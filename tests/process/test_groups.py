"""
Groups: a process queue's backlog of plain calls runs a group of calls per
task (`asynqueue._core._dispatch`, *Groups*), each call with the outcome it
would have had alone. Real child processes throughout.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import weakref
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from asynqueue import errors
from asynqueue._core._window import GROUP_MAX, GROUP_WINDOW
from asynqueue._wire._group import runCalls
from asynqueue.process import ProcessQueue

from ..helpers import process as h
from ..helpers.common import collect, waitUntil, watchGroups


def lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


class GroupTests(TestCase):
    timeout = 30

    def makeQueue(self, workers: int, **kw: Any) -> ProcessQueue:
        q = ProcessQueue(workers, returnFailure=True, **kw)
        self.addCleanup(q.shutdown)
        return q

    def folder(self) -> str:
        path = tempfile.mkdtemp(prefix="aq-groups")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    @inlineCallbacks
    def test_a_backlog_of_plain_calls_runs_in_groups_each_call_its_own_result(self) -> Any:
        q = self.makeQueue(2)
        yield q.call(h.add, 0, 0)  # (the calls so far say how long one takes)
        groups = watchGroups(q)
        results = yield defer.gatherResults([q.call(h.add, i, 1) for i in range(3000)])
        self.assertEqual(results, [i + 1 for i in range(3000)])
        self.assertTrue(groups, "no group was formed")
        self.assertGreater(sum(map(len, groups)), 1500)  # (most calls went in groups)
        self.assertLessEqual(max(map(len, groups)), GROUP_MAX)
        self.assertTrue(all(f is h.add for group in groups for f in group))

    @inlineCallbacks
    def test_a_worker_holds_a_few_groups_at_a_time(self) -> Any:
        # A window of groups would commit far more calls to one worker than
        # a window of calls (every series among them held): GROUP_WINDOW.
        q = self.makeQueue(2)
        yield q.call(h.add, 0, 0)
        most = [0]
        for slot in q._dispatcher._slotList:
            worker = slot.worker
            run = worker.run

            def counting(task: Any, run: Any = run, worker: Any = worker) -> Any:
                ready = run(task)
                if task.callTuple[0] is runCalls:
                    most[0] = max(most[0], len(worker._current.inflight))
                return ready

            worker.run = counting  # type: ignore[method-assign]
        results = yield defer.gatherResults([q.call(h.add, i, 1) for i in range(5000)])
        self.assertEqual(results, [i + 1 for i in range(5000)])
        self.assertGreaterEqual(most[0], 2)
        self.assertLessEqual(most[0], GROUP_WINDOW + 1)

    @inlineCallbacks
    def test_a_burst_and_its_groups_go_without_the_garbage_collector(self) -> Any:
        # No reference cycle keeps a done group (and the calls in it) alive:
        # a burst holds full collections off, so a cycle would keep every
        # call of a million-call burst until it ends.
        q = self.makeQueue(1)
        yield q.call(h.add, 0, 0)
        groups = watchGroups(q)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        done: Deferred[None] = Deferred()
        left = [500]

        def one(_: Any) -> None:
            left[0] -= 1
            if not left[0]:
                done.callback(None)

        refs = []
        for i in range(500):
            d = q.call(h.add, i, 1)
            d.addCallback(one)
            refs.append(weakref.ref(d))
        del d
        yield done
        yield q.call(h.add, 0, 0)  # (the last group's report has been handled)
        self.assertTrue(groups)
        self.assertEqual(sum(ref() is not None for ref in refs), 0)

    @inlineCallbacks
    def test_calls_with_queue_options_never_go_in_a_group(self) -> Any:
        q = self.makeQueue(2)
        yield q.call(h.add, 0, 0)
        groups = watchGroups(q)
        calls = [q.call(h.add, i, 1) for i in range(600)]
        for i in range(600):
            calls.append(q.call(h.pid, niceness=5))
            calls.append(q.call(h.add, i, 2, timeout=10))
            calls.append(q.call(h.length, b"x", raw=True))
            calls.append(q.call(h.nothing, doNext=True))
        results = yield defer.gatherResults(calls)
        self.assertEqual(results[:600], [i + 1 for i in range(600)])
        self.assertTrue(groups)
        self.assertEqual({f for group in groups for f in group}, {h.add})
        self.assertLessEqual(sum(map(len, groups)), 600)  # (only the plain ``add(i, 1)``)

    @inlineCallbacks
    def test_series_in_groups_still_run_in_sequence(self) -> Any:
        # 12 series of 40 calls, interleaved, on two workers: each call of a
        # series starts after the one before it ended, in submission order.
        path = os.path.join(self.folder(), "log")
        q = self.makeQueue(2)
        yield q.call(h.add, 0, 0)
        groups = watchGroups(q)
        calls = [
            q.call(h.logRun, path, f"s{k}-{i}", series=f"s{k}")
            for i in range(40)
            for k in range(12)
        ]
        yield defer.gatherResults(calls)
        self.assertTrue(any(len(g) > 2 for g in groups), groups)  # (series side by side)
        self.assertSeriesInSequence(path, 12, 40)

    @inlineCallbacks
    def seriesBehindBusy(
        self, q: ProcessQueue, folder: str, series: int, rounds: int, at: int
    ) -> Any:
        """
        Behind a busy call (0.3 s, running when this queues the rest), a
        call of each of *series* series, an iterator call (``squares(3)``)
        before the one of series *at*, then *rounds* - 1 more rounds of
        them; fires with ``(calls, stream)`` once the busy call is done.
        """
        path = os.path.join(folder, "log")
        busy = q.call(h.logRun, os.path.join(folder, "busy"), "busy", 0.3)
        yield waitUntil(lambda: "busy" in lines(os.path.join(folder, "busy")))
        calls = [q.call(h.logRun, path, f"s{k}-0", series=f"s{k}") for k in range(at)]
        stream = q.call(h.squares, 3)
        calls += [q.call(h.logRun, path, f"s{k}-0", series=f"s{k}") for k in range(at, series)]
        calls += [
            q.call(h.logRun, path, f"s{k}-{i}", series=f"s{k}")
            for i in range(1, rounds)
            for k in range(series)
        ]
        yield busy
        return calls, stream

    def assertSeriesInSequence(self, path: str, series: int, calls: int) -> None:
        """In *path*'s log (``logRun``), each series' calls ran one at a time, in order."""
        with open(path) as f:
            events = [line.split() for line in f.read().splitlines()]
        for k in range(series):
            mine = [(kind, tag) for kind, tag in events if tag.startswith(f"s{k}-")]
            expected = [(kind, f"s{k}-{i}") for i in range(calls) for kind in ("b", "e")]
            self.assertEqual(mine, expected)

    @inlineCallbacks
    def test_calls_of_a_series_a_group_gives_back_go_before_the_later_ones(self) -> Any:
        # Queued behind a busy call, one group forms: a call of each of 12
        # series, with an iterator result among them. The group ends at the
        # iterator; the calls of series behind it come back to the queue,
        # and each series still runs in submission order, before its later
        # calls (each series is held for the group until its call leaves it).
        folder = self.folder()
        q = self.makeQueue(1)
        yield defer.gatherResults([q.call(h.add, i, 0) for i in range(200)])  # (calls are quick)
        groups = watchGroups(q)
        calls, stream = yield self.seriesBehindBusy(q, folder, 12, 10, at=6)
        yield defer.gatherResults(calls)
        run = [h.logRun] * 6 + [h.squares] + [h.logRun] * 6
        self.assertTrue(any(g[:13] == run for g in groups), groups)
        self.assertEqual((yield collect((yield stream))), [0, 1, 4])
        self.assertSeriesInSequence(os.path.join(folder, "log"), 12, 10)

    @inlineCallbacks
    def test_series_keep_their_order_as_groups_end_early_on_two_workers(self) -> Any:
        # As timing has it: two workers, groups that end early at iterator
        # results here and there, series taken by both workers in turn.
        path = os.path.join(self.folder(), "log")
        q = self.makeQueue(2)
        yield q.call(h.add, 0, 0)
        calls = []
        for i in range(60):
            if i % 20 == 5:
                calls.append(q.call(h.squares, 3))
            for k in range(4):
                calls.append(q.call(h.logRun, path, f"s{k}-{i}", series=f"s{k}"))
        results = yield defer.gatherResults(calls)
        for result in results:
            if not isinstance(result, str):
                self.assertEqual((yield collect(result)), [0, 1, 4])
        self.assertSeriesInSequence(path, 4, 60)

    @inlineCallbacks
    def test_a_series_given_back_by_a_group_is_not_overtaken_by_a_later_group(self) -> Any:
        # Behind a busy call: a full group of 32 series' first calls, an
        # iterator result 11th; the worker's window left wide open (its run
        # times not noted: white-box), so the next groups go out while the
        # first runs. The first ends at the iterator and gives back 21
        # series' calls: no later group may carry those series' next calls.
        folder = self.folder()
        q = self.makeQueue(1)
        yield defer.gatherResults([q.call(h.add, i, 0) for i in range(200)])  # (calls are quick)
        worker = q.workers()[0]
        worker._noteRuns = lambda runs, now: None  # type: ignore[method-assign]
        groups = watchGroups(q)
        calls, stream = yield self.seriesBehindBusy(q, folder, 40, 4, at=10)
        yield defer.gatherResults(calls)
        self.assertEqual((yield collect((yield stream))), [0, 1, 4])
        self.assertEqual(groups[0][:12], [h.logRun] * 10 + [h.squares, h.logRun])
        self.assertGreater(len(groups), 2)
        self.assertSeriesInSequence(os.path.join(folder, "log"), 40, 4)

    @inlineCallbacks
    def test_a_call_in_a_group_fails_as_it_would_alone(self) -> Any:
        q = self.makeQueue(2)
        alone = yield q.call(h.raiseKeyError, "k0").addErrback(lambda f: f.value)  # (alone)
        groups = watchGroups(q)
        calls = [
            q.call(h.raiseKeyError, f"k{i}") if i % 10 == 3 else q.call(h.add, i, 0)
            for i in range(800)
        ]
        outcomes = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertTrue(any(h.raiseKeyError in group for group in groups))
        for i, (ok, value) in enumerate(outcomes):
            if i % 10 == 3:
                self.assertFalse(ok)
                self.assertIs(type(value.value), type(alone))
                self.assertEqual(value.value.args, (f"k{i}",))
                self.assertIn(f"KeyError: 'k{i}'", value.value.remoteTraceback)
            else:
                self.assertEqual((ok, value), (True, i))

    @inlineCallbacks
    def test_an_unpicklable_result_in_a_group_is_its_calls_error_alone(self) -> Any:
        q = self.makeQueue(1)
        alone = yield q.call(h.unpicklableResult).addErrback(lambda f: f.value)
        groups = watchGroups(q)
        calls = [
            q.call(h.unpicklableResult) if i % 50 == 7 else q.call(h.add, i, 0) for i in range(400)
        ]
        outcomes = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertTrue(any(h.unpicklableResult in group for group in groups))
        for i, (ok, value) in enumerate(outcomes):
            if i % 50 == 7:
                self.assertFalse(ok)
                self.assertEqual(str(value.value), str(alone))
                self.assertIn("cannot pickle the result of unpicklableResult", str(value.value))
            else:
                self.assertEqual((ok, value), (True, i))

    @inlineCallbacks
    def test_an_iterator_result_in_a_group_streams_and_the_calls_after_it_still_run(self) -> Any:
        q = self.makeQueue(1)
        yield q.call(h.add, 0, 0)
        groups = watchGroups(q)
        calls = [
            q.call(h.squares, 5 + i % 3) if i % 40 == 21 else q.call(h.add, i, 0)
            for i in range(400)
        ]
        results = yield defer.gatherResults(calls)
        self.assertTrue(any(h.squares in group for group in groups))
        for i, result in enumerate(results):
            if i % 40 == 21:
                items = []
                for d in result:
                    items.append((yield d))
                self.assertEqual(items, [k * k for k in range(5 + i % 3)])
            else:
                self.assertEqual(result, i)

    @inlineCallbacks
    def test_a_crash_in_a_group_runs_no_finished_call_again(self) -> Any:
        # Each call of a group appends a line as it runs: after one of them
        # kills the child, every other has run exactly once (the outcomes
        # held in the child came through the arena), and only the culprit
        # fails, once it has killed a child running alone too.
        path = os.path.join(self.folder(), "lines")
        q = self.makeQueue(1)
        yield q.call(h.add, 0, 0)
        groups = watchGroups(q)
        texts = [f"t{i}" for i in range(300)]
        calls = [q.call(h.appendLine, path, text) for text in texts[:150]]
        crash = q.call(h.exitWith, 3)
        calls += [q.call(h.appendLine, path, text) for text in texts[150:]]
        self.assertEqual((yield defer.gatherResults(calls)), texts)
        with self.assertRaises(errors.WorkerLost):
            yield crash
        self.assertTrue(any(h.exitWith in group for group in groups), groups)
        self.assertEqual(sorted(lines(path)), sorted(texts))

    @inlineCallbacks
    def test_the_calls_behind_a_long_one_in_a_group_go_to_the_other_worker(self) -> Any:
        # A group holding a 1 s call: the calls after it in the group come
        # back to the queue (after HANDBACK_PATIENCE) and the other worker
        # runs them, so every other call is done before the long one.
        path = os.path.join(self.folder(), "log")
        q = self.makeQueue(2)
        yield q.call(h.add, 0, 0)
        groups = watchGroups(q)
        order: list[str] = []

        def note(result: Any, tag: str) -> Any:
            order.append(tag)
            return result

        calls = [q.call(h.add, i, 0).addCallback(note, f"a{i}") for i in range(200)]
        calls.append(q.call(h.logRun, path, "long", 1.0).addCallback(note, "long"))
        calls += [q.call(h.add, i, 0).addCallback(note, f"b{i}") for i in range(200)]
        yield defer.gatherResults(calls)
        self.assertTrue(any(h.logRun in group and group[-1] is h.add for group in groups), groups)
        self.assertEqual(order[-1], "long")

    @inlineCallbacks
    def test_a_cancelled_call_of_a_group_not_run_yet_never_runs(self) -> Any:
        folder = self.folder()
        path, targetPath = os.path.join(folder, "log"), os.path.join(folder, "target")
        q = self.makeQueue(1)
        yield q.call(h.add, 0, 0)
        yield defer.gatherResults([q.call(h.add, i, 0) for i in range(200)])  # (calls are quick)
        groups = watchGroups(q)
        busy = q.call(h.logRun, path, "busy", 0.3)
        yield waitUntil(lambda: "busy" in lines(path))
        # Queued behind the busy call: when it is done, one group.
        blocker = q.call(h.logRun, path, "blocker", 0.5)
        target = q.call(h.appendLine, targetPath, "target")
        rest = [q.call(h.add, i, 1) for i in range(20)]
        yield busy
        yield waitUntil(lambda: lines(path).count("blocker") == 1)
        self.assertTrue(any(g[:2] == [h.logRun, h.appendLine] for g in groups), "not in one group")
        target.cancel()
        with self.assertRaises(CancelledError):
            yield target
        self.assertEqual((yield blocker), "blocker")
        self.assertEqual((yield defer.gatherResults(rest)), [i + 1 for i in range(20)])
        yield q.call(h.add, 0, 0)  # (anything still in the child has run by now)
        self.assertEqual(lines(targetPath), [])

    @inlineCallbacks
    def test_groups_in_flight_on_a_detached_worker_are_run_again_elsewhere(self) -> Any:
        q = self.makeQueue(2)
        yield q.call(h.add, 0, 0)
        groups = watchGroups(q)
        calls = [q.call(h.add, i, 1) for i in range(2000)]
        yield deferLater(reactor, 0.01, lambda: None)  # (a moment into the burst)
        workers = q.workers()
        yield q.detachWorker(workers[0], reassign=True, crash=True)
        self.assertEqual((yield defer.gatherResults(calls)), [i + 1 for i in range(2000)])
        self.assertTrue(groups)

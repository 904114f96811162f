"""A series runs in sequence, on real thread and process workers."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.trial.unittest import TestCase

from asynqueue import ThreadQueue
from asynqueue.process import ProcessQueue

from ..helpers import process as h


class _SeriesTests(TestCase):
    """The tests; a subclass says which queue they run on."""

    timeout = 60

    def makeQueue(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.q = self.makeQueue()
        self.addCleanup(self.q.shutdown)
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        self.log = os.path.join(self.folder, "log")

    def call(self, series: Any, number: int, seconds: float) -> Any:
        return self.q.call(h.logRun, self.log, f"{series}:{number}", seconds, series=series)

    def readLog(self) -> tuple[dict[Any, int], dict[Any, list[int]]]:
        """Per series: the most of its tasks running at once, and its start order."""
        running: dict[str, int] = {}
        most: dict[str, int] = {}
        starts: dict[str, list[int]] = {}
        with open(self.log) as f:
            for line in f:  # "b series:n" or "e series:n", in the order they happened
                event, tag = line.split()
                series, number = tag.split(":")
                if event == "b":
                    running[series] = running.get(series, 0) + 1
                    most[series] = max(most.get(series, 0), running[series])
                    starts.setdefault(series, []).append(int(number))
                else:
                    running[series] -= 1
        return most, starts

    @inlineCallbacks
    def test_a_series_runs_one_task_at_a_time_in_submission_order(self) -> Any:
        rng = random.Random(13)
        ds = []
        for i in range(60):
            ds.append(self.call("s", i, rng.choice([0.0, 0.0, 0.002])))
            if i % 3 == 0:  # plain calls for the other workers meanwhile
                ds.append(self.call(None, i, 0.001))
        results = yield DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        self.assertEqual([value for _, value in results][:2], ["s:0", "None:0"])
        most, starts = self.readLog()
        self.assertEqual(most["s"], 1)
        self.assertEqual(starts["s"], list(range(60)))
        self.assertEqual(len(starts["None"]), 20)

    @inlineCallbacks
    def test_two_series_run_side_by_side_each_in_sequence(self) -> Any:
        # The first task of each series waits until the other's first task
        # has started: both return True only if the two series ran at once.
        a0 = self.q.call(h.meet, self.folder, "a", "b", series="a")
        b0 = self.q.call(h.meet, self.folder, "b", "a", series="b")
        ds = [self.call(s, i, 0.001) for i in range(1, 20) for s in "ab"]
        met = yield DeferredList([a0, b0], fireOnOneErrback=True, consumeErrors=True)
        self.assertEqual([value for _, value in met], [True, True])
        yield DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        most, starts = self.readLog()
        for series in "ab":
            self.assertEqual(most[series], 1)
            self.assertEqual(starts[series], list(range(1, 20)))

    @inlineCallbacks
    def test_a_retried_task_keeps_its_place_at_the_head_of_its_series(self) -> Any:
        # s:0 times out the first time; the calls behind it (perhaps already
        # waiting in the same worker) start only after its second run.
        first = self.q.call(h.slowTheFirstTime, self.log, "s:0", 5, series="s", timeout=0.5)
        ds = [first] + [self.call("s", i, 0.0) for i in range(1, 6)]
        results = yield DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        self.assertEqual([value for _, value in results], [f"s:{i}" for i in range(6)])
        _, starts = self.readLog()
        self.assertEqual(starts["s"], [0, 0, 1, 2, 3, 4, 5])

    @inlineCallbacks
    def test_many_series_each_in_order_and_nothing_left_behind(self) -> Any:
        # 400 series of 10 tasks each, queued at once: every series finishes
        # its tasks in submission order, and once all are done the queue
        # holds no series and its scheduler keeps no flow, nor index rows.
        finished: dict[int, list[int]] = {}
        ds = []
        for i in range(4000):
            d = self.q.call(h.add, i, 0, series=i % 400)
            d.addCallback(lambda value: finished.setdefault(value % 400, []).append(value))
            ds.append(d)
        yield DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
        self.assertEqual(finished, {s: list(range(s, 4000, 400)) for s in range(400)})
        dispatcher = self.q._dispatcher
        scheduler = dispatcher.scheduler
        self.assertEqual(len(scheduler), 0)
        self.assertFalse(any(slot.held for slot in dispatcher.slots.values()))
        self.assertEqual(scheduler._held, {})
        self.assertEqual(scheduler._flows, {})
        self.assertEqual(len(scheduler._heads) + len(scheduler._run), 0)
        self.assertEqual(scheduler._heldHeads, [])
        self.assertEqual(scheduler._restrictedFlows, {})


class ThreadSeriesTests(_SeriesTests):
    def makeQueue(self) -> Any:
        return ThreadQueue(3, returnFailure=True)


class ProcessSeriesTests(_SeriesTests):
    def makeQueue(self) -> Any:
        return ProcessQueue(2, returnFailure=True)


del _SeriesTests

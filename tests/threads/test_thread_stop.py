"""ThreadWorker stop and crash with results still on their way to the reactor."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from asynqueue import ThreadWorker, errors
from asynqueue._core._task import Task

from ..helpers import conformance as hc
from ..helpers.common import collect


def blockUntilPosted(worker: ThreadWorker, limit: float = 10.0, count: int = 1) -> None:
    """Block the reactor thread until *worker*'s thread has posted *count* results."""
    deadline = time.monotonic() + limit
    while len(worker._outbox) < count:
        if time.monotonic() > deadline:
            raise AssertionError("the thread posted nothing")
        time.sleep(0.001)


class StopTests(TestCase):
    timeout = 15

    @inlineCallbacks
    def test_stop_delivers_an_iterator_result_in_hand(self) -> Any:
        w = ThreadWorker()
        task = Task(hc.countTo, (3,), {})
        w.run(task)
        stopped = w.stop()
        status, first = yield task.d
        self.assertEqual(status, "i")
        dr = yield first  # (a Deferred of the Deferator: its first batch is fetched)
        self.assertEqual((yield collect(dr)), [0, 1, 2])
        yield stopped
        # The thread has ended now: no more work.
        yield self.assertFailure(w.deferToThread(abs, -1), errors.ThreadError)

    @inlineCallbacks
    def test_crash_returns_a_finished_unreported_task_and_drops_its_result(self) -> Any:
        w = ThreadWorker()
        task = Task(hc.countTo, (3,), {})
        w.run(task)
        blockUntilPosted(w)
        self.assertIn(task, w.crash())
        yield deferLater(reactor, 0, lambda: None)  # (the flush the thread asked for)
        self.assertFalse(task.reported)

    @inlineCallbacks
    def test_a_crash_from_a_callback_stops_the_delivery_of_its_batch(self) -> Any:
        # Five results wait in one batch; the first one's callback crashes
        # the worker: the other four come back from crash() unfinished and
        # are never reported.
        w = ThreadWorker()
        tasks = [Task(abs, (-i,), {}) for i in range(1, 6)]
        for task in tasks:
            w.run(task)
        blockUntilPosted(w, count=5)
        unfinished: list[Task] = []
        reports: list[Any] = []
        tasks[0].d.addCallback(lambda report: unfinished.extend(w.crash()) or report)
        for task in tasks:
            task.d.addCallback(reports.append)
        yield deferLater(reactor, 0, lambda: None)  # (the flush the thread asked for)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(reports, [("r", 1)])
        self.assertEqual(unfinished, tasks[1:])
        self.assertFalse(any(task.reported for task in tasks[1:]))

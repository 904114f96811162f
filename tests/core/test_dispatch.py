"""
The dispatcher alone: hand-driven workers and a `Clock`, no real workers.

What happens to an attempt after it leaves the queue: its timer and the
worker's ``timedOut`` hook, retries and re-runs (and where they go back in
line), refusals on the spot and the pause after them, the patience with a
pipelining worker stuck in a long task, and detaching with reassignment.
Ordering and series rules are in test_queue and test_scheduler.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from asynqueue import TaskQueue, errors
from asynqueue._core._dispatch import MAX_LOSSES, MAX_TIMEOUTS, PIPELINE_PATIENCE, REFUSAL_PAUSE

from ..helpers.common import ManualWorker
from .test_queue import PipeliningWorker


def arg(task: Any) -> Any:
    """The first argument of *task*'s call: the tests' name for it."""
    return task.callTuple[1][0]


def identity(x: Any) -> Any:
    return x


class HookedWorker(ManualWorker):
    """A ManualWorker with a ``timedOut`` hook that frees it, as real workers do."""

    def __init__(self, name: str = "w") -> None:
        super().__init__(name=name)
        self.timedOutTasks: list[Any] = []

    def timedOut(self, task: Any) -> None:
        self.timedOutTasks.append(task)
        for i, (held, ready) in enumerate(self.current):
            if held is task:
                del self.current[i]
                ready.callback(None)
                return


class Refuser(ManualWorker):
    """Reports every task as not run, from within ``run`` (status d on the spot)."""

    def __init__(self, innocent: bool) -> None:
        super().__init__(name="refuser")
        self.innocent = innocent

    def run(self, task: Any) -> None:  # type: ignore[override]
        self.log.append(task)
        task.innocent = self.innocent
        task.callback(("d", "not now"))


class StartingWorker(PipeliningWorker):
    """A PipeliningWorker that reports when each task really starts."""

    reportsStart = True

    def finishOldest(self) -> None:
        task, _ = self.current.pop(0)
        task.callback(("r", arg(task)))


class DispatchTestCase(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.clock = Clock()

    def queue(self, *workers: Any, **kw: Any) -> TaskQueue:
        return TaskQueue(*workers, returnFailure=True, reactor=self.clock, **kw)

    def assertNoTimers(self) -> None:
        """Nothing left on the clock: no timer outlives the attempt it was for."""
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def captureLog(self) -> list[logging.LogRecord]:
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("asynqueue")
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        return records


class TimeoutTests(DispatchTestCase):
    def test_the_hook_frees_the_worker_for_the_retry_then_the_call_fails(self) -> None:
        w = HookedWorker()
        q = self.queue(w)
        d = q.call(identity, "a", timeout=2)
        first = w.log[0]
        self.clock.advance(1.99)
        self.assertEqual(w.timedOutTasks, [])
        self.clock.advance(0.02)
        self.assertEqual(w.timedOutTasks, [first])
        # Freed by its hook, the worker took the retry: a new attempt.
        self.assertEqual(len(w.log), 2)
        retry = w.log[1]
        self.assertIsNot(retry, first)
        self.assertEqual((first.attempt, retry.attempt), (1, 2))
        self.assertNoResult(d)
        self.clock.advance(2)
        self.assertEqual(w.timedOutTasks, [first, retry])
        failure = self.failureResultOf(d, errors.TimeoutError)
        self.assertIn(f"{MAX_TIMEOUTS} times", str(failure.value))
        self.assertEqual(len(w.log), MAX_TIMEOUTS)  # never a third attempt
        self.assertNoTimers()
        self.assertEqual(q.counts()["pending"], 0)

    def test_a_hook_that_raises_is_logged_and_the_call_still_retried(self) -> None:
        records = self.captureLog()

        class BadHook(ManualWorker):
            def timedOut(self, task: Any) -> None:
                raise RuntimeError("hook broke")

        bad, good = BadHook(name="bad"), ManualWorker(name="good")
        q = self.queue(bad)
        d = q.call(identity, "a", timeout=1)
        self.clock.advance(1)
        # Logged with the hook's exception.
        self.assertEqual(records[-1].levelno, logging.ERROR)
        exc_info = records[-1].exc_info
        assert exc_info is not None
        self.assertEqual(str(exc_info[1]), "hook broke")
        q.attachWorker(good)  # the bad one is still busy: the retry goes here
        self.assertEqual([arg(t) for t in good.log], ["a"])
        good.finish("r", "done")
        self.assertEqual(self.successResultOf(d), "done")

    def test_a_timeout_the_worker_reports_counts_like_the_queues_own(self) -> None:
        w = HookedWorker()
        q = self.queue(w)
        d = q.call(identity, "a", timeout=60)
        w.finish("t", None)
        self.assertEqual(len(w.log), 2)  # retried at once, on the worker now free
        w.finish("t", None)
        self.failureResultOf(d, errors.TimeoutError)
        self.assertEqual(w.timedOutTasks, [])  # it told us: no need to tell it
        self.assertNoTimers()

    def test_timeouts_and_losses_are_counted_apart(self) -> None:
        w = ManualWorker()
        q = self.queue(w)
        d = q.call(identity, "a", timeout=5)
        w.finish("t", None)
        w.finish("d", "connection lost")
        # One of each so far: neither limit is reached.
        self.assertNoResult(d)
        self.assertEqual([t.attempt for t in w.log], [1, 2, 3])
        w.finish("r", "third time")
        self.assertEqual(self.successResultOf(d), "third time")
        self.assertNoTimers()

    def test_a_result_in_time_cancels_the_timer(self) -> None:
        w = HookedWorker()
        q = self.queue(w)
        ds = [q.call(identity, i, timeout=3) for i in range(3)]
        for i in range(3):
            self.clock.advance(1)
            w.finish("r", i)
        self.assertNoTimers()
        self.clock.advance(10)
        self.assertEqual(w.timedOutTasks, [])
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])

    def test_each_attempt_gets_the_full_timeout(self) -> None:
        w = HookedWorker()
        q = self.queue(w)
        d = q.call(identity, "a", timeout=2)
        self.clock.advance(2)  # first attempt timed out; the retry starts now
        self.clock.advance(1.5)
        self.assertNoResult(d)
        w.finish("r", "in time")
        self.assertEqual(self.successResultOf(d), "in time")


class RetryTests(DispatchTestCase):
    def test_a_lost_call_is_rerun_on_a_new_attempt_before_later_calls(self) -> None:
        w = ManualWorker()
        q = self.queue(w)
        ds = [q.call(identity, x) for x in "abc"]
        w.finish("d", "child died")
        self.assertEqual([arg(t) for t in w.log], ["a", "a"])
        self.assertEqual(w.log[1].attempt, 2)
        while w.current:
            task = w.current[0][0]
            w.finish("r", arg(task))
        self.assertEqual([self.successResultOf(d) for d in ds], ["a", "b", "c"])

    def test_the_rerun_goes_to_a_ready_worker_and_a_second_loss_fails_the_call(self) -> None:
        w1, w2 = ManualWorker(name="w1"), ManualWorker(name="w2")
        q = self.queue(w1, w2)
        d = q.call(identity, "a")
        w1.finish("d", "first")
        # Reported before w1 was ready again: the idle w2 took the re-run.
        self.assertEqual([arg(t) for t in w2.log], ["a"])
        w2.finish("d", "second")
        failure = self.failureResultOf(d, errors.WorkerLost)
        self.assertIn(f"lost {MAX_LOSSES} times", str(failure.value))
        self.assertIn("second", str(failure.value))
        self.assertEqual(len(w1.log), 1)

    def test_retries_go_back_in_their_original_order(self) -> None:
        w1, w2 = ManualWorker(name="w1"), ManualWorker(name="w2")
        q = self.queue(w1, w2)
        ds = [q.call(identity, x) for x in "abcd"]
        (a, readyA), (b, readyB) = w1.current[0], w2.current[0]
        self.assertEqual((arg(a), arg(b)), ("a", "b"))
        # Both are lost, b first, while neither worker is ready yet.
        w2.current.clear()
        w1.current.clear()
        b.callback(("d", "gone"))
        a.callback(("d", "gone"))
        self.assertEqual(q.counts()["queued"], 4)
        # a was submitted first: it runs first, though it was lost last.
        readyB.callback(None)
        self.assertEqual(arg(w2.log[-1]), "a")
        readyA.callback(None)
        self.assertEqual(arg(w1.log[-1]), "b")
        for w in (w1, w2, w1, w2):
            if w.current:
                w.finish("r", arg(w.current[0][0]))
        self.assertEqual([self.successResultOf(d) for d in ds], list("abcd"))

    def test_a_late_result_after_the_final_failure_is_ignored(self) -> None:
        w = ManualWorker()
        q = self.queue(w)
        d = q.call(identity, "a", timeout=1)
        first = w.current[0][0]
        self.clock.advance(1)  # no hook: w still holds the first attempt
        w2 = ManualWorker(name="w2")
        q.attachWorker(w2)
        self.clock.advance(1)
        self.failureResultOf(d, errors.TimeoutError)
        seen: list[Any] = []
        d.addBoth(seen.append)
        first.callback(("r", "late"))
        w2.finish("r", "also late")
        self.assertEqual(seen, [None])  # nothing fired d again
        self.assertEqual(q.counts()["pending"], 0)


class RefusalTests(DispatchTestCase):
    def test_an_innocent_refusal_waits_out_the_pause_and_costs_nothing(self) -> None:
        w = Refuser(innocent=True)
        q = self.queue(w)
        d = q.call(identity, "a")
        self.assertEqual(len(w.log), 1)
        self.clock.advance(REFUSAL_PAUSE * 0.9)
        self.assertEqual(len(w.log), 1)  # resting
        self.clock.advance(REFUSAL_PAUSE * 0.2)
        self.assertEqual(len(w.log), 2)
        for _ in range(MAX_LOSSES + 3):
            self.clock.advance(REFUSAL_PAUSE)
        self.assertNoResult(d)  # never charged as lost
        q.detachWorker(w, crash=True)
        self.assertNoTimers()  # the pause ended with the detach

    def test_a_charged_refusal_is_a_loss(self) -> None:
        w = Refuser(innocent=False)
        q = self.queue(w)
        d = q.call(identity, "a")
        self.assertNoResult(d)
        self.clock.advance(REFUSAL_PAUSE)
        failure = self.failureResultOf(d, errors.WorkerLost)
        self.assertIn("not now", str(failure.value))
        self.assertEqual(len(w.log), MAX_LOSSES)

    def test_another_worker_takes_a_refused_call_during_the_pause(self) -> None:
        refuser, other = Refuser(innocent=True), ManualWorker(name="other")
        q = self.queue(refuser)
        d = q.call(identity, "a")
        q.attachWorker(other)
        self.assertEqual([arg(t) for t in other.log], ["a"])
        other.finish("r", "a")
        self.assertEqual(self.successResultOf(d), "a")
        self.assertEqual(len(refuser.log), 1)


class PatienceTests(DispatchTestCase):
    """A pipelining worker that reports starts gets no more work behind a long task."""

    def test_no_more_tasks_behind_a_task_running_past_the_patience(self) -> None:
        w = StartingWorker(5)
        q = self.queue(w)
        q.call(identity, "long")
        w.current[0][0].started()
        self.clock.advance(PIPELINE_PATIENCE * 2)
        ds = [q.call(identity, x) for x in "xy"]
        self.assertEqual([arg(t) for t in w.log], ["long"])
        self.assertEqual(q.counts()["queued"], 2)
        # Another worker takes them meanwhile...
        other = ManualWorker(name="other")
        q.attachWorker(other)
        self.assertEqual([arg(t) for t in other.log], ["x"])
        q.detachWorker(other, reassign=True, crash=True)
        # ... and once the long task is done, the pipelining worker goes on.
        w.finishOldest()
        self.assertEqual([arg(t) for t in w.log], ["long", "x", "y"])
        while w.current:
            w.finishOldest()
        self.assertEqual([self.successResultOf(d) for d in ds], ["x", "y"])

    def test_more_tasks_within_the_patience(self) -> None:
        w = StartingWorker(5)
        q = self.queue(w)
        q.call(identity, "short")
        w.current[0][0].started()
        self.clock.advance(PIPELINE_PATIENCE / 2)
        q.call(identity, "next")
        self.assertEqual([arg(t) for t in w.log], ["short", "next"])

    def test_a_task_not_started_yet_does_not_count_as_long(self) -> None:
        w = StartingWorker(5)
        q = self.queue(w)
        q.call(identity, "waiting")
        self.clock.advance(PIPELINE_PATIENCE * 100)
        q.call(identity, "next")
        self.assertEqual([arg(t) for t in w.log], ["waiting", "next"])

    def test_a_worker_that_does_not_report_starts_is_never_held_back(self) -> None:
        w = PipeliningWorker(5)
        q = self.queue(w)
        q.call(identity, "first")
        self.clock.advance(PIPELINE_PATIENCE * 100)
        q.call(identity, "second")
        self.assertEqual([arg(t) for t in w.log], ["first", "second"])

    def test_a_timeout_counts_from_the_reported_start(self) -> None:
        w = StartingWorker(5)
        q = self.queue(w)
        q.call(identity, "ahead")
        d = q.call(identity, "timed", timeout=1)
        self.clock.advance(3)  # still waiting behind "ahead": no timeout
        self.assertNoResult(d)
        w.finishOldest()
        w.current[0][0].started()
        self.clock.advance(0.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(len(w.log), 3)  # timed out and retried
        self.assertEqual(arg(w.log[2]), "timed")


class DetachTests(DispatchTestCase):
    def test_reassigned_calls_go_first_in_their_original_order(self) -> None:
        w1 = PipeliningWorker(3, "w1")
        q = self.queue(w1)
        ds = [q.call(identity, x) for x in "abcde"]
        self.assertEqual([arg(t) for t in w1.log], ["a", "b", "c"])
        self.assertEqual(self.successResultOf(q.detachWorker(w1, reassign=True, crash=True)), [])
        self.assertEqual(q.counts()["queued"], 5)
        w2 = ManualWorker(name="w2")
        q.attachWorker(w2)
        while w2.current:
            w2.finish("r", arg(w2.current[0][0]))
        self.assertEqual([arg(t) for t in w2.log], list("abcde"))
        self.assertEqual([self.successResultOf(d) for d in ds], list("abcde"))

    def test_a_reassigned_call_is_not_charged_and_its_timer_goes(self) -> None:
        w1 = ManualWorker(name="w1")
        q = self.queue(w1)
        d = q.call(identity, "a", timeout=5)
        self.clock.advance(3)
        q.detachWorker(w1, reassign=True, crash=True)
        self.assertNoTimers()
        w2 = ManualWorker(name="w2")
        q.attachWorker(w2)
        self.clock.advance(3)  # 6 s since the first attempt, 3 since this one
        self.assertNoResult(d)
        # Being reassigned was no loss: it may still be lost once.
        w2.finish("d", "gone")
        self.assertNoResult(d)
        w2.finish("r", "fine")
        self.assertEqual(self.successResultOf(d), "fine")
        self.assertNoTimers()

    def test_a_graceful_stop_that_leaves_tasks_unreported_reassigns_them(self) -> None:
        w1 = ManualWorker(name="w1")  # its stop() fires at once, its task unfinished
        q = self.queue(w1)
        d = q.call(identity, "a")
        self.assertEqual(self.successResultOf(q.detachWorker(w1, reassign=True)), [])
        self.assertTrue(w1.stopped)
        self.assertFalse(w1.crashed)
        w2 = ManualWorker(name="w2")
        q.attachWorker(w2)
        w2.finish("r", "a")
        self.assertEqual(self.successResultOf(d), "a")

    def test_a_worker_whose_ready_deferred_fails_is_detached_and_its_calls_reassigned(
        self,
    ) -> None:
        records = self.captureLog()

        class Broken(ManualWorker):
            def run(self, task: Any) -> Deferred[None]:
                self.log.append(task)
                self.current.append((task, None))
                return defer.fail(RuntimeError("ready broke"))

        broken, spare = Broken(name="broken"), ManualWorker(name="spare")
        q = self.queue(broken)
        d = q.call(identity, "a")
        self.assertTrue(broken.crashed)
        self.assertEqual(q.workers(), [])
        self.assertIn("ready broke", records[0].getMessage())
        q.attachWorker(spare)
        spare.finish("r", "a")
        self.assertEqual(self.successResultOf(d), "a")

    def test_a_worker_whose_run_raises_fails_that_call_only(self) -> None:
        class Flaky(ManualWorker):
            def run(self, task: Any) -> Deferred[None]:
                if arg(task) == "bad":
                    raise ValueError("cannot take it")
                return super().run(task)

        w = Flaky()
        q = self.queue(w)
        bad = q.call(identity, "bad")
        good = q.call(identity, "good")
        self.assertIn("cannot take it", str(self.failureResultOf(bad, ValueError).value))
        w.finish("r", "good")
        self.assertEqual(self.successResultOf(good), "good")
        self.assertEqual(q.workers(), [w])

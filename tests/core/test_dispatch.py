"""
The `Dispatcher` alone: hand-driven in-memory workers and a `Clock`, no
`TaskQueue` and no real workers.

How calls meet workers (the fast path of a new call, the passes, the feed of
a lone pipelining worker, the stall rule, series held and released), and what
happens to an attempt after it leaves: its report (a result, an error through
the queue's policy, a late one dropped), its timer and the worker's
``timedOut`` hook, retries and re-runs (and where they go back in line),
refusals on the spot and the pause after them, cancelling, and detaching with
reassignment. The scheduler's ordering rules are in test_scheduler.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from asynqueue import errors
from asynqueue._core._calls import _Call, _Slot, takeQueueOptions
from asynqueue._core._dispatch import (
    HANDBACK_PATIENCE,
    MAX_LOSSES,
    MAX_TIMEOUTS,
    PIPELINE_PATIENCE,
    REFUSAL_PAUSE,
    Dispatcher,
)
from asynqueue._core._task import Task
from asynqueue._support._status import Status

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


class InOrderWorker(PipeliningWorker):
    """A PipeliningWorker that runs its tasks one at a time, oldest first."""

    def finishOldest(self, status: Any = "r") -> Task:
        task, _ = self.current.pop(0)
        task.callback((status, arg(task)))
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.callback(None)
        return task


class DispatchTestCase(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.clock = Clock()
        # What reached the policy (the queue's taskDone), in order.
        self.reports: list[tuple[Any, Any]] = []
        self.dispatcher = Dispatcher(self.clock, self.taskDone)
        self.dispatcher.plainResults = True

    def taskDone(self, statusResult: tuple[Any, Any], task: Task, *, call: _Call) -> Any:
        """A small policy: a Failure for an error, the result for the rest."""
        self.reports.append(statusResult)
        status, result = statusResult
        if status is Status.ERROR:
            return result if isinstance(result, Failure) else Failure(RuntimeError(result))
        return None if status is Status.NONE else result

    def attach(self, *workers: Any) -> list[_Slot]:
        """Attach *workers*, ready at once (a queue replays its updates first)."""
        slots = [self.dispatcher.attach(w) for w in workers]
        for slot in slots:
            self.dispatcher.workerReady(slot)
        return slots

    def call(self, f: Any, *args: Any, **kw: Any) -> _Call:
        """Submit ``f(*args)`` with the queue keywords *kw*, as `TaskQueue.call` does."""
        own = dict(kw)
        call = _Call(f, args, own or None, self.dispatcher.canceller)
        if own:
            takeQueueOptions(call, own, True)
        return self.dispatcher.submit(call)

    def queued(self) -> int:
        return len(self.dispatcher.scheduler)

    def pending(self) -> int:
        return len(self.dispatcher.pending)

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


class ReportTests(DispatchTestCase):
    """A finished attempt: what its report does to the call and the worker."""

    def test_a_plain_result_fires_the_call_without_the_policy(self) -> None:
        w = ManualWorker()
        (slot,) = self.attach(w)
        d = self.call(identity, "a")
        self.assertEqual(len(slot.inflight), 1)
        w.finish("r", "done")
        self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(self.reports, [])
        self.assertEqual((self.pending(), slot.inflight), (0, {}))

    def test_statuses_as_members_letters_and_the_originals_bytes(self) -> None:
        w = ManualWorker()
        self.attach(w)
        for code, expected in (
            (Status.RESULT, 1),
            ("r", 2),
            (b"r", 3),
            (Status.NONE, None),
            (b"n", None),
        ):
            d = self.call(identity, expected)
            w.finish(code, expected)
            self.assertEqual(self.successResultOf(d), expected, code)
        # A bytes timeout is a timeout: retried, not given to the policy.
        d = self.call(identity, "t")
        w.finish(b"t", None)
        self.assertEqual([t.attempt for t in w.log[-2:]], [1, 2])
        w.finish("r", "t")
        self.assertEqual(self.successResultOf(d), "t")
        self.assertEqual(self.reports, [])

    def test_without_plain_results_every_result_goes_through_the_policy(self) -> None:
        self.dispatcher.plainResults = False
        w = ManualWorker()
        self.attach(w)
        d1, d2 = self.call(identity, "a"), self.call(identity, "b")
        w.finish("r", "a")
        w.finish(b"n", "ignored")
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), ("a", None))
        self.assertEqual(self.reports, [(Status.RESULT, "a"), (Status.NONE, "ignored")])
        self.assertIs(self.reports[1][0], Status.NONE)  # read from the bytes

    def test_an_error_and_an_unknown_status_go_through_the_policy(self) -> None:
        w = ManualWorker()
        self.attach(w)
        d1, d2 = self.call(identity, "a"), self.call(identity, "b")
        w.finish("e", "it broke")
        w.finish("x", "what?")
        self.assertIn("it broke", str(self.failureResultOf(d1, RuntimeError).value))
        self.assertEqual(self.successResultOf(d2), "what?")
        self.assertEqual(self.reports, [(Status.ERROR, "it broke"), ("x", "what?")])

    def test_a_policy_that_raises_fails_that_call_only(self) -> None:
        def broken(statusResult: Any, task: Task, *, call: _Call) -> Any:
            raise ValueError("policy broke")

        self.dispatcher.taskDone = broken
        w = ManualWorker()
        self.attach(w)
        d1, d2 = self.call(identity, "a"), self.call(identity, "b")
        w.finish("e", "x")
        w.finish("r", "b")
        self.failureResultOf(d1, ValueError)
        self.assertEqual(self.successResultOf(d2), "b")

    def test_a_deferred_result_is_chained_and_cancelled_with_the_call(self) -> None:
        w = ManualWorker()
        self.attach(w)
        d = self.call(identity, "a")
        cancelled: list[Any] = []
        later: Deferred[Any] = Deferred(cancelled.append)
        w.finish("r", later)
        self.assertNoResult(d)
        self.assertEqual(self.pending(), 0)  # done as far as the dispatcher goes
        d.cancel()
        self.assertEqual(cancelled, [later])
        self.failureResultOf(d, CancelledError)

    def test_a_report_on_an_abandoned_attempt_is_dropped(self) -> None:
        w = ManualWorker()
        self.attach(w)
        d = self.call(identity, "a", timeout=1)
        first = w.current[0][0]
        self.clock.advance(1)  # no hook: the first attempt is given up on
        failed: Deferred[Any] = defer.fail(RuntimeError("its worker crashed"))
        first.callback(("r", failed))  # late, and a failing Deferred at that
        self.assertIsNone(self.successResultOf(failed))  # handled: not logged as unhandled
        self.assertNoResult(d)

    def test_a_report_frees_the_worker_for_the_next_queued_call(self) -> None:
        w = ManualWorker()
        self.attach(w)
        ds = [self.call(identity, x) for x in "abc"]
        self.assertEqual(self.queued(), 2)
        for x in "abc":
            w.finish("r", x)
        self.assertEqual([self.successResultOf(d) for d in ds], list("abc"))
        self.assertEqual([arg(t) for t in w.log], list("abc"))

    def test_drained_fires_once_every_call_has_reported(self) -> None:
        w = ManualWorker()
        self.attach(w)
        self.call(identity, "a")
        self.call(identity, "b")
        drained = self.dispatcher.drained()
        w.finish("r", "a")
        self.assertNoResult(drained)
        w.finish("r", "b")
        self.successResultOf(drained)


class OfferTests(DispatchTestCase):
    """Who gets a task: the fast path, the passes and the feed of a lone worker."""

    def test_a_new_call_goes_to_the_least_loaded_ready_worker_unqueued(self) -> None:
        w1, w2 = PipeliningWorker(3, "w1"), PipeliningWorker(3, "w2")
        self.attach(w1, w2)
        self.call(identity, "a")
        self.call(identity, "b")
        self.call(identity, "c")
        self.assertEqual(([arg(t) for t in w1.log], [arg(t) for t in w2.log]), (["a", "c"], ["b"]))
        self.assertEqual(self.queued(), 0)

    def test_a_call_waits_while_no_worker_is_ready_then_goes_in_order(self) -> None:
        w = ManualWorker()
        ds = [self.call(identity, x) for x in "ab"]
        self.assertEqual(self.queued(), 2)
        self.attach(w)
        self.assertEqual([arg(t) for t in w.log], ["a"])
        w.finish("r", "a")
        w.finish("r", "b")
        self.assertEqual([self.successResultOf(d) for d in ds], ["a", "b"])

    def test_the_lone_ready_worker_is_fed_until_full_in_submission_order(self) -> None:
        w = PipeliningWorker(4, "w")
        ds = [self.call(identity, i) for i in range(6)]
        self.attach(w)
        self.assertEqual([arg(t) for t in w.log], [0, 1, 2, 3])
        self.assertEqual(self.queued(), 2)
        w.finishAll()  # its waiter fires: fed again
        self.assertEqual([arg(t) for t in w.log], list(range(6)))
        w.finishAll()
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(6)))

    def test_a_retry_during_the_feed_goes_before_later_calls(self) -> None:
        w = InOrderWorker(2, "w")
        ds = [self.call(identity, x) for x in "abcd"]
        self.attach(w)
        self.assertEqual([arg(t) for t in w.log], ["a", "b"])
        w.finishOldest("d")  # a is lost: re-run before c and d
        self.assertEqual([arg(t) for t in w.log], ["a", "b", "a"])
        while w.current:
            w.finishOldest()
        self.assertEqual([self.successResultOf(d) for d in ds], list("abcd"))

    def test_a_worker_qualified_for_a_series_gets_its_calls(self) -> None:
        plain, special = ManualWorker(name="plain"), ManualWorker(("s",), name="special")
        self.attach(plain, special)
        self.call(identity, "other")  # the least loaded: plain (attached first)
        self.call(identity, "s1", series="s")
        self.assertEqual([arg(t) for t in plain.log], ["other"])
        self.assertEqual([arg(t) for t in special.log], ["s1"])


class SeriesTests(DispatchTestCase):
    """A series runs in sequence: held while one of its tasks is in flight."""

    def test_a_held_series_waits_for_its_running_task_on_another_worker(self) -> None:
        w1, w2 = ManualWorker(name="w1"), ManualWorker(name="w2")
        self.attach(w1, w2)
        d1 = self.call(identity, "s1", series="s")
        d2 = self.call(identity, "s2", series="s")
        d3 = self.call(identity, "x")
        self.assertTrue(self.dispatcher.scheduler.isHeld("s"))
        # w2 is free, but s2 must wait for s1: it gets x.
        self.assertEqual([arg(t) for t in w2.log], ["x"])
        w1.finish("r", "s1")
        self.assertEqual([arg(t) for t in w1.log], ["s1", "s2"])
        w1.finish("r", "s2")
        self.assertFalse(self.dispatcher.scheduler.isHeld("s"))
        w2.finish("r", "x")
        self.assertEqual([self.successResultOf(d) for d in (d1, d2, d3)], ["s1", "s2", "x"])

    def test_the_worker_running_in_order_takes_the_next_task_right_behind(self) -> None:
        w = InOrderWorker(3, "w")
        other = PipeliningWorker(3, "other")
        (slot,) = self.attach(w)
        ds = [self.call(identity, f"s{i}", series="s") for i in range(3)]
        self.attach(other)
        self.assertEqual([arg(t) for t in w.log], ["s0", "s1", "s2"])
        self.assertEqual(other.log, [])
        self.assertEqual(slot.held, {"s": 3})
        while w.current:
            w.finishOldest()
        self.assertEqual(slot.held, {})
        self.assertFalse(self.dispatcher.scheduler.isHeld("s"))
        self.assertEqual([self.successResultOf(d) for d in ds], ["s0", "s1", "s2"])

    def test_a_series_is_released_when_its_worker_is_detached(self) -> None:
        w1, w2 = ManualWorker(name="w1"), ManualWorker(name="w2")
        slot1, _ = self.attach(w1, w2)
        d1 = self.call(identity, "s1", series="s")
        d2 = self.call(identity, "s2", series="s")
        self.assertEqual(w2.log, [])
        self.dispatcher.detach(slot1, reassign=True, crash=True)
        # s1 goes first again, on w2; s2 still waits behind it.
        self.assertEqual([arg(t) for t in w2.log], ["s1"])
        w2.finish("r", "s1")
        w2.finish("r", "s2")
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), ("s1", "s2"))
        self.assertFalse(self.dispatcher.scheduler.isHeld("s"))
        self.assertEqual([slot.held for slot in self.dispatcher.slots.values()], [{}])

    def test_a_flow_call_does_not_hold_its_series(self) -> None:
        w1, w2 = ManualWorker(name="w1"), ManualWorker(name="w2")
        self.attach(w1, w2)
        for x in "ab":
            call = _Call(identity, (x,), None, self.dispatcher.canceller)
            call.series = "flow"
            call.inSequence = False
            self.dispatcher.submit(call)
        self.assertEqual(([arg(t) for t in w1.log], [arg(t) for t in w2.log]), (["a"], ["b"]))
        self.assertFalse(self.dispatcher.scheduler.isHeld("flow"))


class TimeoutTests(DispatchTestCase):
    def test_the_hook_frees_the_worker_for_the_retry_then_the_call_fails(self) -> None:
        w = HookedWorker()
        self.attach(w)
        d = self.call(identity, "a", timeout=2)
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
        self.assertEqual(self.pending(), 0)

    def test_a_hook_that_raises_is_logged_and_the_call_still_retried(self) -> None:
        records = self.captureLog()

        class BadHook(ManualWorker):
            def timedOut(self, task: Any) -> None:
                raise RuntimeError("hook broke")

        bad, good = BadHook(name="bad"), ManualWorker(name="good")
        self.attach(bad)
        d = self.call(identity, "a", timeout=1)
        self.clock.advance(1)
        # Logged with the hook's exception.
        self.assertEqual(records[-1].levelno, logging.ERROR)
        exc_info = records[-1].exc_info
        assert exc_info is not None
        self.assertEqual(str(exc_info[1]), "hook broke")
        self.attach(good)  # the bad one is still busy: the retry goes here
        self.assertEqual([arg(t) for t in good.log], ["a"])
        good.finish("r", "done")
        self.assertEqual(self.successResultOf(d), "done")

    def test_a_timeout_the_worker_reports_counts_like_the_dispatchers_own(self) -> None:
        w = HookedWorker()
        self.attach(w)
        d = self.call(identity, "a", timeout=60)
        w.finish("t", None)
        self.assertEqual(len(w.log), 2)  # retried at once, on the worker now free
        w.finish("t", None)
        self.failureResultOf(d, errors.TimeoutError)
        self.assertEqual(w.timedOutTasks, [])  # it told us: no need to tell it
        self.assertNoTimers()

    def test_timeouts_and_losses_are_counted_apart(self) -> None:
        w = ManualWorker()
        self.attach(w)
        d = self.call(identity, "a", timeout=5)
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
        self.attach(w)
        ds = [self.call(identity, i, timeout=3) for i in range(3)]
        for i in range(3):
            self.clock.advance(1)
            w.finish("r", i)
        self.assertNoTimers()
        self.clock.advance(10)
        self.assertEqual(w.timedOutTasks, [])
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])

    def test_each_attempt_gets_the_full_timeout(self) -> None:
        w = HookedWorker()
        self.attach(w)
        d = self.call(identity, "a", timeout=2)
        self.clock.advance(2)  # first attempt timed out; the retry starts now
        self.clock.advance(1.5)
        self.assertNoResult(d)
        w.finish("r", "in time")
        self.assertEqual(self.successResultOf(d), "in time")


class RetryTests(DispatchTestCase):
    def test_a_lost_call_is_rerun_on_a_new_attempt_before_later_calls(self) -> None:
        w = ManualWorker()
        self.attach(w)
        ds = [self.call(identity, x) for x in "abc"]
        w.finish("d", "child died")
        self.assertEqual([arg(t) for t in w.log], ["a", "a"])
        self.assertEqual(w.log[1].attempt, 2)
        while w.current:
            task = w.current[0][0]
            w.finish("r", arg(task))
        self.assertEqual([self.successResultOf(d) for d in ds], ["a", "b", "c"])

    def test_the_rerun_goes_to_a_ready_worker_and_a_second_loss_fails_the_call(self) -> None:
        w1, w2 = ManualWorker(name="w1"), ManualWorker(name="w2")
        self.attach(w1, w2)
        d = self.call(identity, "a")
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
        self.attach(w1, w2)
        ds = [self.call(identity, x) for x in "abcd"]
        (a, readyA), (b, readyB) = w1.current[0], w2.current[0]
        self.assertEqual((arg(a), arg(b)), ("a", "b"))
        # Both are lost, b first, while neither worker is ready yet.
        w2.current.clear()
        w1.current.clear()
        b.callback(("d", "gone"))
        a.callback(("d", "gone"))
        self.assertEqual(self.queued(), 4)
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
        self.attach(w)
        d = self.call(identity, "a", timeout=1)
        first = w.current[0][0]
        self.clock.advance(1)  # no hook: w still holds the first attempt
        w2 = ManualWorker(name="w2")
        self.attach(w2)
        self.clock.advance(1)
        self.failureResultOf(d, errors.TimeoutError)
        seen: list[Any] = []
        d.addBoth(seen.append)
        first.callback(("r", "late"))
        w2.finish("r", "also late")
        self.assertEqual(seen, [None])  # nothing fired d again
        self.assertEqual(self.pending(), 0)


class RefusalTests(DispatchTestCase):
    def test_an_innocent_refusal_waits_out_the_pause_and_costs_nothing(self) -> None:
        w = Refuser(innocent=True)
        (slot,) = self.attach(w)
        d = self.call(identity, "a")
        self.assertEqual(len(w.log), 1)
        self.clock.advance(REFUSAL_PAUSE * 0.9)
        self.assertEqual(len(w.log), 1)  # resting
        self.clock.advance(REFUSAL_PAUSE * 0.2)
        self.assertEqual(len(w.log), 2)
        for _ in range(MAX_LOSSES + 3):
            self.clock.advance(REFUSAL_PAUSE)
        self.assertNoResult(d)  # never charged as lost
        self.dispatcher.detach(slot, crash=True)
        self.assertNoTimers()  # the pause ended with the detach

    def test_a_charged_refusal_is_a_loss(self) -> None:
        w = Refuser(innocent=False)
        self.attach(w)
        d = self.call(identity, "a")
        self.assertNoResult(d)
        self.clock.advance(REFUSAL_PAUSE)
        failure = self.failureResultOf(d, errors.WorkerLost)
        self.assertIn("not now", str(failure.value))
        self.assertEqual(len(w.log), MAX_LOSSES)

    def test_another_worker_takes_a_refused_call_during_the_pause(self) -> None:
        refuser, other = Refuser(innocent=True), ManualWorker(name="other")
        self.attach(refuser)
        d = self.call(identity, "a")
        self.attach(other)
        self.assertEqual([arg(t) for t in other.log], ["a"])
        other.finish("r", "a")
        self.assertEqual(self.successResultOf(d), "a")
        self.assertEqual(len(refuser.log), 1)


class StallTests(DispatchTestCase):
    """The stall rule: a worker that reports starts gets no more work behind a long task."""

    def test_no_more_tasks_behind_a_task_running_past_the_patience(self) -> None:
        w = StartingWorker(5)
        self.attach(w)
        self.call(identity, "long")
        w.current[0][0].started()
        self.clock.advance(PIPELINE_PATIENCE * 2)
        ds = [self.call(identity, x) for x in "xy"]
        self.assertEqual([arg(t) for t in w.log], ["long"])
        self.assertEqual(self.queued(), 2)
        # Another worker takes them meanwhile...
        other = ManualWorker(name="other")
        (slot,) = self.attach(other)
        self.assertEqual([arg(t) for t in other.log], ["x"])
        self.dispatcher.detach(slot, reassign=True, crash=True)
        # ... and once the long task is done, the pipelining worker goes on.
        w.finishOldest()
        self.assertEqual([arg(t) for t in w.log], ["long", "x", "y"])
        while w.current:
            w.finishOldest()
        self.assertEqual([self.successResultOf(d) for d in ds], ["x", "y"])

    def test_the_stalled_worker_is_passed_over_for_a_busier_one(self) -> None:
        stuck, busy = StartingWorker(5, "stuck"), StartingWorker(5, "busy")
        self.attach(stuck, busy)
        self.call(identity, "long")  # to stuck (attached first)
        self.call(identity, "b1")
        self.call(identity, "b2")
        self.assertEqual([arg(t) for t in busy.log], ["b1"])
        stuck.current[0][0].started()
        self.clock.advance(PIPELINE_PATIENCE * 2)
        # stuck is the least loaded ready worker, but stalled: busy takes it.
        self.call(identity, "next")
        self.assertEqual([arg(t) for t in stuck.log], ["long", "b2"])
        self.assertEqual([arg(t) for t in busy.log], ["b1", "next"])

    def test_more_tasks_within_the_patience(self) -> None:
        w = StartingWorker(5)
        self.attach(w)
        self.call(identity, "short")
        w.current[0][0].started()
        self.clock.advance(PIPELINE_PATIENCE / 2)
        self.call(identity, "next")
        self.assertEqual([arg(t) for t in w.log], ["short", "next"])

    def test_a_task_not_started_yet_does_not_count_as_long(self) -> None:
        w = StartingWorker(5)
        self.attach(w)
        self.call(identity, "waiting")
        self.clock.advance(PIPELINE_PATIENCE * 100)
        self.call(identity, "next")
        self.assertEqual([arg(t) for t in w.log], ["waiting", "next"])

    def test_a_worker_that_does_not_report_starts_is_never_held_back(self) -> None:
        w = PipeliningWorker(5)
        self.attach(w)
        self.call(identity, "first")
        self.clock.advance(PIPELINE_PATIENCE * 100)
        self.call(identity, "second")
        self.assertEqual([arg(t) for t in w.log], ["first", "second"])

    def test_a_timeout_counts_from_the_reported_start(self) -> None:
        w = StartingWorker(5)
        self.attach(w)
        self.call(identity, "ahead")
        d = self.call(identity, "timed", timeout=1)
        self.clock.advance(3)  # still waiting behind "ahead": no timeout
        self.assertNoResult(d)
        w.finishOldest()
        w.current[0][0].started()
        self.clock.advance(0.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(len(w.log), 3)  # timed out and retried
        self.assertEqual(arg(w.log[2]), "timed")


class HandingBack(StartingWorker):
    """A StartingWorker that hands back its tasks waiting behind the oldest."""

    def __init__(self, window: int, name: str = "w") -> None:
        super().__init__(window, name)
        self.handedBack = 0

    def handBack(self) -> None:
        waiting, self.current = self.current[1:], self.current[:1]
        self.handedBack += 1
        for task, _ in waiting:
            task.innocent = True
            task.callback(("d", "handed back"))


class HandBackTests(DispatchTestCase):
    """Tasks waiting behind a long one move to a worker that can start them."""

    def test_tasks_behind_a_long_one_move_to_a_free_worker(self) -> None:
        stuck, other = HandingBack(5, "stuck"), HandingBack(5, "other")
        self.attach(stuck, other)
        self.call(identity, "long")  # to stuck
        self.call(identity, "o1")  # to other
        ds = [self.call(identity, x) for x in ("a", "b", "c")]  # alternately, behind those
        self.assertEqual([arg(t) for t in stuck.log], ["long", "a", "c"])
        stuck.current[0][0].started()
        other.finishOldest()  # o1
        other.finishOldest()  # b: other is idle, a and c wait behind long
        self.clock.advance(HANDBACK_PATIENCE / 2)
        self.assertEqual(stuck.handedBack, 0)  # not long yet
        self.clock.advance(HANDBACK_PATIENCE)
        self.assertEqual((stuck.handedBack, other.handedBack), (1, 0))
        self.assertEqual([arg(t) for t, _ in stuck.current], ["long"])
        self.assertEqual([arg(t) for t in other.log], ["o1", "b", "a", "c"])
        while other.current:
            other.finishOldest()
        self.assertEqual([self.successResultOf(d) for d in ds], ["a", "b", "c"])
        stuck.finishOldest()
        self.clock.advance(HANDBACK_PATIENCE)  # (the watch ends: nothing waits)
        self.assertNoTimers()

    def test_with_every_worker_stuck_the_first_free_one_takes_them(self) -> None:
        one, two = HandingBack(5, "one"), HandingBack(5, "two")
        self.attach(one, two)
        ds = [self.call(identity, x) for x in ("long1", "long2", "a", "b")]
        self.assertEqual([arg(t) for t in one.log], ["long1", "a"])
        one.current[0][0].started()
        two.current[0][0].started()
        self.clock.advance(HANDBACK_PATIENCE * 1.5)
        self.assertEqual((one.handedBack, two.handedBack), (1, 1))
        self.assertEqual(self.queued(), 2)  # (no stuck worker takes more)
        two.finishOldest()  # long2 done: two takes both, in order
        self.assertEqual([arg(t) for t in two.log], ["long2", "b", "a", "b"])
        while two.current:
            two.finishOldest()
        one.finishOldest()
        self.assertEqual([self.successResultOf(d) for d in ds], ["long1", "long2", "a", "b"])
        self.clock.advance(HANDBACK_PATIENCE)  # (the watch ends: nothing waits)
        self.assertNoTimers()

    def test_the_only_worker_keeps_its_tasks(self) -> None:
        w = HandingBack(5)
        self.attach(w)
        ds = [self.call(identity, x) for x in ("long", "a")]
        w.current[0][0].started()
        self.clock.advance(HANDBACK_PATIENCE * 5)
        self.assertEqual(w.handedBack, 0)
        self.assertEqual([arg(t) for t, _ in w.current], ["long", "a"])
        w.finishOldest()
        w.finishOldest()
        self.assertEqual([self.successResultOf(d) for d in ds], ["long", "a"])
        self.clock.advance(HANDBACK_PATIENCE * 2)
        self.assertNoTimers()

    def test_abandoning_the_calls_stops_the_watch(self) -> None:
        w = HandingBack(5)
        self.attach(w)
        for x in ("long", "a"):
            self.call(identity, x).addErrback(lambda _: None)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.dispatcher.abandon("was shut down")
        self.assertNoTimers()


class CancelTests(DispatchTestCase):
    def test_a_queued_call_is_withdrawn_and_never_runs(self) -> None:
        w = ManualWorker()
        self.attach(w)
        self.call(identity, "a")
        d = self.call(identity, "b")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((self.queued(), self.pending()), (0, 1))
        w.finish("r", "a")
        self.assertEqual([arg(t) for t in w.log], ["a"])

    def test_a_running_call_is_given_up_on_and_its_worker_told(self) -> None:
        w = HookedWorker()
        self.attach(w)
        d = self.call(identity, "a")
        next_ = self.call(identity, "b")
        task = w.log[0]
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(w.timedOutTasks, [task])  # no cancelled hook: timedOut
        self.assertEqual([arg(t) for t in w.log], ["a", "b"])  # freed by its hook
        task.callback(("r", "late"))  # ignored
        w.finish("r", "b")
        self.assertEqual(self.successResultOf(next_), "b")

    def test_withdraw_takes_back_a_queued_call_only(self) -> None:
        w = ManualWorker()
        self.attach(w)
        running, queued = self.call(identity, "a"), self.call(identity, "b")
        self.assertFalse(self.dispatcher.withdraw(running))
        self.assertTrue(self.dispatcher.withdraw(queued))
        self.failureResultOf(queued, errors.TaskCancelled)
        self.assertFalse(self.dispatcher.withdraw(queued))


class DetachTests(DispatchTestCase):
    def test_reassigned_calls_go_first_in_their_original_order(self) -> None:
        w1 = PipeliningWorker(3, "w1")
        (slot,) = self.attach(w1)
        ds = [self.call(identity, x) for x in "abcde"]
        self.assertEqual([arg(t) for t in w1.log], ["a", "b", "c"])
        unfinished = self.dispatcher.detach(slot, reassign=True, crash=True)
        self.assertEqual(self.successResultOf(unfinished), [])
        self.assertEqual(self.queued(), 5)
        self.assertFalse(w1.hired)
        w2 = ManualWorker(name="w2")
        self.attach(w2)
        while w2.current:
            w2.finish("r", arg(w2.current[0][0]))
        self.assertEqual([arg(t) for t in w2.log], list("abcde"))
        self.assertEqual([self.successResultOf(d) for d in ds], list("abcde"))

    def test_without_reassign_the_unfinished_calls_fail(self) -> None:
        w = ManualWorker()
        (slot,) = self.attach(w)
        running, queued = self.call(identity, "a"), self.call(identity, "b")
        unfinished = self.successResultOf(self.dispatcher.detach(slot, crash=True))
        self.assertEqual(unfinished, [w.log[0]])
        self.failureResultOf(running, errors.TaskCancelled)
        self.assertNoResult(queued)  # still queued, for another worker
        self.assertEqual(self.queued(), 1)

    def test_a_reassigned_call_is_not_charged_and_its_timer_goes(self) -> None:
        w1 = ManualWorker(name="w1")
        (slot,) = self.attach(w1)
        d = self.call(identity, "a", timeout=5)
        self.clock.advance(3)
        self.dispatcher.detach(slot, reassign=True, crash=True)
        self.assertNoTimers()
        w2 = ManualWorker(name="w2")
        self.attach(w2)
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
        (slot,) = self.attach(w1)
        d = self.call(identity, "a")
        self.assertEqual(self.successResultOf(self.dispatcher.detach(slot, reassign=True)), [])
        self.assertTrue(w1.stopped)
        self.assertFalse(w1.crashed)
        w2 = ManualWorker(name="w2")
        self.attach(w2)
        w2.finish("r", "a")
        self.assertEqual(self.successResultOf(d), "a")

    def test_a_graceful_stop_too_slow_is_a_crash_after_the_timeout(self) -> None:
        class Slow(ManualWorker):
            def stop(self) -> Deferred[None]:
                self.stopped = True
                return Deferred()

        w = Slow()
        (slot,) = self.attach(w)
        d = self.call(identity, "a")
        detached = self.dispatcher.detach(slot, reassign=True, timeout=2)
        self.clock.advance(1.9)
        self.assertNoResult(detached)
        self.assertFalse(w.crashed)
        self.clock.advance(0.2)
        self.assertTrue(w.crashed)
        self.assertEqual(self.successResultOf(detached), [])
        self.assertEqual(self.queued(), 1)
        self.assertNoResult(d)

    def test_a_worker_that_resigns_is_detached_and_its_calls_reassigned(self) -> None:
        quitter, spare = ManualWorker(name="quitter"), ManualWorker(name="spare")
        self.attach(quitter)
        d = self.call(identity, "a")
        quitter.resignator()
        self.assertTrue(quitter.crashed)
        self.assertEqual(self.dispatcher.slots, {})
        self.attach(spare)
        spare.finish("r", "a")
        self.assertEqual(self.successResultOf(d), "a")

    def test_calls_fail_when_the_last_worker_gives_up(self) -> None:
        # A worker that gave up for good (gaveUp says why) and was the last:
        # the queued calls, and the one it was running, fail at once rather
        # than wait for a worker that may never come; so do new calls, until
        # a worker is attached.
        first, last = ManualWorker(name="first"), ManualWorker(name="last")
        self.attach(first, last)
        running = self.call(identity, "running")
        queued = [self.call(identity, i) for i in range(3)]
        first.gaveUp = "its server is gone"  # type: ignore[attr-defined]
        first.resignator()
        for d in [running, *queued]:
            self.assertNoResult(d)  # another worker is left: they wait for it
        last.gaveUp = "could not connect for 60 seconds"  # type: ignore[attr-defined]
        last.resignator()
        self.assertEqual(self.dispatcher.slots, {})
        for d in [running, *queued]:
            error = self.failureResultOf(d, errors.WorkerError).value
            self.assertIn("last worker gave up (could not connect for 60 seconds)", str(error))
        self.assertEqual((self.queued(), self.dispatcher.pending), (0, set()))
        late = self.call(identity, "late")
        self.assertIn("gave up", str(self.failureResultOf(late, errors.WorkerError).value))
        spare = ManualWorker(name="spare")
        self.attach(spare)
        d = self.call(identity, "after")
        spare.finish("r", "after")
        self.assertEqual(self.successResultOf(d), "after")

    def test_a_last_worker_resigning_without_giving_up_leaves_the_calls_queued(self) -> None:
        # (The original's workers, and a process worker at reactor shutdown,
        # resign without a gaveUp: its calls wait for the next worker.)
        quitter = ManualWorker(name="quitter")
        quitter.gaveUp = None  # type: ignore[attr-defined]
        self.attach(quitter)
        d = self.call(identity, "a")
        quitter.resignator()
        self.assertNoResult(d)
        self.assertNoResult(self.call(identity, "b"))
        self.assertEqual(self.queued(), 2)

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
        self.attach(broken)
        d = self.call(identity, "a")
        self.assertTrue(broken.crashed)
        self.assertEqual(self.dispatcher.slots, {})
        self.assertIn("ready broke", records[0].getMessage())
        self.attach(spare)
        spare.finish("r", "a")
        self.assertEqual(self.successResultOf(d), "a")

    def test_a_worker_whose_run_raises_fails_that_call_only(self) -> None:
        class Flaky(ManualWorker):
            def run(self, task: Any) -> Deferred[None]:
                if arg(task) == "bad":
                    raise ValueError("cannot take it")
                return super().run(task)

        w = Flaky()
        self.attach(w)
        bad = self.call(identity, "bad")
        good = self.call(identity, "good")
        self.assertIn("cannot take it", str(self.failureResultOf(bad, ValueError).value))
        w.finish("r", "good")
        self.assertEqual(self.successResultOf(good), "good")
        self.assertEqual([s.worker for s in self.dispatcher.slots.values()], [w])

    def test_an_abandoned_call_that_ran_before_says_so(self) -> None:
        w1, w2 = ManualWorker(name="w1"), ManualWorker(name="w2")
        slots = self.attach(w1, w2)
        timedOut = self.call(identity, "timed out", timeout=5)  # on w1
        lost = self.call(identity, "lost")  # on w2
        fresh = self.call(identity, "fresh")  # queued
        w1.finish("t", None)  # run again, on w1
        w2.finish("d", "child died")  # run again, on w2
        self.assertEqual([arg(t) for t in w1.log + w2.log], ["timed out"] * 2 + ["lost"] * 2)
        for slot in slots:
            self.dispatcher.detach(slot, reassign=True, crash=True)  # back in the queue
        late = self.call(identity, "late")
        self.assertEqual((self.pending(), self.queued()), (4, 4))
        self.dispatcher.abandon("never ran: the test gave up", retried="was not run again")
        for d, text in [
            (timedOut, "identity('timed out') was not run again"),
            (lost, "identity('lost') was not run again"),
            (fresh, "identity('fresh') never ran: the test gave up"),
            (late, "identity('late') never ran: the test gave up"),
        ]:
            self.assertIn(text, str(self.failureResultOf(d, errors.QueueRunError).value))
        self.assertNoTimers()

    def test_detached_workers_leave_the_drain_to_nobody(self) -> None:
        w = ManualWorker()
        (slot,) = self.attach(w)
        d = self.call(identity, "a")
        drained = self.dispatcher.drained()
        self.assertNoResult(drained)
        self.dispatcher.detach(slot, reassign=True, crash=True)
        self.successResultOf(drained)  # no worker left to run it
        self.dispatcher.abandon("never ran: the test gave up")
        failure = self.failureResultOf(d, errors.QueueRunError)
        self.assertIn("identity('a') never ran: the test gave up", str(failure.value))
        self.assertEqual((self.pending(), self.queued()), (0, 0))

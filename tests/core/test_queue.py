"""TaskQueue: calls, scheduling through workers, policies, timeouts, detach, shutdown."""

from __future__ import annotations

import gc
import logging
import random
import sys
import warnings
from io import StringIO
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from asynqueue import AsyncWorker, NullQueue, TaskQueue, errors
from asynqueue._core._task import Task
from asynqueue._support._status import Status
from asynqueue.interfaces import IWorker

from ..helpers.common import FakeReactor, ManualWorker


def boom(x: Any = None) -> None:
    raise ZeroDivisionError(f"boom {x}")


class CallTests(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.clock = Clock()
        self.q = TaskQueue(AsyncWorker(), returnFailure=True, reactor=self.clock)

    def tearDown(self) -> Deferred[None]:
        return self.q.shutdown()

    def test_result(self) -> None:
        d = self.q.call(lambda a, b=0: a + b, 1, b=2)
        self.assertEqual(self.successResultOf(d), 3)

    def test_deferred_and_coroutine_results(self) -> None:
        async def coro(x: int) -> int:
            return x * 2

        self.assertEqual(self.successResultOf(self.q.call(defer.succeed, 5)), 5)
        self.assertEqual(self.successResultOf(self.q.call(coro, 4)), 8)

    def test_queue_keywords_never_reach_the_callable(self) -> None:
        seen = []
        d = self.q.call(
            lambda **kw: seen.append(kw),
            niceness=3,
            series="s",
            doNext=True,
            timeout=5,
            returnFailure=True,
            raw=False,
            other=1,
        )
        self.successResultOf(d)
        self.assertEqual(seen, [{"other": 1}])

    def test_unknown_queue_keywords_warn_at_the_line_that_made_the_queue(self) -> None:
        # Ignored, as the original did, but not silently: a misspelt
        # timeout= would otherwise pass unnoticed.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            q = TaskQueue(AsyncWorker(), reactor=self.clock, timout=5)
            null = NullQueue(reactor=self.clock, verbosity=2, bogus=None)
            TaskQueue(reactor=self.clock, timeout=5, returnFailure=True)  # (all known)
        self.addCleanup(null.shutdown)
        self.addCleanup(q.shutdown)
        self.assertEqual(
            [str(w.message) for w in caught],
            [
                "TaskQueue ignores the unknown keyword(s) timout=",
                "NullQueue ignores the unknown keyword(s) bogus=, verbosity=",
            ],
        )
        self.assertEqual({w.filename for w in caught}, {__file__})
        self.assertIsNone(q.timeout)

    def test_a_subclass_newtask_makes_every_calls_record(self) -> None:
        # call() makes the record of a plain call itself, but not past a
        # subclass that makes its own (the original's extension point).
        made = []

        class Recording(TaskQueue):
            def newTask(self, func: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
                made.append(args)
                return super().newTask(func, args, kw)

        q = Recording(AsyncWorker(), returnFailure=True, reactor=self.clock)
        self.assertEqual(self.successResultOf(q.call(abs, -1)), 1)
        self.assertEqual(self.successResultOf(q.call(pow, 2, 3, mod=5)), 3)
        self.assertEqual(made, [(-1,), (2, 3)])
        self.assertEqual(self.successResultOf(self.q.call(abs, -4)), 4)
        self.successResultOf(q.shutdown())

    def test_the_task_carries_the_calls_options(self) -> None:
        w = ManualWorker()
        q = TaskQueue(w, returnFailure=True, reactor=self.clock)
        q.call(abs, -1, series="s")
        q.call(abs, -2, raw=True)
        q.call(abs, -3, series="t", raw=False, niceness=5)
        while w.current:
            w.finish()
        fields = [(t.callTuple[1], t.series, t.raw, t.niceness) for t in w.log]
        self.assertEqual(
            fields, [((-1,), "s", None, 0), ((-2,), None, True, 0), ((-3,), "t", False, 5)]
        )
        self.successResultOf(q.shutdown())

    def test_bad_input_raises_at_the_call_site(self) -> None:
        self.assertRaises(TypeError, self.q.call, 42)
        for bad in (21, -21, 0.5, "1"):
            self.assertRaises(ValueError, self.q.call, abs, 1, niceness=bad)
        self.assertRaises(TypeError, self.q.call, abs, 1, series=[1])
        self.assertRaises(ValueError, self.q.call, abs, 1, timeout=-1)
        self.assertEqual(self.q.counts()["pending"], 0)

    def test_call_after_shutdown(self) -> None:
        self.successResultOf(self.q.shutdown())
        self.assertRaises(errors.QueueRunError, self.q.call, abs, 1)
        self.assertFalse(self.q.isRunning())

    def test_len_and_bool(self) -> None:
        self.assertIs(bool(self.q), True)
        self.assertEqual(len(self.q), 1)
        empty = TaskQueue(reactor=self.clock)
        self.assertIs(bool(empty), False)
        self.successResultOf(self.q.shutdown())
        self.assertIs(bool(self.q), False)

    def test_failing_task_does_not_wedge_the_worker(self) -> None:
        f = self.failureResultOf(self.q.call(boom, 1), ZeroDivisionError)
        self.assertIn("boom 1", str(f.value))
        self.assertIn("ZeroDivisionError", f.getTraceback())
        self.assertEqual(self.successResultOf(self.q.call(abs, -3)), 3)

    def test_failing_deferred_task(self) -> None:
        self.failureResultOf(self.q.call(defer.fail, KeyError("k")), KeyError)
        self.assertEqual(self.successResultOf(self.q.call(abs, -1)), 1)

    def test_workers_and_ids(self) -> None:
        w = AsyncWorker()
        ID = self.successResultOf(self.q.attachWorker(w))
        self.assertIs(self.q.workers(ID), w)
        self.assertEqual(len(self.q.workers()), 2)
        self.assertIsNone(self.q.workers(999))
        self.assertEqual(self.successResultOf(self.q.detachWorker(999)), [])

    def test_rejects_non_workers(self) -> None:
        self.assertRaises(errors.ImplementationError, self.q.attachWorker, object())
        w = AsyncWorker()
        w.iQualified = ("tuple",)  # type: ignore[assignment]
        self.assertRaises(errors.InvariantError, self.q.attachWorker, w)


class OrderTests(TestCase):
    """Start order on one hand-driven worker."""

    timeout = 10

    def setUp(self) -> None:
        self.clock = Clock()
        self.w = ManualWorker()
        self.q = TaskQueue(self.w, returnFailure=True, reactor=self.clock)

    def drive(self, n: int | None = None) -> list[Any]:
        names = []
        while self.w.current and (n is None or len(names) < n):
            task = self.w.finish("r", None)
            names.append(task.callTuple[1][0])
        return names

    def submit(self, *names: Any, **kw: Any) -> list[Deferred[Any]]:
        return [self.q.call(lambda x: x, name, **kw) for name in names]

    def test_series_order_and_half_rate(self) -> None:
        self.submit("busy")
        for i in range(60):
            self.q.call(lambda x: x, ("A", i), series="A", niceness=0)
            self.q.call(lambda x: x, ("B", i), series="B", niceness=10)
        order = self.drive(91)[1:]
        a = [x for x in order if x[0] == "A"]
        b = [x for x in order if x[0] == "B"]
        self.assertEqual(a, sorted(a))
        self.assertEqual(b, sorted(b))
        for start in range(0, 60):
            window = order[start : start + 30]
            ratio = sum(1 for x in window if x[0] == "A") / sum(1 for x in window if x[0] == "B")
            self.assertTrue(1.7 <= ratio <= 2.3, (start, ratio))
        self.drive()

    def test_donext_and_dolast(self) -> None:
        self.submit("busy")
        self.submit("last1", doLast=True)
        self.submit("p1", "p2")
        self.submit("last2", doLast=True)
        self.submit("n1", doNext=True)
        self.submit("p3", niceness=20)
        self.submit("n2", doNext=True)
        self.assertEqual(self.drive(), ["busy", "n1", "n2", "p1", "p2", "p3", "last1", "last2"])

    def test_late_series_is_not_stuck_behind_a_backlog(self) -> None:
        self.submit("busy")
        for i in range(10_000):
            self.q.call(lambda x: x, ("A", i), series="A")
        self.drive(100)
        self.q.call(lambda x: x, ("B", 0), series="B")
        nxt = self.drive(3)
        self.assertIn(("B", 0), nxt)
        # Shutdown drains the rest.
        d = self.q.shutdown()
        self.drive()
        self.successResultOf(d)

    def test_unqualified_series_runs_anywhere_and_qualified_go_to_their_worker(self) -> None:
        d = self.q.call(lambda: "ran", series="nobody")
        self.w.finish("r", "ran")
        self.assertEqual(self.successResultOf(d), "ran")
        special = ManualWorker(series=("gpu",), name="gpu")
        self.q.attachWorker(special)
        self.submit("busy")  # occupy the plain worker
        ds = [self.q.call(lambda: None, series="gpu") for _ in range(3)]
        plain = self.q.call(lambda: None)
        # Only the gpu worker may take gpu tasks (it may also help with plain ones).
        while special.current:
            special.finish()
        while self.w.current:
            self.w.finish()
        for d in [*ds, plain]:
            self.successResultOf(d)
        self.assertEqual(sum(1 for t in special.log if t.series == "gpu"), 3)
        self.assertFalse([t for t in self.w.log if t.series == "gpu"])

    def test_qualify_worker(self) -> None:
        other = ManualWorker(name="other")
        self.q.attachWorker(other)
        self.q.qualifyWorker(other, "x")
        self.assertIn("x", other.iQualified)
        self.submit("busy-w")
        self.submit("busy-other")
        self.q.call(lambda: None, series="x")
        # x tasks belong to `other` now, even though `w` frees up first.
        self.w.finish()
        self.assertEqual(len(self.w.current), 0)
        other.finish()
        self.assertEqual(other.current[0][0].series, "x")
        other.finish()


class PolicyTests(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = self.records.append  # type: ignore[method-assign]
        logger = logging.getLogger("asynqueue")
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)

    def test_warn_logs_and_returns_text(self) -> None:
        q = TaskQueue(AsyncWorker(), warn=True, reactor=Clock())
        text = self.successResultOf(q.call(boom, 7))
        self.assertIn("ZeroDivisionError", text)
        self.assertIn("boom 7", text)
        errors_ = [r for r in self.records if r.levelno == logging.ERROR]
        self.assertEqual(len(errors_), 1)
        self.assertIn("boom 7", errors_[0].getMessage())
        self.successResultOf(q.shutdown())

    def test_verbose_names_the_call(self) -> None:
        q = TaskQueue(AsyncWorker(), warn=True, verbose=True, reactor=Clock())
        self.successResultOf(q.call(boom, 8))
        self.assertIn("boom(8)", self.records[-1].getMessage())
        self.successResultOf(q.shutdown())

    def test_spew_logs_every_call(self) -> None:
        q = TaskQueue(AsyncWorker(), spew=True, warn=True, reactor=Clock())
        self.successResultOf(q.call(abs, -2))
        self.successResultOf(q.call(abs, -3))
        infos = [r.getMessage() for r in self.records if r.levelno == logging.INFO]
        self.assertEqual(len(infos), 2)
        self.assertIn("-> 3", infos[1])
        self.successResultOf(q.shutdown())

    def test_returnfailure_per_call_overrides(self) -> None:
        q = TaskQueue(AsyncWorker(), warn=True, reactor=Clock())
        self.failureResultOf(q.call(boom, returnFailure=True), ZeroDivisionError)
        self.successResultOf(q.shutdown())

    def test_default_policy_prints_and_stops_the_reactor_cleanly(self) -> None:
        reactor = FakeReactor()
        q = TaskQueue(AsyncWorker(), reactor=reactor)
        err = StringIO()
        self.patch(sys, "stderr", err)
        text = self.successResultOf(q.call(boom, 9))
        self.assertIn("boom 9", text)
        self.assertIn("ERROR", err.getvalue())
        self.assertIn("boom 9", err.getvalue())
        self.assertEqual(reactor.stopped, 0)
        reactor.advance(0)
        self.assertFalse(q.isRunning())
        self.assertEqual(reactor.stopped, 1)

    def test_taskdone_reads_members_letters_and_the_originals_bytes(self) -> None:
        q = TaskQueue(returnFailure=True, reactor=Clock())
        task = Task(abs, (1,))
        for code in (Status.RESULT, "r", b"r"):
            self.assertEqual(q.taskDone((code, 5), task), 5)
        for code in (Status.NONE, "n", b"n"):
            self.assertIsNone(q.taskDone((code, 5), task))
        for code, error in (
            ("e", ZeroDivisionError),
            (b"t", errors.TimeoutError),
            (Status.NOT_RUN, errors.WorkerLost),
            ("x", errors.WorkerError),
        ):
            failure = q.taskDone((code, Failure(ZeroDivisionError("boom"))), task)
            self.assertIsInstance(failure, Failure)
            self.assertTrue(failure.check(error), (code, failure))


class TimeoutTests(TestCase):
    timeout = 10

    def test_timeout_retries_once_then_fails(self) -> None:
        clock = Clock()
        attempts = []

        def hang() -> Deferred[None]:
            d: Deferred[None] = Deferred()
            attempts.append(d)
            return d

        q = TaskQueue(AsyncWorker(), returnFailure=True, reactor=clock)
        d = q.call(hang, timeout=2)
        clock.advance(1.9)
        self.assertEqual(len(attempts), 1)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.assertEqual(len(attempts), 2)  # retried, and the first was cancelled
        self.assertTrue(attempts[0].called)
        clock.advance(2)
        f = self.failureResultOf(d, errors.TimeoutError)
        self.assertIn("timed out", str(f.value))
        # The worker is free again.
        self.assertEqual(self.successResultOf(q.call(abs, -4)), 4)
        self.successResultOf(q.shutdown())

    def test_retry_succeeds_and_late_result_is_discarded(self) -> None:
        clock = Clock()
        w = ManualWorker()
        q = TaskQueue(w, returnFailure=True, reactor=clock)
        d = q.call(abs, -5, timeout=1)
        first = w.current[0]
        clock.advance(1.5)
        # The worker was not freed by the timeout (it has no hook): a second
        # worker takes the retry.
        w2 = ManualWorker()
        q.attachWorker(w2)
        self.assertEqual(len(w2.log), 1)
        w2.finish("r", "second")
        self.assertEqual(self.successResultOf(d), "second")
        late: list[Any] = []
        d.addCallback(late.append)
        first[0].callback(("r", "late"))  # ignored
        first[1].callback(None)
        self.assertEqual(late, [None])  # nothing fired d again
        self.successResultOf(q.shutdown())

    def test_timeout_counts_from_start_for_workers_that_report_it(self) -> None:
        clock = Clock()
        w = ManualWorker()
        w.reportsStart = True  # type: ignore[attr-defined]
        q = TaskQueue(w, returnFailure=True, reactor=clock)
        d = q.call(abs, -1, timeout=1)
        clock.advance(5)  # not started yet: no timeout
        self.assertNoResult(d)
        self.assertEqual(len(w.log), 1)
        w.current[0][0].started()
        clock.advance(0.5)
        self.assertNoResult(d)
        clock.advance(0.6)
        self.assertEqual(len(w.log), 1)  # timed out; the retry waits for a ready worker
        w.current[0][1].callback(None)
        self.assertEqual(len(w.log), 2)
        w.current.pop(0)
        w.finish("r", 1)
        self.assertEqual(self.successResultOf(d), 1)


class LostWorkerTests(TestCase):
    timeout = 10

    def test_did_not_run_is_rerun_once_then_fails(self) -> None:
        w = ManualWorker()
        q = TaskQueue(w, returnFailure=True, reactor=Clock())
        d = q.call(abs, 1)
        w.finish("d", "exit code 9")
        self.assertNoResult(d)
        w.finish("d", "exit code 9")
        f = self.failureResultOf(d, errors.WorkerLost)
        self.assertIn("exit code 9", str(f.value))

    def test_innocent_tasks_are_not_charged(self) -> None:
        w = ManualWorker()
        q = TaskQueue(w, returnFailure=True, reactor=Clock())
        d = q.call(abs, 1)
        for _ in range(5):
            w.current[0][0].innocent = True
            w.finish("d", "window flushed")
        w.finish("r", 1)
        self.assertEqual(self.successResultOf(d), 1)

    def test_resignation_reassigns(self) -> None:
        w1, w2 = ManualWorker(), ManualWorker()
        q = TaskQueue(w1, w2, returnFailure=True, reactor=Clock())
        d1 = q.call(lambda: 1)
        d2 = q.call(lambda: 2)
        d3 = q.call(lambda: 3)
        w1.resignator()
        self.assertTrue(w1.crashed)
        self.assertEqual(len(q), 1)
        while w2.current:
            w2.finish("r", w2.current[0][0].callTuple[0]())
        self.assertEqual([self.successResultOf(d) for d in (d1, d2, d3)], [1, 2, 3])

    def test_a_late_failed_deferred_result_is_not_an_unhandled_error(self) -> None:
        # An iterator result that arrives after its worker was crashed: its
        # first batch failed. The queue gave up on that attempt; the failure
        # must not be logged as an unhandled error when it is collected.
        w1 = ManualWorker()
        q = TaskQueue(w1, returnFailure=True, reactor=Clock())
        d = q.call(lambda: 1)
        [(task, _)] = w1.current
        q.detachWorker(w1, reassign=True, crash=True)
        late = defer.fail(errors.ThreadError("thread worker is stopped"))
        task.callback(("i", late))
        del late
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(errors.ThreadError), [])
        w2 = ManualWorker()
        q.attachWorker(w2)
        w2.finish("r", 1)
        self.assertEqual(self.successResultOf(d), 1)


class DetachTests(TestCase):
    timeout = 10

    def test_detach_with_and_without_reassign(self) -> None:
        w1, w2 = ManualWorker(), ManualWorker()
        q = TaskQueue(w1, w2, returnFailure=True, reactor=Clock())
        d1 = q.call(lambda: 1)
        d2 = q.call(lambda: 2)
        self.assertEqual(self.successResultOf(q.detachWorker(w1, reassign=True, crash=True)), [])
        self.assertEqual(len(w2.current), 1)
        w2.finish("r", "x")
        w2.finish("r", "y")
        self.assertEqual(sorted([self.successResultOf(d1), self.successResultOf(d2)]), ["x", "y"])
        d3 = q.call(lambda: 3)
        left = self.successResultOf(q.detachWorker(w2, crash=True))
        self.assertEqual(len(left), 1)
        self.failureResultOf(d3, errors.TaskCancelled)

    def test_graceful_detach_crashes_after_timeout(self) -> None:
        clock = Clock()

        class Stubborn(ManualWorker):
            def stop(self) -> Deferred[None]:
                return Deferred()

        w = Stubborn()
        q = TaskQueue(w, timeout=3, returnFailure=True, reactor=clock)
        d = q.call(abs, 1)
        det = q.detachWorker(w, reassign=True)
        self.assertNoResult(det)
        clock.advance(3)
        self.assertTrue(w.crashed)
        self.assertEqual(self.successResultOf(det), [])
        self.assertNoResult(d)  # back in the queue, waiting for a worker
        q.attachWorker(AsyncWorker())
        self.assertEqual(self.successResultOf(d), 1)


class ShutdownTests(TestCase):
    timeout = 10

    def test_shutdown_runs_queued_tasks_first(self) -> None:
        w = ManualWorker()
        q = TaskQueue(w, returnFailure=True, reactor=Clock())
        ds = [q.call(lambda x: x, i) for i in range(3)]
        sd = q.shutdown()
        self.assertRaises(errors.QueueRunError, q.call, abs, 1)
        for i in range(3):
            self.assertNoResult(sd)
            w.finish("r", i)
        self.successResultOf(sd)
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])
        self.assertTrue(w.stopped)

    def test_shutdown_without_workers_fails_queued_calls(self) -> None:
        q = TaskQueue(returnFailure=True, reactor=Clock())
        d = q.call(abs, 1)
        self.successResultOf(q.shutdown())
        f = self.failureResultOf(d, errors.QueueRunError)
        self.assertIn("never ran", str(f.value))

    def test_shutdown_crashes_a_hung_worker_after_timeout(self) -> None:
        clock = Clock()

        class Hung(ManualWorker):
            def stop(self) -> Deferred[None]:
                return Deferred()

        w = Hung()
        q = TaskQueue(w, timeout=2, returnFailure=True, reactor=clock)
        d = q.call(abs, 1)
        w.current.clear()  # the task will never report
        sd = q.shutdown()
        # Drain waits for the running task: it never ends, so make it time out
        # by detaching... shutdown is bounded by the worker stop timeout only
        # after draining. Here the task hangs without a timeout, so fail it by
        # crashing the worker explicitly, as a user would.
        self.assertNoResult(sd)
        q.detachWorker(w, crash=True)
        self.successResultOf(sd)
        self.failureResultOf(d, errors.TaskCancelled)

    def test_second_shutdown_waits_for_the_first(self) -> None:
        w = ManualWorker()
        q = TaskQueue(w, reactor=Clock())
        q.call(abs, 1)
        a, b = q.shutdown(), q.shutdown()
        self.assertNoResult(b)
        w.finish("r", 1)
        self.successResultOf(a)
        self.successResultOf(b)


class UpdateTests(TestCase):
    timeout = 10

    def test_update_runs_on_all_and_replays_on_new_workers(self) -> None:
        seen: list[Any] = []
        q = TaskQueue(AsyncWorker(), AsyncWorker(), returnFailure=True, reactor=Clock())
        results = self.successResultOf(q.update(seen.append, "u"))
        self.assertEqual(results, [None, None])
        self.assertEqual(seen, ["u", "u"])
        q.attachWorker(AsyncWorker())
        self.assertEqual(seen, ["u", "u", "u"])
        self.successResultOf(q.update(seen.append, "e", ephemeral=True))
        q.attachWorker(AsyncWorker())
        self.assertEqual(seen.count("e"), 3)
        self.assertEqual(seen.count("u"), 4)
        self.successResultOf(q.shutdown())


@inlineCallbacks
def _noop() -> Any:
    yield None


class NothingLostTests(TestCase):
    """Random calls, detaches, crashes and a shutdown: every Deferred fires once."""

    timeout = 20

    def test_randomized(self) -> None:
        for seed in range(30):
            self._runSeed(seed)

    def _runSeed(self, seed: int) -> None:
        rng = random.Random(seed)
        clock = Clock()
        q = TaskQueue(returnFailure=True, timeout=1, reactor=clock)
        workers: list[ManualWorker] = []
        fired: dict[int, int] = {}
        ds = []

        def record(result: Any, i: int) -> None:
            fired[i] = fired.get(i, 0) + 1

        for step in range(200):
            op = rng.random()
            if op < 0.45:
                i = len(ds)
                d = q.call(
                    lambda: None,
                    series=rng.choice([None, "a", "b"]),
                    niceness=rng.randint(-20, 20),
                    timeout=rng.choice([None, 0.5]),
                )
                d.addBoth(record, i)
                d.addErrback(lambda f: None)
                ds.append(d)
            elif op < 0.55:
                w = ManualWorker(series=tuple(rng.sample(["a", "b"], rng.randint(0, 1))))
                workers.append(w)
                q.attachWorker(w)
            elif op < 0.75 and workers:
                w = rng.choice(workers)
                if w.current:
                    w.finish(rng.choice("rrred"), step)
            elif op < 0.8 and workers:
                w = workers.pop(rng.randrange(len(workers)))
                q.detachWorker(w, reassign=rng.random() < 0.5, crash=rng.random() < 0.5)
            else:
                clock.advance(0.3)
        sd = q.shutdown()
        for _ in range(1000):
            progressed = False
            for w in workers:
                if w.current:
                    w.finish("r", None)
                    progressed = True
            clock.advance(0.5)
            if sd.called and not progressed:
                break
        self.successResultOf(sd)
        self.assertEqual(sorted(fired), list(range(len(ds))), f"seed {seed}")
        self.assertEqual(set(fired.values()), {1} if ds else set(), f"seed {seed}")


class UserWorkerTests(TestCase):
    timeout = 10

    def test_a_user_written_worker_works(self) -> None:
        from zope.interface import implementer

        @implementer(IWorker)
        class Doubler:
            cQualified: list[Any] = []

            def __init__(self) -> None:
                self.iQualified: list[Any] = []

            def setResignator(self, f: Any) -> None:
                pass

            def run(self, task: Any) -> Deferred[None]:
                f, args, kw = task.callTuple
                task.callback((b"r", 2 * f(*args, **kw)))
                return defer.succeed(None)

            def stop(self) -> Deferred[None]:
                return defer.succeed(None)

            def crash(self) -> list[Any]:
                return []

        q = TaskQueue(Doubler(), reactor=Clock())
        self.assertEqual(self.successResultOf(q.call(abs, -21)), 42)
        self.successResultOf(q.shutdown())

    def test_nullqueue(self) -> None:
        q = NullQueue(returnFailure=True, reactor=Clock())
        self.failureResultOf(q.call(boom), ZeroDivisionError)
        self.assertEqual(self.successResultOf(q.call(abs, -2)), 2)
        self.successResultOf(q.shutdown())


class RefusingWorkerTests(TestCase):
    timeout = 10

    def test_a_worker_refusing_on_the_spot_does_not_spin_the_loop(self) -> None:
        class Refuser(ManualWorker):
            def run(self, task: Any) -> None:  # type: ignore[override]
                self.log.append(task)
                task.innocent = True
                task.callback(("d", "not now"))

        clock = Clock()
        w = Refuser()
        q = TaskQueue(w, returnFailure=True, reactor=clock)
        d = q.call(abs, -1)
        self.assertEqual(len(w.log), 1)
        for turn in range(5):
            clock.advance(0.005)
            self.assertEqual(len(w.log), turn + 2)
        self.assertNoResult(d)
        q.detachWorker(w, crash=True)
        q.attachWorker(AsyncWorker())
        self.assertEqual(self.successResultOf(d), 1)


class PipeliningWorker(ManualWorker):
    """A ManualWorker that takes up to *window* tasks at once, like ThreadWorker."""

    runsInOrder = True

    def __init__(self, window: int, name: str = "w") -> None:
        super().__init__(name=name)
        self.window = window
        self.waiter: Deferred[None] | None = None

    def run(self, task: Any) -> Deferred[None] | None:  # type: ignore[override]
        self.log.append(task)
        self.current.append((task, None))
        if len(self.current) < self.window:
            return None
        self.waiter = Deferred()
        return self.waiter

    def finishAll(self) -> None:
        batch, self.current = self.current, []
        for task, _ in batch:
            task.callback(("r", task.callTuple[1][0]))
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.callback(None)


class PipelineDispatchTests(TestCase):
    """Workers that take several tasks at once: who gets which queued call."""

    timeout = 10

    def test_fills_least_loaded_first_then_the_one_ready_worker_in_order(self) -> None:
        w1, w2 = PipeliningWorker(3, "w1"), PipeliningWorker(3, "w2")
        q = TaskQueue(w1, w2, returnFailure=True, reactor=Clock())
        ds = [q.call(lambda x: x, i) for i in range(10)]

        def got(w: PipeliningWorker) -> list[int]:
            return [t.callTuple[1][0] for t in w.log]

        # Taken as submitted, alternately (the least loaded first), until full.
        self.assertEqual(got(w1), [0, 2, 4])
        self.assertEqual(got(w2), [1, 3, 5])
        self.assertEqual(q.counts()["queued"], 4)
        # One worker comes free: it alone takes the next calls, in order.
        w1.finishAll()
        self.assertEqual(got(w1), [0, 2, 4, 6, 7, 8])
        self.assertEqual(q.counts()["queued"], 1)
        w2.finishAll()
        self.assertEqual(got(w2), [1, 3, 5, 9])
        w1.finishAll()
        w2.finishAll()
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(10)))
        self.successResultOf(q.shutdown())

    def test_both_ready_workers_share_a_backlog(self) -> None:
        w1, w2 = PipeliningWorker(2, "w1"), PipeliningWorker(2, "w2")
        q = TaskQueue(w1, w2, returnFailure=True, reactor=Clock())
        ds = [q.call(lambda x: x, i) for i in range(12)]
        # Both free up in one reactor turn: they share what is queued.
        w1.current, w2.current, batch = [], [], w1.current + w2.current
        waiters = [w1.waiter, w2.waiter]
        w1.waiter = w2.waiter = None
        for task, _ in batch:
            task.callback(("r", task.callTuple[1][0]))
        for waiter in waiters:
            assert waiter is not None
            waiter.callback(None)
        self.assertEqual(len(w1.current), 2)
        self.assertEqual(len(w2.current), 2)
        while w1.current or w2.current:
            w1.finishAll()
            w2.finishAll()
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(12)))
        self.successResultOf(q.shutdown())

    def test_only_the_worker_running_a_series_takes_its_next_calls(self) -> None:
        # w1 runs its tasks in order: s2 and s3 may wait there behind s1. The
        # idle w2 may not start them beside s1; plain calls still go there.
        w1, w2 = PipeliningWorker(5, "w1"), PipeliningWorker(5, "w2")
        q = TaskQueue(w1, w2, returnFailure=True, reactor=Clock())
        ds = [q.call(lambda x: x, f"s{i}", series="S") for i in (1, 2, 3)]
        self.assertEqual([t.callTuple[1][0] for t in w1.log], ["s1", "s2", "s3"])
        self.assertEqual(w2.log, [])
        ds.append(q.call(lambda x: x, "plain"))
        self.assertEqual([t.callTuple[1][0] for t in w2.log], ["plain"])
        w1.finishAll()
        w2.finishAll()
        self.assertEqual([self.successResultOf(d) for d in ds], ["s1", "s2", "s3", "plain"])
        self.successResultOf(q.shutdown())

    def test_a_worker_running_tasks_side_by_side_gets_one_task_of_a_series(self) -> None:
        # Without runsInOrder, tasks held by a worker may run at once: the
        # next task of a series waits in the queue until the previous one ends.
        w1, w2 = PipeliningWorker(5, "w1"), PipeliningWorker(5, "w2")
        w1.runsInOrder = w2.runsInOrder = False  # type: ignore[misc]
        q = TaskQueue(w1, w2, returnFailure=True, reactor=Clock())
        ds = [q.call(lambda x: x, f"s{i}", series="S") for i in (1, 2)]
        self.assertEqual([t.callTuple[1][0] for t in w1.log + w2.log], ["s1"])
        self.assertEqual(q.counts()["queued"], 1)
        ds.append(q.call(lambda x: x, "plain"))  # not held back by S
        self.assertEqual(len(w1.log) + len(w2.log), 2)
        w1.finishAll()
        w2.finishAll()
        self.assertEqual(q.counts()["queued"], 0)
        self.assertIn("s2", [t.callTuple[1][0] for t in w1.log + w2.log])
        w1.finishAll()
        w2.finishAll()
        self.assertEqual([self.successResultOf(d) for d in ds], ["s1", "s2", "plain"])
        self.successResultOf(q.shutdown())

    def test_a_series_task_never_overtakes_one_waiting_behind_other_work(self) -> None:
        w1, w2 = PipeliningWorker(5, "w1"), PipeliningWorker(5, "w2")
        q = TaskQueue(w1, w2, returnFailure=True, reactor=Clock())
        q.call(lambda x: x, "X")
        q.call(lambda x: x, "Y")
        q.call(lambda x: x, "S1", series="S")  # behind X on w1
        self.assertEqual([t.callTuple[1][0] for t in w1.log], ["X", "S1"])
        w2.finishAll()  # w2 is idle now; S1 still waits behind X
        q.call(lambda x: x, "S2", series="S")
        self.assertNotIn("S2", [t.callTuple[1][0] for t in w2.log])  # it would start first
        q.call(lambda x: x, "plain")  # other work still flows to w2
        self.assertIn("plain", [t.callTuple[1][0] for t in w2.log])
        while w1.current or w2.current:
            w1.finishAll()
            w2.finishAll()
        self.assertEqual(q.counts()["queued"], 0)
        self.successResultOf(q.shutdown())

    def test_series_call_on_an_empty_queue_goes_to_a_qualified_worker(self) -> None:
        plain, gpu = PipeliningWorker(5, "plain"), PipeliningWorker(5, "gpu")
        gpu.iQualified = ["gpu"]
        q = TaskQueue(plain, gpu, returnFailure=True, reactor=Clock())
        ds = [q.call(lambda x: x, i, series="gpu") for i in range(3)]
        self.assertEqual([t.callTuple[1][0] for t in gpu.log], [0, 1, 2])
        self.assertEqual(plain.log, [])
        gpu.finishAll()
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])
        self.successResultOf(q.shutdown())


class _OneAtATimeWorker(PipeliningWorker):
    """A pipelining worker that runs its tasks one at a time, oldest first."""

    def running(self) -> list[Any]:
        return [task for task, _ in self.current[:1]]

    def finishOne(self, position: int = 0) -> None:
        task, _ = self.current.pop(0)
        task.callback(("r", task.callTuple[1][0]))
        self._freed()

    def crash(self) -> list[Any]:  # type: ignore[override]
        """Its process dies: the running task is lost, the others are innocent."""
        batch, self.current = self.current, []
        for i, (task, _) in enumerate(batch):
            task.innocent = i > 0
            task.callback(("d", "died"))
        self._freed()
        return []

    def _freed(self) -> None:
        waiter = self.waiter
        if waiter is not None and len(self.current) < self.window:
            self.waiter = None
            waiter.callback(None)


class _SideBySideWorker(_OneAtATimeWorker):
    """A pipelining worker that runs all the tasks it holds at once (like Dask)."""

    runsInOrder = False

    def running(self) -> list[Any]:
        return [task for task, _ in self.current]

    def finishOne(self, position: int = 0) -> None:
        task, _ = self.current.pop(position % len(self.current))
        task.callback(("r", task.callTuple[1][0]))
        self._freed()

    def crash(self) -> list[Any]:  # type: ignore[override]
        batch, self.current = self.current, []
        for task, _ in batch:  # all were running: all lost
            task.callback(("d", "died"))
        self._freed()
        return []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("call"), st.sampled_from(["A", "B", None])),
            st.tuples(st.just("finish"), st.integers(0, 2), st.integers(0, 2)),
            st.tuples(st.just("crash"), st.integers(0, 2)),
        ),
        max_size=60,
    )
)
def test_a_series_runs_in_sequence_on_pipelining_workers(ops: list[Any]) -> None:
    """
    Whatever the interleaving of calls, finishes and worker crashes: at most
    one task of a series runs at a time, each series starts in submission
    order (a re-run task in its old place), and every call fires once.
    """
    workers = [_OneAtATimeWorker(3, "w1"), _OneAtATimeWorker(3, "w2"), _SideBySideWorker(3, "w3")]
    q = TaskQueue(*workers, returnFailure=True, reactor=Clock())
    started: list[tuple[Any, int]] = []  # (series, submission number), in start order
    seen: set[Any] = set()  # attempts seen running
    results: list[Any] = []

    def noteStarts() -> None:
        # Attempts that start running in the same step start together.
        running = [task for w in workers for task in w.running()]
        perSeries: dict[Any, int] = {}
        new = []
        for task in running:
            series, number = task.callTuple[1][0]
            if series is not None:
                perSeries[series] = perSeries.get(series, 0) + 1
                assert perSeries[series] == 1, (series, running)
            if task not in seen:
                seen.add(task)
                new.append((number, series))
        started.extend((series, number) for number, series in sorted(new))

    submitted = 0
    for op in ops:
        if op[0] == "call":
            d = q.call(lambda x: x, (op[1], submitted), series=op[1])
            d.addBoth(results.append)
            submitted += 1
        elif workers[op[1]].current:
            if op[0] == "finish":
                workers[op[1]].finishOne(op[2])
            else:
                workers[op[1]].crash()
        noteStarts()
    while any(w.current for w in workers):
        for w in workers:
            if w.current:
                w.finishOne()
                noteStarts()
    for series in ("A", "B"):
        numbers = [n for s, n in started if s == series]
        assert numbers == sorted(numbers), (series, started)
    # Each call fired once: with its own value, or lost twice.
    values = [r[1] for r in results if isinstance(r, tuple)]
    lost = [r for r in results if isinstance(r, Failure) and r.check(errors.WorkerLost)]
    assert len(set(values)) == len(values)
    assert len(values) + len(lost) == len(results) == submitted


class CancelledCallTests(TestCase):
    timeout = 10

    def test_a_cancelled_call_neither_breaks_nor_wedges_the_queue(self) -> None:
        w = ManualWorker()
        q = TaskQueue(w, returnFailure=True, reactor=Clock())
        d = q.call(abs, -1)
        self.assertIsInstance(d, Deferred)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        w.finish("r", 1)  # the late result is dropped quietly
        self.assertEqual(q.counts()["pending"], 0)
        d2 = q.call(abs, -2)
        w.finish("r", 2)
        self.assertEqual(self.successResultOf(d2), 2)
        self.successResultOf(q.shutdown())

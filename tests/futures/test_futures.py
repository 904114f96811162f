"""
`asynqueue.futures`: the ``concurrent.futures`` contract, and what we add.

Most tests are trial TestCases: trial runs the reactor in the main thread,
and each test's blocking code (what a user of an executor writes) runs in a
thread of its own, so the executors use that running reactor. The tests at
the end run scripts in fresh interpreters, where the executors start the
reactor themselves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from asynqueue import ThreadQueue, errors
from asynqueue.futures import ProcessPoolExecutor, QueueExecutor, ThreadPoolExecutor

from ..helpers import cancel as helpers_cancel
from ..helpers import common as helpers
from ..helpers import conformance as helpers_conformance
from ..helpers import process as helpers_process

ROOT = Path(__file__).resolve().parent.parent.parent


def blocking(test: Callable[[], None]) -> Any:
    """Run a test body that blocks in a thread, off the (trial) reactor thread."""
    return deferToThread(test)


def keywords(**kw: Any) -> dict[str, Any]:
    return kw


def fail(message: str) -> None:
    raise ValueError(message)


def sleepThen(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


class Gate:
    """Holds thread workers until opened."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def hold(self, value: Any = None) -> Any:
        if not self.event.wait(20):
            raise AssertionError("the gate was never opened")
        return value


class UsesTrialsReactor(TestCase):
    """The executors must use the reactor trial runs, never start their own."""

    def tearDown(self) -> None:
        from asynqueue._futures import _executors

        self.assertIsNone(_executors._reactorThread)


class ProcessPoolTests(UsesTrialsReactor):
    timeout = 60

    def holdFolder(self) -> str:
        """
        A fresh folder for `helpers_conformance.hold` calls: released (so no
        child stays held) and removed when the test ends.
        """
        folder = tempfile.mkdtemp(prefix="aqgroup")
        self.addCleanup(shutil.rmtree, folder, True)
        self.addCleanup(Path(folder, helpers_conformance.RELEASE).touch)
        return folder

    def test_submit_results_errors_lambdas_and_closures(self) -> Any:
        def body() -> None:
            base = 40
            with ProcessPoolExecutor(2) as pool:
                self.assertIsInstance(pool, Executor)
                future = pool.submit(pow, 2, 10)
                self.assertIsInstance(future, Future)
                self.assertEqual(future.result(), 1024)
                self.assertEqual(pool.submit(lambda x: x + 1, 1).result(), 2)
                self.assertEqual(pool.submit(lambda: base + 2).result(), 42)
                failing = pool.submit(int, "not a number")
                with self.assertRaises(ValueError):
                    failing.result()
                # The worker's traceback comes along as the cause.
                self.assertIn("not a number", str(failing.exception().__cause__))
                self.assertNotEqual(pool.submit(helpers_process.pid).result(), os.getpid())

        return blocking(body)

    def test_map_in_order_in_chunks_and_with_a_timeout(self) -> Any:
        def body() -> None:
            with ProcessPoolExecutor(2) as pool:
                self.assertEqual(
                    list(pool.map(pow, range(50), [2] * 50)), [i * i for i in range(50)]
                )
                for chunksize in (1, 3, 7, 100):
                    self.assertEqual(
                        list(pool.map(pow, range(20), [3] * 20, chunksize=chunksize)),
                        [i**3 for i in range(20)],
                    )
                self.assertEqual(list(pool.map(pow, [1, 2, 3], [2, 2])), [1, 4])  # as zip
                self.assertEqual(list(pool.map(abs, [])), [])
                results = pool.map(helpers_process.pidAfter, [0, 3], timeout=0.5)
                next(results)
                with self.assertRaises(TimeoutError):
                    next(results)
                with self.assertRaises(ValueError):
                    list(pool.map(int, ["1", "x", "3"], chunksize=2))
                # However the items travel in chunks, the results before a
                # failure arrive, then its exception, with the worker's traceback.
                for chunksize in (1, 2, 64):
                    texts = [str(i) for i in range(300)]
                    texts[150] = "x"
                    seen = []
                    with self.assertRaises(ValueError) as caught:
                        for value in pool.map(int, texts, chunksize=chunksize):
                            seen.append(value)
                    self.assertEqual(seen, list(range(150)))
                    self.assertIn("int", str(caught.exception.__cause__))

        return blocking(body)

    def test_a_dead_worker_fails_only_its_own_call(self) -> Any:
        def body() -> None:
            with ProcessPoolExecutor(2) as pool:
                slow = pool.submit(helpers_process.pidAfter, 0.5)
                dead = pool.submit(helpers_process.exitWith, 3)
                with self.assertRaises(errors.WorkerLost):
                    dead.result()
                self.assertIsInstance(slow.result(), int)
                self.assertEqual(pool.submit(helpers_process.add, 2, 3).result(), 5)

        return blocking(body)

    def test_a_burst_travels_in_groups_and_a_dead_worker_fails_only_its_call(self) -> Any:
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        def body() -> None:
            with ProcessPoolExecutor(2) as pool:

                def burst() -> list[Future[Any]]:
                    # Submitted in one reactor turn: one batch, sent in groups.
                    calls = [pool.submit(helpers_process.add, i, 1) for i in range(40)]
                    calls[17] = pool.submit(helpers_process.exitWith, 3)
                    return calls

                futures = blockingCallFromThread(reactor, burst)
                for i, future in enumerate(futures):
                    if i == 17:
                        with self.assertRaises(errors.WorkerLost):
                            future.result()
                    else:
                        self.assertEqual(future.result(), i + 1)
                self.assertEqual(pool.submit(helpers_process.add, 2, 3).result(), 5)

        return blocking(body)

    def test_calls_of_a_group_behind_a_long_one_run_in_the_other_process(self) -> Any:
        # A burst travels in groups; the child running one whose call runs
        # long stops it after that call: the outcomes so far come at once,
        # the calls not started go to the other child. Each runs once.
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        folder = tempfile.mkdtemp(prefix="aqgroup")
        self.addCleanup(shutil.rmtree, folder, True)
        holdDir = os.path.join(folder, "hold")
        os.mkdir(holdDir)
        self.addCleanup(Path(holdDir, helpers_conformance.RELEASE).touch)
        log = os.path.join(folder, "log")

        def body() -> None:
            with ProcessPoolExecutor(2) as pool:
                pool.submit(helpers_process.add, 1, 1).result()  # (both children up)

                def burst() -> list[Future[Any]]:
                    # Submitted in one reactor turn: one batch, sent in groups
                    # of 36 // (4 * 2) = 4; the fifth is [fails, holds, 18, 19].
                    calls = []
                    for i in range(36):
                        if i == 16:
                            calls.append(pool.submit(helpers_process.raiseKeyError, "k16"))
                        elif i == 17:
                            calls.append(pool.submit(helpers_conformance.hold, holdDir, 40.0))
                        else:
                            calls.append(pool.submit(helpers_process.logRun, log, str(i)))
                    return calls

                futures = blockingCallFromThread(reactor, burst)
                quick = [f for i, f in enumerate(futures) if i not in (16, 17)]
                # (Behind the hold, these would wait for its 40 s.)
                tags = [f.result(timeout=20) for f in quick]
                self.assertEqual(tags, [str(i) for i in range(36) if i not in (16, 17)])
                with self.assertRaises(KeyError) as ctx:
                    futures[16].result(timeout=20)  # (ran before the hold: sent ahead)
                self.assertIn("raiseKeyError", str(ctx.exception.__cause__))
                self.assertFalse(futures[17].done())
                Path(holdDir, helpers_conformance.RELEASE).touch()
                self.assertEqual(futures[17].result(timeout=20), "released")
                self.assertEqual(helpers_conformance.attempts(holdDir), 1)
                begun = Path(log).read_text().split("\n")
                for tag in tags:
                    self.assertEqual(begun.count(f"b {tag}"), 1, tag)

        return blocking(body)

    def test_an_outcome_sent_ahead_that_does_not_unpickle_here_fails_its_call(self) -> Any:
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        folder = self.holdFolder()

        def body() -> None:
            with ProcessPoolExecutor(2, initializer=helpers_process.makeChildOnlyModule) as pool:
                pool.submit(helpers_process.add, 1, 1).result()

                def burst() -> list[Future[Any]]:
                    # Groups of 24 // (4 * 2) = 3: the third is [7, child only, holds].
                    calls = []
                    for i in range(24):
                        if i == 7:
                            calls.append(pool.submit(helpers_process.childOnlyThing))
                        elif i == 8:
                            calls.append(pool.submit(helpers_conformance.hold, folder, 40.0))
                        else:
                            calls.append(pool.submit(helpers_process.add, i, 0))
                    return calls

                futures = blockingCallFromThread(reactor, burst)
                # Both sent ahead while the hold runs; only the one fails.
                self.assertEqual(futures[6].result(timeout=20), 6)
                with self.assertRaises(errors.WorkerError) as ctx:
                    futures[7].result(timeout=20)
                self.assertIn("could not be unpickled", str(ctx.exception))
                self.assertFalse(futures[8].done())
                Path(folder, helpers_conformance.RELEASE).touch()
                self.assertEqual(futures[8].result(timeout=20), "released")
                self.assertEqual(
                    [f.result(timeout=20) for i, f in enumerate(futures) if i not in (7, 8)],
                    [i for i in range(24) if i not in (7, 8)],
                )

        return blocking(body)

    def test_calls_a_child_gives_back_run_before_the_calls_submitted_after_them(self) -> Any:
        # The rest of a group a child stops goes to the front of the queue:
        # the other child runs it next, not after every group still queued.
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        folder = self.holdFolder()
        log = os.path.join(folder, "log")

        def body() -> None:
            with ProcessPoolExecutor(2) as pool:
                pool.submit(helpers_process.add, 1, 1).result()  # (both children up)

                def burst() -> list[Future[Any]]:
                    # Groups of 40 // (4 * 2) = 5: the first is the hold and
                    # 1-4; the other child takes 5-39, 10 ms each (about 350
                    # ms; the group's rest comes back after about 20).
                    calls = [pool.submit(helpers_conformance.hold, folder, 40.0)]
                    calls += [
                        pool.submit(helpers_process.logRun, log, str(i), 0.01) for i in range(1, 40)
                    ]
                    return calls

                futures = blockingCallFromThread(reactor, burst)
                tags = [f.result(timeout=20) for f in futures[1:]]
                self.assertEqual(tags, [str(i) for i in range(1, 40)])
                Path(folder, helpers_conformance.RELEASE).touch()
                self.assertEqual(futures[0].result(timeout=20), "released")
            begun = [line[2:] for line in Path(log).read_text().split("\n") if line[:2] == "b "]
            given = [begun.index(str(i)) for i in range(1, 5)]
            self.assertEqual(given, sorted(given))  # (in their order)
            self.assertLess(max(given), begun.index("39"), begun)

        return blocking(body)

    def test_a_group_asked_back_while_its_child_imports_for_it_comes_back(self) -> Any:
        # The child unpickling a group imports a module on first use (half
        # a second); the parent asks for the group back meanwhile, its
        # signal arriving before the group began. The group comes back as it
        # begins, and the calls behind its long call run elsewhere.
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        from ..helpers import slowimport

        folder = self.holdFolder()

        def body() -> None:
            with ProcessPoolExecutor(2) as pool:
                pool.submit(helpers_process.add, 1, 1).result()  # (both children up)

                def burst() -> list[Future[Any]]:
                    # Groups of 40 // (4 * 2) = 5: the first is [slow import,
                    # hold, 2, 3, 4].
                    calls = [
                        pool.submit(slowimport.ident, 0),
                        pool.submit(helpers_conformance.hold, folder, 40.0),
                    ]
                    calls += [pool.submit(helpers_process.add, i, 0) for i in range(2, 40)]
                    return calls

                futures = blockingCallFromThread(reactor, burst)
                # (Behind the hold, these would wait for its 40 s.)
                self.assertEqual([f.result(timeout=15) for f in futures[2:]], list(range(2, 40)))
                self.assertEqual(futures[0].result(timeout=15), 0)
                self.assertFalse(futures[1].done())
                Path(folder, helpers_conformance.RELEASE).touch()
                self.assertEqual(futures[1].result(timeout=20), "released")
                self.assertEqual(helpers_conformance.attempts(folder), 1)

        return blocking(body)

    def test_a_shutdown_still_runs_the_calls_a_group_gives_back(self) -> Any:
        # The pool shuts down while a group holds: the calls it gives back
        # were submitted before, so they run (the standard pool runs every
        # call submitted before its shutdown).
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        folder = self.holdFolder()

        def body() -> None:
            pool = ProcessPoolExecutor(2)
            pool.submit(helpers_process.add, 1, 1).result()

            def burst() -> list[Future[Any]]:
                # Groups of 16 // (4 * 2) = 2: the third is [holds, 5].
                return [
                    pool.submit(helpers_conformance.hold, folder, 40.0)
                    if i == 4
                    else pool.submit(helpers_process.add, i, 0)
                    for i in range(16)
                ]

            futures = blockingCallFromThread(reactor, burst)
            pool.shutdown(wait=False)
            self.assertEqual(futures[5].result(timeout=20), 5)  # (given back meanwhile)
            self.assertFalse(futures[4].done())
            Path(folder, helpers_conformance.RELEASE).touch()
            self.assertEqual(futures[4].result(timeout=20), "released")
            self.assertEqual(
                [f.result(timeout=20) for i, f in enumerate(futures) if i != 4],
                [i for i in range(16) if i != 4],
            )
            pool.shutdown(wait=True)

        return blocking(body)

    def test_a_map_chunk_whose_worker_died_runs_again_call_by_call(self) -> Any:
        def body() -> None:
            with ProcessPoolExecutor(2) as pool:
                dies = lambda i: os._exit(3) if i == 6 else i * 10  # noqa: E731
                seen = []
                with self.assertRaises(errors.WorkerLost):
                    for value in pool.map(dies, range(12), chunksize=4):
                        seen.append(value)
                self.assertEqual(seen, [0, 10, 20, 30, 40, 50])
                self.assertEqual(list(pool.map(abs, [-1, -2], chunksize=2)), [1, 2])

        return blocking(body)

    def test_options_give_a_per_call_timeout(self) -> Any:
        def body() -> None:
            with ProcessPoolExecutor(1) as pool:
                quick = pool.options(timeout=0.3)
                stuck = quick.submit(helpers_process.pidAfter, 30)
                with self.assertRaises(errors.TimeoutError):
                    stuck.result()
                self.assertEqual(quick.submit(helpers_process.add, 1, 1).result(), 2)
                self.assertEqual(list(quick.map(abs, [-1, -2])), [1, 2])
                # In a map the timeout is per item: only the stuck one fails.
                results = quick.map(helpers_process.pidAfter, [0, 30])
                self.assertIsInstance(next(results), int)
                with self.assertRaises(errors.TimeoutError):
                    next(results)

        return blocking(body)

    def test_initializer_runs_in_each_process_and_max_tasks_per_child(self) -> Any:
        def body() -> None:
            with ProcessPoolExecutor(
                1,
                initializer=helpers_process.setState,
                initargs=("greeting", "hi"),
                max_tasks_per_child=2,
            ) as pool:
                seen = [
                    pool.submit(helpers_process.getState, "greeting").result() for _ in range(5)
                ]
                self.assertEqual(seen, ["hi"] * 5)
                pids = {pool.submit(helpers_process.pid).result() for _ in range(6)}
                self.assertEqual(len(pids), 3)  # a fresh process every two calls

        return blocking(body)

    def test_a_failing_initializer_breaks_the_pool(self) -> Any:
        def body() -> None:
            pool = ProcessPoolExecutor(
                1, initializer=helpers_process.raiseKeyError, initargs=("k",)
            )
            try:
                future = pool.submit(helpers_process.add, 1, 2)
                with self.assertRaises(BrokenProcessPool) as caught:
                    future.result()
                self.assertIsInstance(caught.exception.__cause__, KeyError)
                with self.assertRaises(BrokenExecutor):
                    pool.submit(helpers_process.add, 1, 2)
            finally:
                pool.shutdown()

        return blocking(body)

    def test_a_dropped_pool_leaves_no_child(self) -> Any:
        def body() -> None:
            with ProcessPoolExecutor(2) as pool:
                pids = {pool.submit(helpers_process.pidAfter, 0.2).result() for _ in range(4)}
            for pid in pids:
                self.assertTrue(helpers.isGone(pid), pid)

        return blocking(body)


class ContractTests(UsesTrialsReactor):
    """The ``concurrent.futures`` contract, on thread pools (quick to start)."""

    timeout = 30

    def test_keywords_all_reach_the_callable(self) -> Any:
        def body() -> None:
            for make in (lambda: ThreadPoolExecutor(2), lambda: ProcessPoolExecutor(1)):
                with make() as pool:
                    kw = {"timeout": 3, "series": "s", "niceness": 99, "raw": 1, "x": 2}
                    self.assertEqual(pool.submit(keywords, **kw).result(), kw)
                    self.assertEqual(pool.submit(keywords, x=1).result(), {"x": 1})

        return blocking(body)

    def test_submit_after_shutdown_and_bad_input(self) -> Any:
        def body() -> None:
            pool = ThreadPoolExecutor(1)
            with self.assertRaises(TypeError):
                pool.submit("not callable")
            with self.assertRaises(ValueError):
                pool.map(abs, [1], chunksize=0)
            with self.assertRaises(TypeError):
                pool.options(priority=1)
            with self.assertRaises(ValueError):
                pool.options(niceness=50)
            with self.assertRaises(ValueError):
                pool.options(timeout=-1)
            with self.assertRaises(TypeError):
                pool.options(series=[1])
            pool.shutdown()
            pool.shutdown()  # again: harmless
            with self.assertRaises(RuntimeError):
                pool.submit(abs, 1)
            with self.assertRaises(RuntimeError):
                pool.map(abs, [1])
            for bad, error in ((0, ValueError), (-1, ValueError), ("2", TypeError)):
                with self.assertRaises(error):
                    ThreadPoolExecutor(bad)
                with self.assertRaises(error):
                    ProcessPoolExecutor(bad)
            with self.assertRaises(TypeError):
                ThreadPoolExecutor(1, initializer=3)
            with self.assertRaises(ValueError):
                ProcessPoolExecutor(1, max_tasks_per_child=0)
            with self.assertRaises(TypeError):
                QueueExecutor(lambda: "not a queue")

        return blocking(body)

    def test_cancel_a_waiting_call(self) -> Any:
        def body() -> None:
            gate = Gate()
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(gate.hold, "held")
                waiting = pool.submit(abs, -1)
                self.assertFalse(waiting.running())
                self.assertTrue(waiting.cancel())
                self.assertTrue(waiting.cancel())  # still cancelled, still True
                self.assertTrue(waiting.cancelled())
                self.assertTrue(waiting.done())
                with self.assertRaises(CancelledError):
                    waiting.result()
                done, notDone = wait([waiting, held], return_when=FIRST_COMPLETED)
                self.assertEqual((done, notDone), ({waiting}, {held}))
                self.assertIs(next(as_completed([waiting, held])), waiting)
                gate.event.set()
                self.assertEqual(held.result(), "held")
                self.assertFalse(held.cancel())  # done: too late
                self.assertEqual(pool.submit(abs, -2).result(), 2)

        return blocking(body)

    def test_cancel_of_a_running_call_stops_it(self) -> Any:
        # Beyond the standard library: a call already running in a worker
        # process is interrupted, its side effect never happens, and the
        # same pool serves the next call.
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        started, marker = os.path.join(folder, "started"), os.path.join(folder, "ran")

        def body() -> None:
            with ProcessPoolExecutor(1) as pool:
                running = pool.submit(helpers_cancel.markThenSleepThenMark, started, marker, 30)
                helpers.waitUntilSync(lambda: os.path.exists(started), 20)
                self.assertTrue(running.cancel())
                with self.assertRaises(CancelledError):
                    running.result()
                self.assertEqual(pool.submit(abs, -3).result(timeout=20), 3)
            self.assertFalse(os.path.exists(marker))

        return blocking(body)

    def test_a_cancelled_call_of_a_burst_never_runs(self) -> Any:
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        def body() -> None:
            gate = Gate()
            ran: list[int] = []
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(gate.hold)
                futures = blockingCallFromThread(
                    reactor, lambda: [pool.submit(ran.append, i) for i in range(40)]
                )
                cancelled = {3, 20, 39}
                for i in cancelled:
                    self.assertTrue(futures[i].cancel())
                gate.event.set()
                held.result()
                wait(futures)
            self.assertEqual(ran, [i for i in range(40) if i not in cancelled])
            self.assertEqual([i for i, f in enumerate(futures) if f.cancelled()], sorted(cancelled))

        return blocking(body)

    def test_shutdown_cancel_futures_and_no_wait(self) -> Any:
        def body() -> None:
            gate = Gate()
            pool = ThreadPoolExecutor(1)
            held = pool.submit(gate.hold, 1)
            time.sleep(0.1)  # let the worker take it
            rest = [pool.submit(abs, -i) for i in range(20)]
            pool.shutdown(wait=False, cancel_futures=True)
            with self.assertRaises(RuntimeError):
                pool.submit(abs, 1)
            self.assertTrue(rest[-1].cancelled())
            gate.event.set()
            pool.shutdown(wait=True)
            self.assertEqual(held.result(), 1)
            self.assertTrue(all(f.done() for f in rest))
            for i, f in enumerate(rest):
                if not f.cancelled():
                    self.assertEqual(f.result(), i)

        return blocking(body)

    def test_shutdown_waits_for_every_call(self) -> Any:
        def body() -> None:
            pool = ThreadPoolExecutor(2)
            futures = [pool.submit(sleepThen, 0.01, i) for i in range(50)]
            pool.shutdown(wait=True)
            self.assertTrue(all(f.done() for f in futures))
            self.assertEqual([f.result() for f in futures], list(range(50)))

        return blocking(body)

    def test_shutdown_waits_for_a_map_still_sending_its_items(self) -> Any:
        def body() -> None:
            pool = ThreadPoolExecutor(1)
            # One item per batch: most of them wait to be sent when shutdown comes.
            results = pool.map(sleepThen, [0.005] * 40, range(40), chunksize=1)
            pool.shutdown(wait=True)
            self.assertEqual(list(results), list(range(40)))

        return blocking(body)

    def test_map_takes_its_inputs_at_the_call(self) -> Any:
        def inputs() -> Any:
            yield -1
            raise KeyError("bad input")

        def body() -> None:
            with ThreadPoolExecutor(2) as pool:
                with self.assertRaises(KeyError):
                    pool.map(abs, inputs())  # here, not when iterating
                seen = [-3, -4]
                results = pool.map(abs, seen)
                seen.append(-5)  # too late: it was read at the call
                self.assertEqual(list(results), [3, 4])

        return blocking(body)

    def test_leaving_map_early_cancels_the_rest(self) -> Any:
        def body() -> None:
            gate = Gate()
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(gate.hold)
                results = pool.map(abs, range(30))
                results.close()  # type: ignore[attr-defined]
                gate.event.set()
                held.result()
                # Nothing was taken by the worker but the call it was holding.
                self.assertEqual(pool.submit(abs, -5).result(), 5)

        return blocking(body)

    def test_a_thread_stuck_past_its_timeout_is_left_behind(self) -> Any:
        def body() -> None:
            def name() -> str:
                return threading.current_thread().name

            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(name).result()
                stuck = pool.options(timeout=0.2).submit(time.sleep, 5)
                with self.assertRaises(errors.TimeoutError):
                    stuck.result()
                # A fresh thread serves the next call, not the stuck one.
                self.assertNotEqual(pool.submit(name).result(), first)

        return blocking(body)

    def test_a_task_may_submit_to_its_own_pool_and_wait(self) -> Any:
        # As with the standard pool: while a thread is free, a call made from
        # a running call runs, even one first lined up behind a call that
        # waits for it.
        def body() -> None:
            with ThreadPoolExecutor(4) as pool:

                def inner(n: int) -> int:
                    return n * 10

                def outer(n: int) -> int:
                    return pool.submit(inner, n).result(timeout=20) + 1

                for _ in range(3):
                    futures = [pool.submit(outer, n) for n in range(3)]
                    self.assertEqual([f.result(timeout=30) for f in futures], [1, 11, 21])

        return blocking(body)

    def test_calls_of_a_group_behind_a_long_one_run_on_other_threads(self) -> Any:
        # A burst travels in groups; a call stuck in one must not hold up the
        # calls behind it in its group while other threads are free.
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        gate = Gate()
        self.addCleanup(gate.event.set)

        def body() -> None:
            with ThreadPoolExecutor(2) as pool:

                def burst() -> list[Future[Any]]:
                    # Submitted in one reactor turn: one batch, sent in groups
                    # (of 40 // (4 * 2) = 5); the first group starts with the stuck call.
                    calls = [pool.submit(gate.hold, "long")]
                    calls += [pool.submit(abs, -i) for i in range(1, 40)]
                    return calls

                futures = blockingCallFromThread(reactor, burst)
                self.assertEqual([f.result(timeout=10) for f in futures[1:]], list(range(1, 40)))
                self.assertFalse(futures[0].done())
                gate.event.set()
                self.assertEqual(futures[0].result(timeout=10), "long")

        return blocking(body)

    def test_calls_a_group_gives_back_run_before_the_calls_submitted_after_them(self) -> Any:
        # Given back to the queue, they go to its front: the free thread runs
        # them next, not after every group still queued behind them.
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        gate = Gate()
        self.addCleanup(gate.event.set)
        ran: list[int] = []  # (list.append is atomic)

        def step(i: int) -> int:
            time.sleep(0.01)
            ran.append(i)
            return i

        def body() -> None:
            with ThreadPoolExecutor(2) as pool:

                def burst() -> list[Future[Any]]:
                    # Groups of 40 // (4 * 2) = 5: the first is the stuck
                    # call and 1-4; the free thread takes 5-39, 10 ms each
                    # (about 350 ms; the group's rest comes back after 20).
                    calls = [pool.submit(gate.hold, "long")]
                    calls += [pool.submit(step, i) for i in range(1, 40)]
                    return calls

                futures = blockingCallFromThread(reactor, burst)
                self.assertEqual([f.result(timeout=20) for f in futures[1:]], list(range(1, 40)))
                gate.event.set()
                self.assertEqual(futures[0].result(timeout=10), "long")
            given = [ran.index(i) for i in range(1, 5)]
            self.assertEqual(given, sorted(given))  # (in their order)
            self.assertLess(max(given), ran.index(39), ran)

        return blocking(body)

    def test_a_shutdown_still_runs_the_calls_a_thread_group_gives_back(self) -> Any:
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        gate = Gate()
        self.addCleanup(gate.event.set)

        def body() -> None:
            pool = ThreadPoolExecutor(2)

            def burst() -> list[Future[Any]]:
                # Groups of 40 // (4 * 2) = 5; the first starts with the stuck call.
                calls = [pool.submit(gate.hold, "long")]
                calls += [pool.submit(abs, -i) for i in range(1, 40)]
                return calls

            futures = blockingCallFromThread(reactor, burst)
            pool.shutdown(wait=False)
            self.assertEqual([f.result(timeout=10) for f in futures[1:]], list(range(1, 40)))
            self.assertFalse(futures[0].done())
            gate.event.set()
            self.assertEqual(futures[0].result(timeout=10), "long")
            pool.shutdown(wait=True)

        return blocking(body)

    def test_thread_names_and_initializer(self) -> Any:
        def body() -> None:
            seen: list[str] = []

            def init(tag: str) -> None:
                seen.append(f"{tag}:{threading.current_thread().name}")

            with ThreadPoolExecutor(
                2, thread_name_prefix="pool", initializer=init, initargs=("i",)
            ) as pool:
                names = {
                    pool.submit(lambda: threading.current_thread().name).result() for _ in range(20)
                }
            self.assertTrue(names <= {"pool_0", "pool_1"}, names)
            self.assertEqual(sorted(seen), ["i:pool_0", "i:pool_1"])

        return blocking(body)

    def test_a_failing_initializer_breaks_a_thread_pool(self) -> Any:
        def body() -> None:
            pool = ThreadPoolExecutor(2, initializer=fail, initargs=("no",))
            with self.assertRaises(BrokenThreadPool):
                pool.submit(abs, 1).result()
            with self.assertRaises(BrokenThreadPool):
                pool.submit(abs, 1)
            pool.shutdown()

        return blocking(body)

    def test_options_niceness_and_series(self) -> Any:
        def body() -> None:
            gate = Gate()
            order: list[str] = []
            with ThreadPoolExecutor(1) as pool:
                held = pool.submit(gate.hold)
                time.sleep(0.1)
                low = pool.options(niceness=20, series="low")
                high = pool.options(series="high")
                futures = [low.submit(order.append, f"low{i}") for i in range(3)]
                futures += [high.submit(order.append, f"high{i}") for i in range(3)]
                gate.event.set()
                held.result()
                wait(futures)
            # Each series in order; the nicer series waits its turn.
            self.assertEqual([x for x in order if x.startswith("low")], ["low0", "low1", "low2"])
            self.assertEqual(
                [x for x in order if x.startswith("high")], ["high0", "high1", "high2"]
            )
            self.assertLess(order.index("high0"), order.index("low2"))

        return blocking(body)

    def test_asyncio_run_in_executor(self) -> Any:
        def body() -> None:
            async def main(pool: Executor) -> list[int]:
                loop = asyncio.get_running_loop()
                return list(
                    await asyncio.gather(*(loop.run_in_executor(pool, abs, -i) for i in range(10)))
                )

            with ThreadPoolExecutor(2) as threads, ProcessPoolExecutor(1) as processes:
                self.assertEqual(asyncio.run(main(threads)), list(range(10)))
                self.assertEqual(asyncio.run(main(processes)), list(range(10)))

        return blocking(body)

    def test_queue_executor_wraps_a_queue(self) -> Any:
        queue = ThreadQueue(2)  # made here, in the reactor thread

        def body() -> None:
            with QueueExecutor(queue, shutdownQueue=False) as pool:
                self.assertEqual(pool.submit(abs, -3).result(), 3)
                with self.assertRaises(KeyError):
                    pool.submit(helpers_process.raiseKeyError, "k").result()
                self.assertEqual(list(pool.map(abs, [-1, -2], chunksize=2)), [1, 2])
                # A generator comes back as such, not as a Deferator.
                self.assertEqual(list(pool.submit(helpers_process.squares, 3).result()), [0, 1, 4])
            self.assertTrue(queue.isRunning())
            with QueueExecutor(lambda: ThreadQueue(1)) as pool:
                self.assertEqual(pool.submit(abs, -4).result(), 4)
            self.assertFalse(pool.queue.isRunning())

        d = blocking(body)
        d.addBoth(lambda r: queue.shutdown().addCallback(lambda _: r))
        return d

    @inlineCallbacks
    def test_queue_executor_on_a_remote_queue(self) -> Any:
        from asynqueue.wire import RemoteQueue, WireServer

        key = b"futures-test-key"
        server = WireServer("tcp:0:interface=127.0.0.1", key=key, workers=2)
        yield server.start()
        self.addCleanup(server.stop)
        description = f"tcp:127.0.0.1:{server.address.port}"

        def body() -> None:
            with QueueExecutor(lambda: RemoteQueue(description, 2, key=key)) as pool:
                self.assertEqual(pool.submit(lambda x: x * 3, 4).result(), 12)
                self.assertNotEqual(pool.submit(helpers_process.pid).result(), os.getpid())
                with self.assertRaises(KeyError):
                    pool.submit(helpers_process.raiseKeyError, "k").result()
                self.assertEqual(list(pool.map(abs, range(-50, 0))), list(range(50, 0, -1)))
                self.assertEqual(
                    pool.submit(keywords, timeout=1, y=2).result(), {"timeout": 1, "y": 2}
                )
            self.assertFalse(pool.queue.isRunning())

        yield blocking(body)

    def test_blocking_in_the_reactor_thread_is_an_error(self) -> Any:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        gate = Gate()

        def inReactor() -> Any:
            pool = ThreadPoolExecutor(1)  # made in the reactor thread: fine
            future = pool.submit(gate.hold, 7)
            with self.assertRaises(RuntimeError) as caught:
                future.result()
            self.assertIn("reactor thread", str(caught.exception))
            with self.assertRaises(RuntimeError):
                future.exception()
            with self.assertRaises(RuntimeError):
                pool.shutdown(wait=True)
            with self.assertRaises(RuntimeError):
                next(pool.map(abs, [-1, -2]))  # its results cannot have come yet
            gate.event.set()
            pool.shutdown(wait=False)

            def finished() -> None:
                self.assertEqual(future.result(), 7)
                pool.shutdown(wait=True)

            return helpers.waitUntil(future.done).addCallback(lambda _: blocking(finished))

        # Inside the running reactor (trial runs a test method before it spins it).
        return deferLater(reactor, 0, inReactor)


def runScript(source: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


class ScriptTests(TestCase):
    """Plain scripts: the executors start the reactor and clean up at exit."""

    timeout = 60

    def test_a_script_that_never_shuts_down_exits_and_leaves_no_child(self) -> Any:
        def body() -> None:
            proc = runScript(
                """
                from asynqueue.futures import ProcessPoolExecutor
                from tests.helpers import process as helpers_process
                pool = ProcessPoolExecutor(2)
                pids = set(pool.map(helpers_process.pidAfter, [0.2, 0.2, 0.2]))
                late = pool.submit(helpers_process.pidAfter, 0.3)  # still running at exit
                print(" ".join(map(str, sorted(pids))), flush=True)
                """
            )
            self.assertEqual(proc.returncode, 0, proc.stderr)
            pids = [int(p) for p in proc.stdout.split()]
            self.assertTrue(pids)
            for pid in pids:
                self.assertTrue(helpers.isGone(pid), pid)

        return blocking(body)

    def test_a_script_with_threads_and_asyncio(self) -> Any:
        def body() -> None:
            proc = runScript(
                """
                import asyncio, threading
                from asynqueue.futures import ThreadPoolExecutor

                async def main():
                    loop = asyncio.get_running_loop()
                    with ThreadPoolExecutor(2) as pool:
                        return await loop.run_in_executor(pool, sum, [1, 2, 3])

                print(asyncio.run(main()))
                print([t.name for t in threading.enumerate() if t.name == "asynqueue-reactor"])
                """
            )
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(proc.stdout.split("\n")[:2], ["6", "['asynqueue-reactor']"])

        return blocking(body)

    def test_aio_awaits_deferreds_on_the_asyncio_reactor(self) -> Any:
        def body() -> None:
            proc = runScript(
                """
                import asyncio
                from twisted.internet import asyncioreactor

                loop = asyncio.new_event_loop()
                asyncio.set_event_loop(loop)
                asyncioreactor.install(loop)
                from twisted.internet import reactor
                from twisted.internet.defer import succeed
                from asynqueue import ThreadQueue, aio

                async def main():
                    q = ThreadQueue(2, returnFailure=True)
                    print(await aio.call(q, sum, [1, 2, 3]))
                    print(await asyncio.gather(*(aio.call(q, pow, 2, n) for n in range(5))))
                    try:
                        await aio.call(q, int, "x")
                    except ValueError:
                        print("ValueError")
                    await aio.asFuture(q.shutdown())

                def start():
                    task = asyncio.ensure_future(main())
                    task.add_done_callback(lambda t: (t.result(), reactor.stop()))

                reactor.callWhenRunning(start)
                reactor.run()

                async def elsewhere():  # plain asyncio, no Twisted in the loop
                    try:
                        aio.asFuture(succeed(1))
                    except RuntimeError as e:
                        print("RuntimeError", "asyncio reactor" in str(e))

                asyncio.run(elsewhere())
                """
            )
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(
                proc.stdout.splitlines(),
                ["6", "[1, 2, 4, 8, 16]", "ValueError", "RuntimeError True"],
            )

        return blocking(body)

    def test_no_second_reactor_thread_for_a_thread_that_runs_the_reactor(self) -> Any:
        def body() -> None:
            proc = runScript(
                """
                from twisted.internet import reactor
                from asynqueue.futures import ThreadPoolExecutor

                reactor.callWhenRunning(reactor.crash)
                reactor.run()  # this thread runs the reactor (and may again)
                try:
                    ThreadPoolExecutor(1)
                except RuntimeError as e:
                    print("RuntimeError", "make executors while it runs" in str(e))
                """
            )
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(proc.stdout.split(), ["RuntimeError", "True"])

        return blocking(body)

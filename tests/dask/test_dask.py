"""DaskWorker and DaskQueue on real Dask clusters (in-process and multi-process)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip(
    "distributed", reason="Dask distributed is not installed (pip install 'asynqueue[dask]')"
)

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.defer import Deferred, inlineCallbacks  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.trial.unittest import TestCase  # noqa: E402

from asynqueue import TaskQueue, errors  # noqa: E402
from asynqueue._core._scheduler import Scheduler  # noqa: E402
from asynqueue._dask._worker import PER_THREAD_MAX  # noqa: E402
from asynqueue.dask_worker import DaskQueue, DaskWorker  # noqa: E402

from ..helpers.common import collect, reap  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------ task functions
# Module level, so worker processes import them by reference.

updated: list[Any] = []


def boom(x: Any) -> None:
    raise KeyError(f"dask boom {x}")


class Unpicklable(Exception):
    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")  # args do not rebuild it: unpickling fails


def raiseUnpicklable() -> None:
    raise Unpicklable(1, 2)


def count(n: int, failAt: int | None = None) -> Any:
    for i in range(n):
        if i == failAt:
            raise ValueError(f"broke at {i}")
        yield i


def whereAmI(*_: Any) -> str:
    return distributed.get_worker().address


def span(seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def label(x: Any) -> Any:
    return x


def markUpdate(tag: str) -> str:
    updated.append(tag)
    return tag


def setEnv(name: str, value: str) -> None:
    os.environ[name] = value


def getEnv(name: str) -> str | None:
    return os.environ.get(name)


def slowUntilKilled(directory: str, times: int) -> int:
    """Sleep the first *times* attempts (writing one pid file each); then return."""
    folder = Path(directory)
    if len(list(folder.iterdir())) < times:
        (folder / f"pid-{os.getpid()}-{time.monotonic_ns()}").write_text(str(os.getpid()))
        time.sleep(60)
    return os.getpid()


# ------------------------------------------------------------ helpers


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def waitFor(predicate: Any, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {predicate}")
        yield sleep(0.05)


def mostAtOnce(spans: list[tuple[float, float]]) -> int:
    """How many of the *spans* ``(start, end)`` overlapped at most."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def trivialCalls(q: TaskQueue, n: int, inflight: list[int]) -> Deferred[list[int]]:
    """*n* calls of ``abs``, noting the worker's tasks in flight at each result."""
    worker = q.workers()[0]

    def note(result: int) -> int:
        inflight.append(worker._inflight)
        return result

    return defer.gatherResults([q.call(abs, -i).addCallback(note) for i in range(n)])


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inProcessCluster(**kw: Any) -> Any:
    options = {
        "processes": False,
        "n_workers": 2,
        "threads_per_worker": 2,
        "dashboard_address": ":0",
    }
    options.update(kw)
    return distributed.LocalCluster(**options)


class _ClusterTestCase(TestCase):
    """One cluster and client for the whole class (startup costs time)."""

    timeout = 60
    clusterOptions: dict[str, Any] = {}
    workerOptions = ("slots", "series", "raw", "restrictions", "iterChunk")

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = inProcessCluster(**cls.clusterOptions)
        cls.client = distributed.Client(cls.cluster, set_as_default=False)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.cluster.close()

    def queue(self, **kw: Any) -> TaskQueue:
        workerKw = {k: kw.pop(k) for k in self.workerOptions if k in kw}
        worker = DaskWorker(self.client, **workerKw)
        q = TaskQueue(worker, returnFailure=True, **kw)
        self.addCleanup(q.shutdown)
        return q


# ------------------------------------------------------------ in-process cluster


class ExecutorTests(_ClusterTestCase):
    def test_queue_executor_on_a_dask_queue(self) -> Any:
        from asynqueue.futures import QueueExecutor

        def body() -> None:
            make = lambda: TaskQueue(DaskWorker(self.client))  # noqa: E731
            with QueueExecutor(make) as pool:
                self.assertEqual(pool.submit(sum, [1, 2, 3]).result(), 6)
                self.assertEqual(pool.submit(lambda x: x * 2, 21).result(), 42)
                with self.assertRaises(KeyError):
                    pool.submit(boom, 7).result()
                self.assertEqual(list(pool.map(abs, range(-30, 0))), list(range(30, 0, -1)))
            self.assertFalse(pool.queue.isRunning())

        # The blocking code runs off the reactor thread, as a user's would.
        return deferToThread(body)


class CallTests(_ClusterTestCase):
    @inlineCallbacks
    def test_call_result_and_default_slots(self) -> Any:
        q = self.queue()
        worker = q.workers()[0]
        yield worker.whenReady()
        self.assertEqual(worker.slots, 4)  # 2 workers x 2 threads, nothing measured yet
        self.assertEqual((yield q.call(sum, [1, 2, 3])), 6)
        self.assertEqual((yield q.call(divmod, 7, 2)), (3, 1))
        self.assertEqual(worker._threads, 4)
        self.assertIn("dask", worker.cQualified)

    @inlineCallbacks
    def test_arguments_are_not_taken_for_dask_tasks(self) -> Any:
        q = self.queue()
        # A tuple starting with a callable, and a string that looks like a key.
        value = (len, "abc")
        self.assertEqual((yield q.call(label, value)), value)
        self.assertEqual((yield q.call(label, "sum-1")), "sum-1")

    @inlineCallbacks
    def test_error_keeps_type_and_traceback(self) -> Any:
        q = self.queue()
        with self.assertRaises(KeyError) as ctx:
            yield q.call(boom, 7)
        self.assertIn("dask boom 7", str(ctx.exception))
        text = ctx.exception.remoteTraceback
        self.assertIn("boom", text)
        self.assertIn("KeyError", text)
        self.assertEqual((yield q.call(abs, -1)), 1)  # and the worker goes on

    @inlineCallbacks
    def test_unpicklable_exception_becomes_worker_error(self) -> Any:
        q = self.queue()
        with self.assertRaises(errors.WorkerError) as ctx:
            yield q.call(raiseUnpicklable)
        self.assertTrue(ctx.exception.typeName.endswith("Unpicklable"))
        self.assertIn("1/2", str(ctx.exception))
        self.assertIn("raiseUnpicklable", ctx.exception.remoteTraceback)

    @inlineCallbacks
    def test_call_that_does_not_pickle_fails_as_task_error(self) -> Any:
        q = self.queue()
        lock = threading.Lock()
        with self.assertRaises(TypeError):  # "cannot pickle '_thread.lock' object"
            yield q.call(label, lock)
        self.assertEqual((yield q.call(abs, -2)), 2)
        self.assertEqual(q.counts()["running"], 0)

    @inlineCallbacks
    def test_many_calls(self) -> Any:
        q = self.queue()
        results = yield defer.gatherResults([q.call(abs, -i) for i in range(300)])
        self.assertEqual(results, list(range(300)))


class IteratorTests(_ClusterTestCase):
    @inlineCallbacks
    def test_iterator_comes_back_as_deferator_in_chunks(self) -> Any:
        from asynqueue._iter._deferator import Deferator

        q = self.queue(iterChunk=10)
        dr = yield q.call(count, 95)
        self.assertIsInstance(dr, Deferator)
        self.assertEqual((yield collect(dr)), list(range(95)))

    @inlineCallbacks
    def test_iterator_error_arrives_after_items(self) -> Any:
        q = self.queue(iterChunk=4)
        dr = yield q.call(count, 20, failAt=9)
        items = []
        with self.assertRaises(ValueError):
            for d in dr:
                items.append((yield d))
        self.assertEqual(items, list(range(9)))

    @inlineCallbacks
    def test_empty_and_raw_iterators(self) -> Any:
        q = self.queue()
        self.assertEqual((yield q.call(count, 0)), [])
        it = yield q.call(count, 3, raw=True)
        self.assertEqual(list(it), [0, 1, 2])

    @inlineCallbacks
    def test_stopped_iterator_is_closed_on_the_worker(self) -> Any:
        from asynqueue._dask import _daskside

        q = self.queue(iterChunk=5)
        dr = yield q.call(count, 1000)
        self.assertEqual((yield next(dr)), 0)
        self.assertEqual(len(_daskside._parked), 1)  # in-process cluster: same module
        dr.stop()
        del dr
        yield waitFor(lambda: not _daskside._parked, 10)


class SchedulingTests(_ClusterTestCase):
    @inlineCallbacks
    def test_our_scheduler_decides_the_order(self) -> Any:
        q = self.queue(slots=1)
        plan: list[tuple[str, dict[str, Any]]] = [("blocker", {})]
        plan += [(f"p10-{i}", {"niceness": 10}) for i in range(4)]
        plan += [(f"p0-{i}", {}) for i in range(4)]
        plan += [(f"s-{i}", {"series": "s", "niceness": 5}) for i in range(3)]
        plan += [("next", {"doNext": True}), ("last", {"doLast": True})]
        order: list[str] = []
        ds = [q.call(label, name, **kw).addCallback(order.append) for name, kw in plan]
        yield defer.gatherResults(ds)
        # The same submissions through the pure scheduler give the same order.
        scheduler = Scheduler()
        expected = ["blocker"]
        for name, kw in plan[1:]:
            scheduler.push(
                name,
                kw.get("series"),
                kw.get("niceness", 0),
                kw.get("doNext", False),
                kw.get("doLast", False),
            )
        while scheduler:
            expected.append(scheduler.pop())
        self.assertEqual(order, expected)
        self.assertEqual(order[1], "next")
        self.assertEqual(order[-1], "last")
        self.assertEqual([n for n in order if n.startswith("s-")], ["s-0", "s-1", "s-2"])

    @inlineCallbacks
    def test_a_series_runs_one_call_at_a_time_in_order(self) -> Any:
        q = self.queue(slots=4)
        series = [q.call(span, 0.02, series="s") for _ in range(8)]
        plain = [q.call(span, 0.02) for _ in range(8)]
        spans = yield defer.gatherResults(series)
        yield defer.gatherResults(plain)
        self.assertEqual(mostAtOnce(spans), 1)
        self.assertEqual(spans, sorted(spans))  # started in submission order

    @inlineCallbacks
    def test_slots_bound_what_runs_on_the_cluster(self) -> Any:
        q = self.queue(slots=2)
        spans = yield defer.gatherResults([q.call(span, 0.05) for _ in range(12)])
        self.assertLessEqual(mostAtOnce(spans), 2)  # the cluster has 4 threads

    @inlineCallbacks
    def test_automatic_slots_grow_for_trivial_calls(self) -> Any:
        q = self.queue()
        worker = q.workers()[0]
        seen: list[int] = []
        results = yield trivialCalls(q, 300, seen)
        self.assertEqual(results, list(range(300)))
        # A trivial call is far shorter than a round trip: many per thread.
        self.assertGreater(worker.slots, 4)
        self.assertLessEqual(worker.slots, 4 * PER_THREAD_MAX)
        self.assertGreater(max(seen), 4)
        self.assertLessEqual(max(seen), 4 * PER_THREAD_MAX)

    @inlineCallbacks
    def test_automatic_slots_stay_at_threads_for_long_calls(self) -> Any:
        q = self.queue()
        worker = q.workers()[0]
        spans = yield defer.gatherResults([q.call(span, 0.2) for _ in range(12)])
        self.assertEqual(worker.slots, 4)  # a call outlasts a round trip: one per thread
        self.assertIsNotNone(worker._avgRun)
        self.assertIsNotNone(worker._avgTrip)
        self.assertLessEqual(mostAtOnce(spans), 4)

    @inlineCallbacks
    def test_automatic_slots_shrink_when_calls_get_long(self) -> Any:
        q = self.queue()
        worker = q.workers()[0]
        yield defer.gatherResults([q.call(abs, -i) for i in range(100)])
        self.assertGreater(worker.slots, 4)
        yield defer.gatherResults([q.call(span, 0.2) for _ in range(8)])
        self.assertEqual(worker.slots, 4)

    @inlineCallbacks
    def test_explicit_slots_are_never_changed(self) -> Any:
        q = self.queue(slots=3)
        worker = q.workers()[0]
        seen: list[int] = []
        yield trivialCalls(q, 200, seen)
        self.assertEqual(worker.slots, 3)
        self.assertLessEqual(max(seen), 3)
        self.assertIsNone(worker._avgRun)  # not even measured

    @inlineCallbacks
    def test_restrictions_map_a_series_to_dask_workers(self) -> Any:
        addresses = sorted(self.client.scheduler_info()["workers"])
        target = addresses[-1]
        q = self.queue(restrictions={"pinned": {"workers": target}})
        worker = q.workers()[0]
        self.assertIn("pinned", worker.iQualified)
        places = yield defer.gatherResults([q.call(whereAmI, i, series="pinned") for i in range(8)])
        self.assertEqual(set(places), {target})

    def test_bad_restrictions_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            DaskWorker(self.client, restrictions={"s": {"cores": 2}})
        with self.assertRaises(ValueError):
            DaskWorker(self.client, slots=0)

    @inlineCallbacks
    def test_timeout_cancels_and_retries_once(self) -> Any:
        q = self.queue()
        with self.assertRaises(errors.TimeoutError):
            yield q.call(time.sleep, 1.0, timeout=0.2)
        worker = q.workers()[0]
        self.assertEqual(worker._inflight, 0)
        self.assertEqual((yield q.call(abs, -5)), 5)


class UpdateTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_update_reaches_every_worker_and_joiners(self) -> Any:
        cluster = inProcessCluster(n_workers=2, threads_per_worker=1)
        client = distributed.Client(cluster, set_as_default=False)

        def close() -> Deferred[None]:
            return deferToThread(lambda: (client.close(), cluster.close()))

        self.addCleanup(close)
        del updated[:]
        worker = DaskWorker(client)
        q = TaskQueue(worker, returnFailure=True)
        self.addCleanup(q.shutdown)
        [results] = yield q.update(markUpdate, "keep")
        self.assertEqual(set(results), set(client.scheduler_info()["workers"]))
        self.assertEqual(set(results.values()), {"keep"})
        yield q.update(markUpdate, "once", ephemeral=True)
        self.assertEqual(sorted(updated), ["keep", "keep", "once", "once"])
        # A worker that joins later gets the persistent update only.
        yield deferToThread(lambda: (cluster.scale(3), client.wait_for_workers(3, timeout=20)))
        yield waitFor(lambda: updated.count("keep") == 3)
        self.assertEqual(updated.count("once"), 2)
        self.assertEqual((yield q.call(abs, -1)), 1)
        # Automatic slots follow the cluster's growth.
        yield waitFor(lambda: worker._threads == 3)
        self.assertGreaterEqual(worker.slots, 3)

    @inlineCallbacks
    def test_failing_update_errs(self) -> Any:
        cluster = inProcessCluster(n_workers=1, threads_per_worker=1)
        client = distributed.Client(cluster, set_as_default=False)
        self.addCleanup(lambda: deferToThread(lambda: (client.close(), cluster.close())))
        q = TaskQueue(DaskWorker(client), returnFailure=True)
        self.addCleanup(q.shutdown)
        [result] = yield q.update(boom, 3)
        self.assertIsInstance(result.value, KeyError)


class LifecycleTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_embedded_cluster_is_closed_on_shutdown(self) -> Any:
        q = DaskQueue(
            clusterOptions={"processes": False, "n_workers": 1, "threads_per_worker": 2},
            returnFailure=True,
        )
        yield q.whenReady()
        self.assertEqual(q.worker.slots, 2)
        self.assertEqual((yield q.call(pow, 2, 10)), 1024)
        client, cluster = q.client, q.cluster
        self.assertEqual(cluster.scheduler.allowed_failures, 0)
        yield q.shutdown()
        self.assertEqual(client.status, "closed")
        self.assertEqual(cluster.status.name, "closed")

    @inlineCallbacks
    def test_calls_and_shutdown_before_the_cluster_is_up(self) -> Any:
        q = DaskQueue(
            clusterOptions={"processes": False, "n_workers": 1, "threads_per_worker": 1},
            returnFailure=True,
        )
        ds = [q.call(abs, -i) for i in range(5)]
        yield q.shutdown()
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2, 3, 4])
        self.assertEqual(q.cluster.status.name, "closed")

    @inlineCallbacks
    def test_existing_cluster_object_is_left_open(self) -> Any:
        cluster = inProcessCluster(n_workers=1, threads_per_worker=1)
        self.addCleanup(lambda: deferToThread(cluster.close))
        self.assertEqual(cluster.scheduler.allowed_failures, 3)  # Dask's default
        q = DaskQueue(cluster, allowedFailures=0, returnFailure=True)
        self.assertEqual((yield q.call(abs, -8)), 8)
        self.assertEqual(cluster.scheduler.allowed_failures, 0)
        client = q.client
        yield q.shutdown()
        self.assertEqual(client.status, "closed")  # our client
        self.assertEqual(cluster.status.name, "running")  # not our cluster

    @inlineCallbacks
    def test_crash_detach_reassigns_the_call(self) -> Any:
        from asynqueue import ThreadWorker

        cluster = inProcessCluster(n_workers=1, threads_per_worker=1)
        client = distributed.Client(cluster, set_as_default=False)
        self.addCleanup(lambda: deferToThread(lambda: (client.close(), cluster.close())))
        worker = DaskWorker(client)
        q = TaskQueue(worker, returnFailure=True)
        self.addCleanup(q.shutdown)
        yield worker.whenReady()
        d = q.call(span, 0.3)
        yield waitFor(lambda: worker._running)
        left = yield q.detachWorker(worker, reassign=True, crash=True)
        self.assertEqual(left, [])
        self.assertEqual(worker._running, {})
        q.attachWorker(ThreadWorker())
        start, end = yield d  # re-run in the thread worker
        self.assertLessEqual(start, end)

    @inlineCallbacks
    def test_connection_failure_fails_calls_without_hanging(self) -> Any:
        worker = DaskWorker(f"tcp://127.0.0.1:{freePort()}", connectTimeout=0.5)
        q = TaskQueue(worker, returnFailure=True)
        self.addCleanup(q.shutdown)
        with self.assertRaises(errors.WorkerLost):
            yield q.call(abs, -1)
        with self.assertRaises(OSError):
            yield worker.whenReady()

    def profilerOn(self, interval: str = "10ms") -> None:
        """Dask's profiler on (the suite turns it off), for this test only."""
        import dask

        setting = dask.config.set(
            {
                "distributed.worker.profile.enabled": True,
                "distributed.worker.profile.interval": interval,
            }
        )
        self.addCleanup(setting.__exit__, None, None, None)

    @inlineCallbacks
    def test_embedded_cluster_has_no_profiler_where_it_can_deadlock(self) -> Any:
        import dask

        self.profilerOn()
        q = DaskQueue(
            clusterOptions={"processes": False, "n_workers": 2, "threads_per_worker": 1},
            returnFailure=True,
        )
        self.addCleanup(q.shutdown)
        yield q.whenReady()
        profiling = yield deferToThread(
            q.client.run, lambda dask_worker: "profile" in dask_worker.periodic_callbacks
        )
        self.assertEqual(len(profiling), 2)
        # CPython gh-106883: fixed in 3.12, where the profiler stays as Dask has it.
        expected = sys.version_info >= (3, 12)
        self.assertEqual(set(profiling.values()), {expected})
        self.assertTrue(dask.config.get("distributed.worker.profile.enabled"))  # left as set

    @inlineCallbacks
    def test_a_cluster_whose_profiler_can_deadlock_is_named_in_a_warning(self) -> Any:
        import logging

        # Profiling, but the first sample would come in an hour: nothing can deadlock here.
        self.profilerOn(interval="1h")
        cluster = inProcessCluster(n_workers=1, threads_per_worker=1)
        self.addCleanup(lambda: deferToThread(cluster.close))
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("asynqueue")
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        q = DaskQueue(cluster, returnFailure=True)
        self.addCleanup(q.shutdown)
        self.assertEqual((yield q.call(abs, -3)), 3)
        warnings = [r.getMessage() for r in records if "gh-106883" in r.getMessage()]
        if sys.version_info < (3, 12):
            [text] = warnings
            self.assertIn(cluster.workers[0].address, text)
            self.assertIn("distributed.worker.profile.enabled", text)
        else:
            self.assertEqual(warnings, [])

    def test_import_asynqueue_does_not_import_dask(self) -> None:
        code = (
            "import sys, asynqueue, asynqueue.errors\n"
            "assert 'dask' not in sys.modules and 'distributed' not in sys.modules\n"
            "import asynqueue.dask_worker\n"
            "assert 'distributed' in sys.modules\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------ worker processes


class ProcessClusterTests(TestCase):
    """A real multi-process cluster: workers can be killed."""

    timeout = 60

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = distributed.LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=":0",
            scheduler_kwargs={"allowed_failures": 0},
        )
        cls.client = distributed.Client(cls.cluster, set_as_default=False)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.cluster.close()

    @inlineCallbacks
    def setUp(self) -> Any:
        # A killed worker comes back through its nanny.
        yield deferToThread(self.client.wait_for_workers, 2, timeout=30)
        self.q = TaskQueue(DaskWorker(self.client), returnFailure=True)
        self.addCleanup(self.q.shutdown)

    def tempDir(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="asynqueue-dask-"))
        self.addCleanup(shutil.rmtree, folder, True)
        return folder

    @inlineCallbacks
    def killAttempt(self, folder: Path, n: int) -> Any:
        """Wait for the *n*-th attempt's pid file; kill that worker process."""
        files = yield waitFor(lambda: len(list(folder.iterdir())) >= n and list(folder.iterdir()))
        # From the name ("pid-PID-NS"), not the contents: a file just made may
        # still be empty when it is read.
        attempts = sorted((int(ns), int(pid)) for _, pid, ns in (f.name.split("-") for f in files))
        pid = attempts[n - 1][1]
        os.kill(pid, signal.SIGKILL)
        return pid

    @inlineCallbacks
    def test_killed_worker_task_runs_again_once(self) -> Any:
        folder = self.tempDir()
        d = self.q.call(slowUntilKilled, str(folder), 1)
        killed = yield self.killAttempt(folder, 1)
        pid = yield d
        self.assertNotEqual(pid, killed)

    @inlineCallbacks
    def test_killed_twice_fails_with_worker_lost(self) -> Any:
        folder = self.tempDir()
        d = self.q.call(slowUntilKilled, str(folder), 2)
        yield self.killAttempt(folder, 1)
        yield self.killAttempt(folder, 2)
        with self.assertRaises(errors.WorkerLost):
            yield d

    @inlineCallbacks
    def test_update_reaches_every_process_and_restarted_ones(self) -> Any:
        [results] = yield self.q.update(setEnv, "ASYNQUEUE_DASK_TEST", "yes")
        self.assertEqual(len(results), 2)
        seen = yield deferToThread(self.client.run, getEnv, "ASYNQUEUE_DASK_TEST")
        self.assertEqual(set(seen.values()), {"yes"})
        # Kill one worker; the nanny restarts it and the plugin updates it.
        pids = yield deferToThread(self.client.run, os.getpid)
        victim = sorted(pids)[0]
        os.kill(pids[victim], signal.SIGKILL)
        yield waitFor(lambda: victim not in self.client.scheduler_info()["workers"])
        yield deferToThread(self.client.wait_for_workers, 2, timeout=30)
        seen = yield deferToThread(self.client.run, getEnv, "ASYNQUEUE_DASK_TEST")
        self.assertEqual(len(seen), 2)
        self.assertEqual(set(seen.values()), {"yes"})


class SchedulerLossTests(TestCase):
    """The scheduler process dies while a call runs."""

    timeout = 60

    @inlineCallbacks
    def test_scheduler_killed_mid_call_fails_cleanly(self) -> Any:
        port = freePort()
        address = f"tcp://127.0.0.1:{port}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT}
        scheduler = subprocess.Popen(
            [
                *(sys.executable, "-m", "distributed.cli.dask_scheduler"),
                *("--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
            ],
            **quiet,
        )
        self.addCleanup(reap, scheduler)
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "distributed.cli.dask_worker", address),
                *("--nthreads", "1", "--no-dashboard", "--no-nanny"),
            ],
            **quiet,
        )
        self.addCleanup(reap, worker)
        q = DaskQueue(address, connectTimeout=20, returnFailure=True)
        self.addCleanup(q.shutdown)
        yield q.whenReady()
        yield deferToThread(q.client.wait_for_workers, 1, timeout=30)
        self.assertEqual((yield q.call(abs, -3)), 3)
        d = q.call(time.sleep, 30)
        yield deferToThread(_waitUntilProcessing, q.client)
        scheduler.kill()
        with self.assertRaises(errors.WorkerLost):
            yield d
        # New calls fail too, at once, while the client tries to reconnect.
        with self.assertRaises(errors.WorkerLost):
            yield q.call(abs, -4)
        yield q.shutdown()
        self.assertEqual(q.client.status, "closed")


def _waitUntilProcessing(client: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not any(client.processing().values()):
        if time.monotonic() > deadline:
            raise AssertionError("the task never started")
        time.sleep(0.05)

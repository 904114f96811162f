"""
One `IWorker` contract, run against every worker kind.

`KINDS` is the table: what each kind is and where it legitimately differs
from the others. `Contract` holds the tests every kind passes (results,
errors, iterators, timeouts, detach, shutdown); `UninterruptibleContract`,
`ChildCrashContract` and `ServerCrashContract` add those for the kinds that
differ: a worker that cannot interrupt a blocking call, workers whose tasks
run in a process of their own, which a task can end (``os._exit``), and
workers whose server can be killed. One test class per row of the
table is made from them at the bottom of the module, so a kind cannot quietly
miss a test.

Each kind works for real: threads, child processes, a `WireServer` on
127.0.0.1 with its own child processes, an in-process Dask `LocalCluster`.
"""

from __future__ import annotations

import builtins
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from asynqueue import AsyncWorker, TaskQueue, ThreadWorker, errors
from asynqueue.iteration import Deferator, ListConsumer
from asynqueue.process import ProcessWorker
from asynqueue.tasks import Status, Task
from asynqueue.wire import WireServer, WireWorker

from .helpers import common as helpers
from .helpers import conformance as hc
from .helpers.common import collect, reap

try:
    import distributed
except ImportError:  # the dask extra is not installed: that row is skipped
    distributed = None

ROOT = Path(__file__).resolve().parent.parent
KEY = b"a conformance test key, not a secret"

# A hold that nobody releases ends after this long (seconds): far beyond any
# timeout below, so reaching it means the worker failed to let go.
LONG = 30.0
# The per-call timeout of the timeout tests.
SHORT = 0.3

if TYPE_CHECKING:
    _TestCase = TestCase
else:
    _TestCase = object  # (the contracts are mixins: collected only through the kinds)

waitUntil = functools.partial(helpers.waitUntil, limit=20.0)


@dataclass(frozen=True)
class Kind:
    """A worker kind, and how it may differ from the common contract."""

    name: str
    # A blocking call past its timeout is abandoned (a thread left behind, a
    # child killed, a Dask future cancelled, though its cluster thread stays
    # busy until the call returns) so that the retry and the next calls run.
    # AsyncWorker runs calls in the reactor thread: a blocking call holds the
    # reactor, and the timeout can only cancel a Deferred the call returns.
    interruptsBlocking: bool
    # The crashes this kind can have, each a lost worker to the queue (the
    # call re-run once): "child", tasks run in a process of their own, which
    # a task can end (os._exit; in the other kinds that would end the test
    # run itself); "server", the server process is killed mid-call.
    crashes: tuple[str, ...] = ()
    # What ``raise SystemExit`` in a task gives the caller: the exception
    # itself, like any other; the Dask side sends only `Exception`s as
    # themselves (a BaseException comes as a WorkerError naming it).
    systemExit: type[BaseException] = SystemExit
    # What an iterator with no items gives: "list" (``[]``, as the API says),
    # or "deferator" (an empty Deferator: AsyncWorker hands over the iterator
    # at once, without pulling an item in the reactor to find out).
    emptyIterator: str = "list"


KINDS = [
    Kind("async", interruptsBlocking=False, emptyIterator="deferator"),
    Kind("thread", interruptsBlocking=True),
    Kind("process", interruptsBlocking=True, crashes=("child",)),
    Kind("remote", interruptsBlocking=True, crashes=("child", "server")),
    # An in-process cluster: its workers are threads of this process (a
    # cluster of worker processes, and killing them, is in dask/test_dask).
    Kind("dask", interruptsBlocking=True, systemExit=errors.WorkerError),
]


def holdInReactor(directory: str, limit: float) -> Deferred[str]:
    """`hc.hold` for AsyncWorker: the same, but waits without blocking the reactor."""
    hc.mark(directory)
    deadline = time.monotonic() + limit
    timer: list[Any] = []

    def poll() -> None:
        if hc.released(directory):
            d.callback("released")
        elif time.monotonic() > deadline:
            d.callback("limit")
        else:
            timer[:] = [reactor.callLater(hc.POLL, poll)]

    d: Deferred[str] = Deferred(lambda _: timer[0].cancel() if timer[0].active() else None)
    poll()
    return d


def holdThenCountInReactor(directory: str, limit: float, n: int) -> Deferred[Any]:
    """`hc.holdThenCount` for AsyncWorker."""
    return holdInReactor(directory, limit).addCallback(lambda _: hc.countTo(n))


class Contract(_TestCase):
    """What every worker kind does, through a `TaskQueue`."""

    kind: Kind
    timeout = 30  # (trial's limit per test)

    # ------------------------------------------------------------ fixtures

    def makeWorker(self) -> Any:
        """A new worker of this kind, ready for calls (or a Deferred of it)."""
        raise NotImplementedError

    @property
    def hang(self) -> Any:
        """A call that keeps this kind's worker busy until released: see `hc.hold`."""
        return hc.hold if self.kind.interruptsBlocking else holdInReactor

    @property
    def hangThenCount(self) -> Any:
        """`hang`, then return an iterator: see `hc.holdThenCount`."""
        return hc.holdThenCount if self.kind.interruptsBlocking else holdThenCountInReactor

    @inlineCallbacks
    def queue(self, **kw: Any) -> Any:
        """A `TaskQueue` with one worker of this kind; shut down after the test."""
        kw.setdefault("returnFailure", True)
        worker = yield self.makeWorker()
        q = TaskQueue(worker, **kw)
        self.addCleanup(q.shutdown)
        return q

    def folder(self) -> str:
        """A folder for the markers of a hold; released after the test."""
        path = tempfile.mkdtemp(prefix="aqc")
        self.addCleanup(shutil.rmtree, path, True)
        # (cleanups run last first: the hold ends before the queue shuts down)
        self.addCleanup(self.release, path)
        return path

    @staticmethod
    def release(directory: str) -> None:
        Path(directory, hc.RELEASE).touch()

    @inlineCallbacks
    def started(self, q: TaskQueue, directory: str) -> Any:
        """A hold in *directory*, once it has begun; fires with its Deferred."""
        d = q.call(self.hang, directory, LONG)
        yield waitUntil(lambda: hc.attempts(directory) >= 1)
        return d

    # ------------------------------------------------------------ calls

    @inlineCallbacks
    def test_results(self) -> Any:
        q = yield self.queue()
        self.assertEqual((yield q.call(hc.add, 1, b=2)), 3)
        self.assertIsNone((yield q.call(hc.nothing)))
        value = {"tuple": (1, "x", None), "bytes": b"\x00\xff" * 50, "float": 0.5}
        self.assertEqual((yield q.call(hc.echo, value)), value)
        results = yield gatherResults([q.call(hc.add, i, 1) for i in range(40)])
        self.assertEqual(results, list(range(1, 41)))

    @inlineCallbacks
    def test_errors_keep_their_type_and_the_worker_goes_on(self) -> Any:
        q = yield self.queue()
        for name in ("ValueError", "KeyError", "OSError"):
            exception = getattr(builtins, name)
            failure = yield self.assertFailure(q.call(hc.fail, name, f"no {name}"), exception)
            self.assertIs(type(failure), exception)
            self.assertIn(f"no {name}", str(failure))
        self.assertEqual((yield q.call(hc.add, 2, 2)), 4)

    @inlineCallbacks
    def test_warn_gives_the_traceback_text(self) -> Any:
        q = yield self.queue(returnFailure=False, warn=True)
        text = yield q.call(hc.fail, "KeyError", "told you")
        self.assertIsInstance(text, str)
        self.assertIn("KeyError", text)
        self.assertIn("told you", text)
        self.assertEqual((yield q.call(hc.add, 2, 3)), 5)

    @inlineCallbacks
    def test_system_exit_in_a_task(self) -> Any:
        q = yield self.queue()
        failure = yield self.assertFailure(q.call(hc.raiseSystemExit, 3), self.kind.systemExit)
        self.assertIn("3", str(failure))
        self.assertEqual((yield q.call(hc.add, 3, 3)), 6)

    @inlineCallbacks
    def test_a_worker_run_directly_reports_status_members(self) -> Any:
        q = yield self.queue()  # (which stops the worker after the test)
        (worker,) = q.workers()
        for f, args, expected in (
            (hc.add, (1, 2), Status.RESULT),
            (hc.fail, ("KeyError", "k"), Status.ERROR),
            (hc.countTo, (3,), Status.ITERATOR),
        ):
            task = Task(f, args)
            worker.run(task)
            status, result = yield task.d
            self.assertIs(status, expected)
            if status == Status.ITERATOR:  # (a thread worker's comes as a Deferred)
                dr = yield maybeDeferred(lambda r=result: r)
                self.assertEqual((yield collect(dr)), [0, 1, 2])

    # ------------------------------------------------------------ iterators

    @inlineCallbacks
    def test_iterator_results(self) -> Any:
        q = yield self.queue()
        dr = yield q.call(hc.countTo, 7)
        self.assertIsInstance(dr, Deferator)
        self.assertEqual((yield collect(dr)), list(range(7)))
        empty = yield q.call(hc.countTo, 0)
        if self.kind.emptyIterator == "list":
            self.assertEqual(empty, [])
        else:
            self.assertIsInstance(empty, Deferator)
            self.assertEqual((yield collect(empty)), [])
        consumer = ListConsumer()
        self.assertIs((yield q.call(hc.countTo, 5, consumer=consumer)), consumer)
        self.assertEqual((yield consumer()), list(range(5)))

    @inlineCallbacks
    def test_an_iterator_error_comes_after_the_items(self) -> Any:
        q = yield self.queue()
        dr = yield q.call(hc.countTo, 10, failAt=3)
        items = []
        with self.assertRaises(ValueError) as ctx:
            for d in dr:
                items.append((yield d))
        self.assertIn("broke at 3", str(ctx.exception))
        self.assertEqual(items, [0, 1, 2])
        self.assertEqual((yield q.call(hc.add, 1, 1)), 2)

    # ------------------------------------------------------------ timeouts

    @inlineCallbacks
    def test_timeout_retries_once_then_fails(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        failure = yield self.assertFailure(
            q.call(self.hang, folder, LONG, timeout=SHORT), errors.TimeoutError
        )
        self.assertIn("2 times", str(failure))
        yield waitUntil(lambda: hc.attempts(folder) >= 2)
        self.assertEqual(hc.attempts(folder), 2)
        # The worker let go of both attempts: new calls run.
        self.assertEqual((yield q.call(hc.add, 1, 2)), 3)

    # ------------------------------------------------------------ detach

    @inlineCallbacks
    def test_crash_detach_with_reassign_reruns_the_call_elsewhere(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        d = yield self.started(q, folder)
        [first] = q.workers()
        self.assertEqual((yield q.detachWorker(first, reassign=True, crash=True)), [])
        self.assertEqual(q.counts()["queued"], 1)
        second = yield self.makeWorker()
        q.attachWorker(second)
        yield waitUntil(lambda: hc.attempts(folder) >= 2)
        self.release(folder)
        self.assertEqual((yield d), "released")
        self.assertEqual(hc.attempts(folder), 2)

    @inlineCallbacks
    def test_crash_detach_without_reassign_cancels_the_call(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        d = yield self.started(q, folder)
        left = yield q.detachWorker(q.workers()[0], crash=True)
        self.assertEqual(len(left), 1)
        yield self.assertFailure(d, errors.TaskCancelled)

    @inlineCallbacks
    def test_graceful_detach_lets_the_call_finish(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        d = yield self.started(q, folder)
        detached = q.detachWorker(q.workers()[0], reassign=True)
        self.assertEqual(len(q), 0)
        self.release(folder)
        self.assertEqual((yield detached), [])
        self.assertEqual((yield d), "released")
        self.assertEqual(hc.attempts(folder), 1)

    @inlineCallbacks
    def test_graceful_detach_lets_an_iterator_call_finish(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        d = q.call(self.hangThenCount, folder, LONG, 3)
        yield waitUntil(lambda: hc.attempts(folder) >= 1)
        detached = q.detachWorker(q.workers()[0], reassign=True)
        self.release(folder)
        dr = yield d
        self.assertEqual((yield collect(dr)), [0, 1, 2])
        self.assertEqual((yield detached), [])

    # ------------------------------------------------------------ shutdown

    @inlineCallbacks
    def test_shutdown_finishes_running_and_queued_calls(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        held = yield self.started(q, folder)
        queued = [q.call(hc.add, i, 1) for i in range(5)]
        stopped = q.shutdown()
        self.assertRaises(errors.QueueRunError, q.call, hc.add, 1)
        self.release(folder)
        yield stopped
        self.assertEqual((yield held), "released")
        self.assertEqual((yield gatherResults(queued)), [1, 2, 3, 4, 5])

    @inlineCallbacks
    def test_shutdown_fails_leftovers_clearly(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        held = yield self.started(q, folder)
        queued = [q.call(hc.add, i, 1) for i in range(5)]
        yield q.detachWorker(q.workers()[0], reassign=True, crash=True)
        yield q.shutdown()
        for d in [held, *queued]:
            failure = yield self.assertFailure(d, errors.QueueRunError)
            self.assertIn("never ran", str(failure))

    @inlineCallbacks
    def test_every_call_fires_exactly_once(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        outcomes: dict[int, list[Any]] = {}

        def note(result: Any, i: int) -> None:
            outcomes.setdefault(i, []).append(result)

        # What each call may give: the items of an iterator may be lost with
        # the worker that was producing them (a WorkerError).
        expected: dict[int, Any] = {}
        hangs = []
        for i in range(20):
            if i in (3, 11):
                d = q.call(self.hang, folder, LONG, timeout=SHORT)
                expected[i] = errors.TimeoutError
                hangs.append(d)
            elif i % 3 == 1:
                d, expected[i] = q.call(hc.fail, "ValueError", str(i)), ValueError
            elif i % 3 == 2:
                d = q.call(hc.countTo, 2)
                expected[i] = (Deferator, list, errors.WorkerError)
            else:
                d, expected[i] = q.call(hc.add, i), int
            d.addBoth(note, i)
        # Abandoned holds may still occupy their threads (a Dask cluster's
        # threads cannot be interrupted): end them once both calls failed.
        DeferredList(hangs).addCallback(lambda _: self.release(folder))
        # Midway, the worker is crashed; a new one takes over what it held.
        yield waitUntil(lambda: hc.attempts(folder) >= 1)
        yield q.detachWorker(q.workers()[0], reassign=True, crash=True)
        q.attachWorker((yield self.makeWorker()))
        yield q.shutdown()
        self.assertEqual(sorted(outcomes), list(range(20)))
        for i, fired in outcomes.items():
            self.assertEqual(len(fired), 1, (i, fired))
            [outcome] = fired
            kinds = expected[i] if isinstance(expected[i], tuple) else (expected[i],)
            if isinstance(outcome, Failure):
                self.assertTrue(outcome.check(*kinds), (i, outcome))
            else:
                self.assertIsInstance(outcome, kinds, i)


class UninterruptibleContract(Contract):
    """For kinds that cannot interrupt a blocking call (see `Kind.interruptsBlocking`)."""

    @inlineCallbacks
    def test_a_blocking_call_past_its_timeout_runs_to_its_end(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        # A hold that gives up on its own after twice its timeout: nothing
        # could stop it, so it ran once, to its end, and its result counts.
        d = q.call(hc.hold, folder, 2 * SHORT, timeout=SHORT)
        self.assertEqual((yield d), "limit")
        self.assertEqual(hc.attempts(folder), 1)
        self.assertEqual((yield q.call(hc.add, 1, 2)), 3)


class ChildCrashContract(Contract):
    """For kinds whose tasks run in a process of their own."""

    @inlineCallbacks
    def test_a_crash_fails_only_that_call_after_one_rerun(self) -> Any:
        q = yield self.queue()
        lost = q.call(hc.exitNow, 7)
        fine = [q.call(hc.add, i, 10) for i in range(3)]
        failure = yield self.assertFailure(lost, errors.WorkerLost)
        self.assertIn("2 times", str(failure))
        self.assertIn("exited with code 7", str(failure))
        self.assertEqual((yield gatherResults(fine)), [10, 11, 12])

    @inlineCallbacks
    def test_a_call_whose_first_run_crashed_runs_again(self) -> Any:
        q = yield self.queue()
        folder = self.folder()
        pid = yield q.call(hc.exitOnce, folder, 9)
        self.assertIsInstance(pid, int)
        self.assertEqual(hc.attempts(folder), 2)


class ServerCrashContract(Contract):
    """For kinds that run tasks on a server: the server is killed mid-call."""

    @inlineCallbacks
    def spawnServer(self) -> Any:
        """A ``python -m asynqueue serve`` process; fires with it and its client description."""
        folder = Path(tempfile.mkdtemp(prefix="aqs"))
        self.addCleanup(shutil.rmtree, folder, True)
        keyFile = folder / "key"
        keyFile.write_bytes(KEY)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        command = [sys.executable, "-m", "asynqueue", "serve", "tcp:0:interface=127.0.0.1"]
        proc = subprocess.Popen(
            [*command, "--workers", "1", "--key-file", str(keyFile)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.addCleanup(reap, proc)
        assert proc.stdout is not None
        line = yield deferToThread(proc.stdout.readline)
        self.assertIn("listening on tcp:", line)
        port = line.split("listening on tcp:", 1)[1].split(":")[0]
        return proc, f"tcp:127.0.0.1:{port}"

    @inlineCallbacks
    def test_a_killed_server_loses_the_call_to_a_rerun_elsewhere(self) -> Any:
        server, description = yield self.spawnServer()
        doomed = WireWorker(description, key=KEY, giveUpAfter=0.5)
        yield doomed.whenConnected()
        q = TaskQueue(doomed, returnFailure=True)
        self.addCleanup(q.shutdown)
        folder = self.folder()
        held = yield self.started(q, folder)
        queued = q.call(hc.add, 1, 2)
        server.kill()
        q.attachWorker((yield self.makeWorker()))
        yield waitUntil(lambda: hc.attempts(folder) >= 2)
        self.release(folder)
        self.assertEqual((yield held), "released")
        self.assertEqual((yield queued), 3)
        self.assertEqual(hc.attempts(folder), 2)
        # The worker without a server gave up and left the queue.
        yield waitUntil(lambda: doomed not in q.workers())


# ---------------------------------------------------------------- the kinds


class AsyncKind(Contract):
    def makeWorker(self) -> Any:
        return AsyncWorker()


class ThreadKind(Contract):
    def makeWorker(self) -> Any:
        return ThreadWorker()


class ProcessKind(Contract):
    def makeWorker(self) -> Any:
        return ProcessWorker()


class RemoteKind(Contract):
    """WireWorkers of a real WireServer on 127.0.0.1, which runs tasks in child processes."""

    server: WireServer

    @inlineCallbacks
    def setUp(self) -> Any:
        # Two children: a second worker can run while the first one's is held.
        self.server = WireServer("tcp:0:interface=127.0.0.1", key=KEY, workers=2)
        yield self.server.start()
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def makeWorker(self) -> Any:
        worker = WireWorker(f"tcp:127.0.0.1:{self.server.address.port}", key=KEY)
        yield worker.whenConnected()
        return worker


class DaskKind(Contract):
    """DaskWorkers of one in-process LocalCluster for the class (it is slow to start)."""

    cluster: Any
    client: Any

    @classmethod
    def setUpClass(cls) -> None:
        if distributed is None:
            return  # (skipped)
        cls.cluster = distributed.LocalCluster(
            processes=False, n_workers=2, threads_per_worker=2, dashboard_address=":0"
        )
        cls.client = distributed.Client(cls.cluster, set_as_default=False)

    @classmethod
    def tearDownClass(cls) -> None:
        if distributed is None:
            return
        cls.client.close()
        cls.cluster.close()

    def makeWorker(self) -> Any:
        from asynqueue.dask_worker import DaskWorker

        return DaskWorker(self.client).whenReady()


FIXTURES: dict[str, type[Contract]] = {
    "async": AsyncKind,
    "thread": ThreadKind,
    "process": ProcessKind,
    "remote": RemoteKind,
    "dask": DaskKind,
}


def _testClass(kind: Kind) -> type:
    attributes: dict[str, Any] = {"kind": kind, "__module__": __name__}
    if kind.name == "dask" and distributed is None:
        attributes["skip"] = "Dask distributed is not installed (pip install 'asynqueue[dask]')"
    bases: tuple[type, ...] = (FIXTURES[kind.name],)
    if not kind.interruptsBlocking:
        bases += (UninterruptibleContract,)
    if "child" in kind.crashes:
        bases += (ChildCrashContract,)
    if "server" in kind.crashes:
        bases += (ServerCrashContract,)
    name = f"Test{kind.name.capitalize()}Worker"
    return type(name, (*bases, TestCase), attributes)


for _kind in KINDS:
    globals()[f"Test{_kind.name.capitalize()}Worker"] = _testClass(_kind)

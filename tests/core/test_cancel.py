"""
Cancelling a call's Deferred: a queued call is withdrawn, a running one is
stopped (or abandoned) by its worker, on every kind of worker: real threads,
child processes, a worker server on 127.0.0.1 and a Dask LocalCluster.
"""

from __future__ import annotations

import functools
import operator
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from asynqueue import TaskQueue, errors
from asynqueue.process import CallCancelled, ProcessQueue
from asynqueue.threads import ThreadQueue
from asynqueue.workers import AsyncWorker

from ..helpers import cancel as hc
from ..helpers import common as helpers
from ..helpers.common import isGone
from ..remote.test_remote import RemoteTestCase

waitUntil = functools.partial(helpers.waitUntil, limit=15.0)


def pause(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class Firings:
    """Counts how often each Deferred fires, and with what."""

    def __init__(self) -> None:
        self.outcomes: dict[int, list[Any]] = {}

    def watch(self, d: Deferred[Any]) -> Deferred[Any]:
        record = self.outcomes.setdefault(id(d), [])

        def seen(result: Any) -> Any:
            record.append(result)
            return result

        d.addBoth(seen)
        return d

    def only(self, d: Deferred[Any]) -> Any:
        record = self.outcomes[id(d)]
        assert len(record) == 1, f"fired {len(record)} times: {record!r}"
        return record[0]


class Collector:
    """A consumer that keeps the items written to it."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.producer: Any = None
        self.unregistered = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.unregistered = True

    def write(self, item: Any) -> None:
        self.items.append(item)


class _CancelTestCase(TestCase):
    timeout = 60

    def tmpdir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="aqc"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def openGateLater(self) -> None:
        hc.GATE.clear()
        self.addCleanup(hc.GATE.set)

    @inlineCallbacks
    def assertCancelled(self, d: Deferred[Any]) -> Any:
        yield self.assertFailure(d, CancelledError)

    @inlineCallbacks
    def checkStreamStops(self, q: TaskQueue) -> Any:
        """Cancelling a consumer run of `hc.slowItems` on *q* closes the generator."""
        tmp = self.tmpdir()
        consumer = Collector()
        d = q.call(hc.slowItems, str(tmp), 0.02, consumer=consumer)
        yield waitUntil(lambda: len(consumer.items) >= 3)
        d.cancel()
        yield self.assertCancelled(d)
        self.assertTrue(consumer.unregistered)
        yield waitUntil(lambda: (tmp / "closed").exists())  # the worker closed it
        made = {p.name for p in tmp.iterdir()}
        yield q.call(hc.pid)
        self.assertEqual({p.name for p in tmp.iterdir()}, made)
        self.assertEqual(consumer.items, list(range(len(consumer.items))))

    @inlineCallbacks
    def cancelAtRandom(self, q: TaskQueue) -> Any:
        """
        200 calls on *q*, half of them cancelled at random moments: each
        Deferred fires once, only the cancelled ones fail, the others ran.
        """
        tmp = self.tmpdir()
        rng = random.Random(13)
        firings = Firings()
        ds = [
            firings.watch(q.call(hc.sleepThenMark, str(tmp / str(i)), rng.choice([0, 0.002, 0.02])))
            for i in range(200)
        ]
        doomed = set(rng.sample(range(200), 100))
        for i in sorted(doomed, key=lambda _: rng.random()):
            if rng.random() < 0.5:
                yield pause(rng.choice([0, 0.001, 0.01]))
            ds[i].cancel()
        for d in ds:
            d.addErrback(lambda f: f.trap(CancelledError))
            yield d
        for i, d in enumerate(ds):
            outcome = firings.only(d)
            if isinstance(outcome, Failure):
                self.assertIn(i, doomed)  # only what was cancelled failed
                self.assertIsInstance(outcome.value, CancelledError)
            else:
                self.assertTrue((tmp / str(i)).exists())
        self.assertEqual(q.counts()["pending"], 0)
        self.assertEqual((yield q.call(operator.add, 1, 1)), 2)


class QueueTest(_CancelTestCase):
    @inlineCallbacks
    def test_queued_calls_are_withdrawn_and_their_series_moves_on(self) -> Any:
        self.openGateLater()
        q = ThreadQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        ran: list[int] = []
        gate = q.call(hc.waitAtGate, "first")
        ds = [q.call(ran.append, i, series="s") for i in range(10)]
        for i in range(0, 10, 2):
            ds[i].cancel()
            yield self.assertCancelled(ds[i])
        hc.GATE.set()
        self.assertEqual((yield gate), "first")
        for i in range(1, 10, 2):
            yield ds[i]
        self.assertEqual(ran, [1, 3, 5, 7, 9])

    @inlineCallbacks
    def test_cancelling_twice_or_after_the_result_changes_nothing(self) -> Any:
        q = ThreadQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        firings = Firings()
        done = firings.watch(q.call(operator.add, 1, 2))
        self.assertEqual((yield done), 3)
        done.cancel()
        self.assertEqual(firings.only(done), 3)
        self.openGateLater()
        waiting = firings.watch(q.call(hc.waitAtGate, "x"))
        waiting.cancel()
        waiting.cancel()
        yield self.assertCancelled(waiting)
        self.assertIsInstance(firings.only(waiting).value, CancelledError)
        self.assertEqual(q.counts()["pending"], 0)

    @inlineCallbacks
    def test_shutdown_fails_leftovers_and_each_deferred_fires_once(self) -> Any:
        q = TaskQueue(returnFailure=True)  # no worker: everything waits
        firings = Firings()
        ds = [firings.watch(q.call(operator.add, i, 1)) for i in range(4)]
        ds[1].cancel()
        ds[3].cancel()
        yield q.shutdown()
        for i, d in enumerate(ds):
            outcome = firings.only(d)
            expected = CancelledError if i % 2 else errors.QueueRunError
            self.assertIsInstance(outcome.value, expected)
            d.addErrback(lambda _: None)


class ThreadTest(_CancelTestCase):
    @inlineCallbacks
    def test_a_running_call_is_abandoned_and_later_calls_do_not_wait(self) -> Any:
        self.openGateLater()
        q = ThreadQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        d = q.call(hc.waitAtGate, "stuck")
        yield waitUntil(lambda: "stuck" in hc.waiting)
        d.cancel()
        yield self.assertCancelled(d)
        self.assertEqual((yield q.call(operator.mul, 6, 7)), 42)
        self.assertIn("stuck", hc.waiting)  # still waiting, abandoned

    def test_a_streamed_iterator_stops_producing(self) -> Any:
        q = ThreadQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        return self.checkStreamStops(q)

    def test_many_cancels_at_random_moments(self) -> Any:
        q = ThreadQueue(2, returnFailure=True)
        self.addCleanup(q.shutdown)
        return self.cancelAtRandom(q)


class AsyncTest(_CancelTestCase):
    @inlineCallbacks
    def test_a_running_call_has_its_deferred_cancelled(self) -> Any:
        stopped: list[bool] = []
        q = TaskQueue(AsyncWorker(), returnFailure=True)
        self.addCleanup(q.shutdown)
        d = q.call(lambda: Deferred(lambda _: stopped.append(True)))
        queued = q.call(stopped.append, False)
        queued.cancel()
        d.cancel()
        yield self.assertCancelled(d)
        yield self.assertCancelled(queued)
        self.assertEqual((yield q.call(operator.add, 2, 2)), 4)
        self.assertEqual(stopped, [True])


class ProcessTest(_CancelTestCase):
    def queue(self) -> ProcessQueue:
        q = ProcessQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        return q

    @inlineCallbacks
    def warm(self, q: ProcessQueue) -> Any:
        """
        Quick calls, so that *q*'s worker estimates a call's time low and sends
        several at once to its child. (Unless the machine is so busy that more
        than PIPELINE_PATIENCE passes between two calls: the dispatcher then
        keeps the second one queued.)
        """
        for _ in range(30):
            yield q.call(hc.pid)

    @inlineCallbacks
    def cancelWhileSleeping(self, q: ProcessQueue, sleeper: Any, tmp: Path) -> Any:
        """
        Cancel ``sleeper(tmp/slept, 5)`` once it runs, with a call queued
        behind it; fires with the child's PID from before and the call behind.
        """
        pid = yield q.call(hc.pid)
        sleeping = q.call(sleeper, str(tmp / "slept"), 5)
        behind = q.call(hc.mark, str(tmp / "behind"))
        yield pause(0.3)
        sleeping.cancel()
        yield self.assertCancelled(sleeping)
        return pid, behind

    @inlineCallbacks
    def test_a_running_call_is_interrupted_and_the_child_goes_on(self) -> Any:
        tmp = self.tmpdir()
        q = self.queue()
        pid, behind = yield self.cancelWhileSleeping(q, hc.sleepThenMark, tmp)
        self.assertEqual((yield q.call(hc.pid)), pid)  # the same child, free again
        self.assertEqual((yield behind), str(tmp / "behind"))
        # The child runs one call at a time and has served later ones: the
        # sleeping call is over, and never wrote its file.
        self.assertFalse((tmp / "slept").exists())

    @inlineCallbacks
    def test_the_interrupt_waits_for_its_message_to_be_written(self) -> Any:
        # The ABANDON waits in the parent's send queue (as behind a full
        # socket): the signal goes only once it is written, or the child's
        # handler would find nothing to read, sleep on, and be killed.
        tmp = self.tmpdir()
        q = self.queue()
        pid = yield q.call(hc.pid)
        (worker,) = q.workers()
        (child,) = worker._children
        channel = child.channel
        queuedSend = channel.send

        def sendLater(buffers: list[Any]) -> None:
            # (What send does when the kernel takes nothing now: queue it,
            # and write it when the reactor says the socket is writable.)
            channel._out.append(buffers)
            channel.send = queuedSend

            def writable() -> None:
                channel._writing = True
                reactor.addWriter(channel)

            reactor.callLater(0.3, writable)

        sleeping = q.call(hc.sleepThenMark, str(tmp / "slept"), 5)
        yield pause(0.3)
        channel.send = sendLater
        sleeping.cancel()
        yield self.assertCancelled(sleeping)
        # The same child, free again well before the sleep's end, and never
        # killed (KILL_GRACE is 1 s): the call was interrupted.
        self.assertEqual((yield q.call(hc.pid)), pid)
        self.assertFalse((tmp / "slept").exists())

    @inlineCallbacks
    def test_the_interrupt_passes_except_exception(self) -> Any:
        self.assertFalse(issubclass(CallCancelled, Exception))
        tmp = self.tmpdir()
        q = self.queue()
        pid, behind = yield self.cancelWhileSleeping(q, hc.stubbornSleepThenMark, tmp)
        self.assertEqual((yield behind), str(tmp / "behind"))
        self.assertEqual((yield q.call(hc.pid)), pid)
        self.assertFalse((tmp / "slept").exists())

    def test_many_cancels_at_random_moments(self) -> Any:
        q = ProcessQueue(2, returnFailure=True)
        self.addCleanup(q.shutdown)
        return self.cancelAtRandom(q)

    @inlineCallbacks
    def test_a_call_queued_in_the_child_is_dropped_unrun(self) -> Any:
        q = self.queue()
        for _ in range(5):
            yield self.warm(q)  # (a retry follows a 0.3 s call: warm again)
            tmp = self.tmpdir()
            calls = [q.call(hc.sleepThenMark, str(tmp / "first"), 0.3)]
            calls += [q.call(hc.mark, str(tmp / name)) for name in ("second", "third")]
            if q.counts()["queued"] == 0:
                break  # all three went to the child
            yield gatherResults(calls)  # (a busy machine: see warm)
        else:
            self.fail("the calls never went to the child together")
        first, second, third = calls
        second.cancel()
        yield self.assertCancelled(second)
        yield first
        self.assertEqual((yield third), str(tmp / "third"))
        yield q.call(hc.pid)
        self.assertFalse((tmp / "second").exists())

    @inlineCallbacks
    def test_a_worker_being_detached_stops_a_cancelled_call(self) -> Any:
        tmp = self.tmpdir()
        q = self.queue()
        yield q.call(hc.pid)
        worker = q.workers()[0]
        sleeping = q.call(hc.sleepThenMark, str(tmp / "slept"), 5)
        yield pause(0.3)
        detached = q.detachWorker(worker)  # gracefully: it waits for the call
        sleeping.cancel()
        yield self.assertCancelled(sleeping)
        self.assertEqual((yield detached), [])
        self.assertEqual(worker.pids, [])  # its child has exited...
        self.assertFalse((tmp / "slept").exists())  # ...without finishing the call

    @inlineCallbacks
    def test_a_dropped_call_frees_the_inbox_its_arguments_took(self) -> Any:
        q = self.queue()
        yield self.warm(q)
        inbox = q.workers()[0]._current.inbox
        if inbox is None:
            raise SkipTest("no shared memory (memfd) on this system")
        payload = b"x" * 2**21
        for attempt in range(5):
            if attempt:  # (after a 0.3 s call the estimate is high: warm again)
                yield self.warm(q)
            first = q.call(time.sleep, 0.3)
            big = q.call(len, payload)
            if inbox.taken():
                break  # its argument went to the inbox
            yield gatherResults([first, big])  # (a busy machine: see warm)
        else:
            self.fail("the call never went to the child behind another")
        big.cancel()
        yield self.assertCancelled(big)
        yield first
        yield q.call(hc.pid)
        self.assertFalse(inbox.taken())
        self.assertEqual((yield q.call(len, b"y" * 2**21)), 2**21)

    @inlineCallbacks
    def test_a_call_deaf_to_the_interrupt_has_its_child_replaced(self) -> Any:
        tmp = self.tmpdir()
        q = self.queue()
        pid, behind = yield self.cancelWhileSleeping(q, hc.deafSleepThenMark, tmp)
        self.assertEqual((yield behind), str(tmp / "behind"))  # requeued, not charged
        self.assertNotEqual((yield q.call(hc.pid)), pid)
        yield waitUntil(lambda: isGone(pid))
        self.assertFalse((tmp / "slept").exists())

    def test_a_streamed_iterator_stops_producing(self) -> Any:
        return self.checkStreamStops(self.queue())


class RemoteTest(RemoteTestCase, _CancelTestCase):
    timeout = 60

    @inlineCallbacks
    def test_a_process_server_interrupts_the_running_call(self) -> Any:
        server = yield self.startServer(threads=False, workers=1)
        q = self.makeQueue(self.clientDescription(server))
        yield self.checkServerInterrupts(q, os.getpid())

    @inlineCallbacks
    def test_asynqueue_serve_interrupts_the_running_call(self) -> Any:
        proc, description = yield self.spawnServer("tcp:0:interface=127.0.0.1")
        yield self.checkServerInterrupts(self.makeQueue(description), proc.pid)

    @inlineCallbacks
    def checkServerInterrupts(self, q: TaskQueue, serverPid: int) -> Any:
        """A sleeping call on *q*'s server (one process worker) is cancelled."""
        tmp = self.tmpdir()
        pid = yield q.call(hc.pid)
        self.assertNotEqual(pid, serverPid)  # a worker process of the server
        sleeping = q.call(hc.sleepThenMark, str(tmp / "slept"), 5)
        yield pause(0.3)
        sleeping.cancel()
        yield self.assertCancelled(sleeping)
        self.assertEqual((yield q.call(hc.pid)), pid)  # the server's child, free again
        self.assertFalse((tmp / "slept").exists())

    @inlineCallbacks
    def test_a_call_queued_on_the_server_is_withdrawn(self) -> Any:
        tmp = self.tmpdir()
        server = yield self.startServer(threads=False, workers=1)
        q = self.makeQueue(self.clientDescription(server))
        yield q.call(hc.pid)
        first = q.call(hc.sleepThenMark, str(tmp / "first"), 0.5)
        second = q.call(hc.mark, str(tmp / "second"))
        yield pause(0.1)  # both are on the server by now
        second.cancel()
        yield self.assertCancelled(second)
        yield first
        yield q.call(hc.pid)
        self.assertFalse((tmp / "second").exists())
        self.assertEqual(server.queue.counts()["pending"], 0)

    @inlineCallbacks
    def test_a_streamed_iterator_stops_on_the_server(self) -> Any:
        server = yield self.startServer(threads=False, workers=1)
        yield self.checkStreamStops(self.makeQueue(self.clientDescription(server)))

    @inlineCallbacks
    def test_many_cancels_at_random_moments(self) -> Any:
        server = yield self.startServer(threads=False, workers=2)
        yield self.cancelAtRandom(self.makeQueue(self.clientDescription(server)))
        self.assertEqual(server.queue.counts()["pending"], 0)  # nothing left behind there

    @inlineCallbacks
    def test_a_thread_server_abandons_the_running_call(self) -> Any:
        self.openGateLater()
        server = yield self.startServer(threads=True, workers=1)
        q = self.makeQueue(self.clientDescription(server))
        d = q.call(hc.waitAtGate, "remote")
        yield waitUntil(lambda: "remote" in hc.waiting)
        d.cancel()
        yield self.assertCancelled(d)
        self.assertEqual((yield q.call(operator.add, 1, 2)), 3)
        self.assertIn("remote", hc.waiting)  # abandoned, not waited for
        self.assertEqual(server.queue.counts()["pending"], 0)


class DaskTest(_CancelTestCase):
    @inlineCallbacks
    def test_the_dask_future_is_cancelled(self) -> Any:
        distributed = pytest.importorskip("distributed")
        from asynqueue.dask_worker import DaskWorker

        from ..dask.test_dask import inProcessCluster

        cluster = inProcessCluster(n_workers=1, threads_per_worker=2)
        self.addCleanup(cluster.close)
        client = distributed.Client(cluster, set_as_default=False)
        self.addCleanup(client.close)
        self.openGateLater()
        worker = DaskWorker(client)
        q = TaskQueue(worker, returnFailure=True)
        self.addCleanup(q.shutdown)
        d = q.call(hc.waitAtGate, "dask")
        yield waitUntil(lambda: "dask" in hc.waiting)
        futures = [p.future for p in worker._running.values() if p.future is not None]
        self.assertEqual(len(futures), 1)
        d.cancel()
        yield self.assertCancelled(d)
        yield waitUntil(lambda: futures[0].status == "cancelled")
        self.assertEqual((yield q.call(abs, -5)), 5)

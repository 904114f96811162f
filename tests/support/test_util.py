"""DeferredTracker, DeferredLock, CallRunner and the small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.python.failure import Failure
from twisted.trial import unittest

from asynqueue.util import (
    CallRunner,
    DeferredLock,
    DeferredTracker,
    callAfterDeferred,
    killProcess,
    o2p,
    p2o,
)


class PickleTest(unittest.TestCase):
    timeout = 10

    def test_roundTrip(self) -> None:
        for obj in (1, "a", [1, 2], {"x": (1, 2)}, None):
            self.assertEqual(p2o(o2p(obj)), obj)

    def test_empty(self) -> None:
        for empty in ([], (), {}):
            self.assertEqual(o2p(empty), b"")
        self.assertEqual(p2o(b"", "default"), "default")
        self.assertIsNone(p2o(b""))


class DeferredTrackerTest(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.dt = DeferredTracker(clock=self.clock)

    def test_resultsUntouched(self) -> None:
        ok: Deferred[Any] = Deferred()
        bad: Deferred[Any] = Deferred()
        self.assertIs(self.dt.put(ok), ok)
        self.dt.put(bad)
        value = object()
        error = ValueError("x")
        ok.callback(value)
        bad.errback(error)
        self.assertIs(self.successResultOf(ok), value)
        # Not swallowed: the failure is still there for whoever handles it.
        self.assertIs(self.failureResultOf(bad, ValueError).value, error)

    def test_putRejectsNonDeferreds(self) -> None:
        self.assertRaises(TypeError, self.dt.put, 5)

    def test_deferToAll(self) -> None:
        ds = [self.dt.put(Deferred()) for _ in range(3)]
        waited = self.dt.deferToAll()
        for d in ds[:2]:
            d.callback(None)
            self.assertNoResult(waited)
        ds[2].callback(None)
        self.assertIs(self.successResultOf(waited), True)
        self.assertTrue(self.dt.notWaiting())

    def test_deferToAllNothingPending(self) -> None:
        self.assertIs(self.successResultOf(self.dt.deferToAll()), True)

    def test_timeout(self) -> None:
        self.dt.put(Deferred())
        waited = self.dt.deferToAll(timeout=2)
        self.clock.advance(1.9)
        self.assertNoResult(waited)
        self.clock.advance(0.1)
        self.assertIs(self.successResultOf(waited), False)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_successCancelsTimer(self) -> None:
        d = self.dt.put(Deferred())
        waited = self.dt.deferToAll(timeout=2)
        d.callback(None)
        self.successResultOf(waited)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deferToAny(self) -> None:
        first, second = self.dt.put(Deferred()), self.dt.put(Deferred())
        waited = self.dt.deferToAny()
        # A Deferred put meanwhile does not postpone it (the original's quirk).
        self.dt.put(Deferred())
        self.assertNoResult(waited)
        second.callback(None)
        self.assertIs(self.successResultOf(waited), True)
        self.assertEqual(self.dt.count, 2)
        first.callback(None)
        self.assertEqual(self.dt.count, 1)
        self.assertEqual(self.dt.dCount, 1)  # (the original's name)

    def test_deferToAnyNothingPending(self) -> None:
        self.assertIs(self.successResultOf(self.dt.deferToAny()), True)

    def test_deferUntilFewer(self) -> None:
        ds = [self.dt.put(Deferred()) for _ in range(4)]
        waited = self.dt.deferUntilFewer(3)
        ds[0].callback(None)
        self.assertNoResult(waited)
        ds[1].errback(Failure(KeyError()))
        self.assertIs(self.successResultOf(waited), True)
        self.failureResultOf(ds[1], KeyError)
        self.assertIs(self.successResultOf(self.dt.deferUntilFewer(3)), True)

    def test_manualWaits(self) -> None:
        self.dt.addWait()
        self.dt.addWait()
        waited = self.dt.deferToAll()
        self.dt.removeWait()
        self.assertNoResult(waited)
        self.dt.removeWait()
        self.successResultOf(waited)
        self.dt.removeWait()  # never below zero
        self.assertEqual(self.dt.count, 0)

    def test_quitWaiting(self) -> None:
        self.dt.put(Deferred())
        waited = self.dt.deferToAll(timeout=5)
        self.dt.quitWaiting()
        self.assertIs(self.successResultOf(waited), True)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.dt.put(Deferred())
        self.assertIs(self.successResultOf(self.dt.deferToAll()), True)

    def test_cancelWait(self) -> None:
        self.dt.put(Deferred())
        waited = self.dt.deferToAll(timeout=5)
        waited.cancel()
        self.failureResultOf(waited, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noTimersWithoutTimeouts(self) -> None:
        self.dt.put(Deferred())
        self.dt.deferToAll()
        self.dt.deferToAny()
        self.dt.deferUntilFewer(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DeferredLockTest(unittest.TestCase):
    timeout = 10

    def test_exclusion(self) -> None:
        lock = DeferredLock()
        first = lock.acquire()
        second = lock.acquire()
        self.successResultOf(first)
        self.assertNoResult(second)
        lock.release()
        self.successResultOf(second)
        lock.release()
        self.assertFalse(lock.locked)
        self.assertRaises(RuntimeError, lock.release)

    def test_vipOrder(self) -> None:
        lock = DeferredLock()
        order: list[str] = []
        self.successResultOf(lock.acquire())
        for name, vip in (("a", False), ("V1", True), ("b", False), ("V2", True)):
            lock.acquire(vip).addCallback(lambda lk, name=name: (order.append(name), lk.release()))
        lock.release()
        self.assertEqual(order, ["V1", "V2", "a", "b"])

    def test_cancelVipWaiter(self) -> None:
        lock = DeferredLock()
        self.successResultOf(lock.acquire())
        vip = lock.acquire(vip=True)
        later = lock.acquire(vip=True)
        normal = lock.acquire()
        vip.cancel()
        self.failureResultOf(vip, defer.CancelledError)
        lock.release()
        self.successResultOf(later)
        self.assertNoResult(normal)
        lock.release()
        self.successResultOf(normal)

    def test_acquireAndRelease(self) -> None:
        lock = DeferredLock()
        self.successResultOf(lock.acquire())
        d = lock.acquireAndRelease()
        self.assertNoResult(d)
        lock.release()
        self.successResultOf(d)
        self.assertFalse(lock.locked)

    def test_run(self) -> None:
        lock = DeferredLock()
        self.assertEqual(self.successResultOf(lock.run(lambda x: x + 1, 1)), 2)
        self.failureResultOf(lock.run(lambda: 1 / 0), ZeroDivisionError)
        self.assertFalse(lock.locked)

    @inlineCallbacks
    def test_context(self):
        lock = DeferredLock()
        with lock.context() as d:
            yield d
            self.assertTrue(lock.locked)
        self.assertFalse(lock.locked)

    def test_contextLeftBeforeAcquired(self) -> None:
        lock = DeferredLock()
        self.successResultOf(lock.acquire())
        with lock.context():
            pass
        self.assertEqual(lock.waiting, [])
        lock.release()
        self.assertFalse(lock.locked)

    def test_asyncWith(self) -> None:
        lock = DeferredLock()

        async def use() -> bool:
            async with lock:
                return lock.locked

        self.assertTrue(self.successResultOf(defer.ensureDeferred(use())))
        self.assertFalse(lock.locked)

    def test_stop(self) -> None:
        lock = DeferredLock()
        ran: list[Any] = []
        stopperD: Deferred[None] = Deferred()
        lock.addStopper(lambda: (ran.append("first"), stopperD)[1])
        lock.addStopper(ran.append, "second")
        self.successResultOf(lock.acquire())
        waiter = lock.acquire()
        stopped = lock.stop()
        self.assertEqual(ran, [])
        lock.release()  # to the waiter
        self.successResultOf(waiter)
        self.assertEqual(ran, [])
        lock.release()  # to the stop
        self.assertEqual(ran, ["first"])
        self.assertNoResult(stopped)
        stopperD.callback(None)
        self.assertEqual(ran, ["first", "second"])
        self.successResultOf(stopped)
        self.successResultOf(lock.stop())
        # Once stopped, there is no more exclusion.
        self.successResultOf(lock.acquire())
        self.successResultOf(lock.acquire())
        lock.release()

    def test_stopperError(self) -> None:
        lock = DeferredLock()
        ran: list[str] = []
        lock.addStopper(lambda: fail(ValueError("stopper")))
        lock.addStopper(ran.append, "after")
        with self.assertLogs("asynqueue", "ERROR") as logged:
            self.successResultOf(lock.stop())
        self.assertEqual(ran, ["after"])
        self.assertIn("stopper", logged.output[0])


class CallRunnerTest(unittest.TestCase):
    timeout = 10

    def test_statuses(self) -> None:
        # The original's: statuses in bytes, an error as text.
        runner = CallRunner()
        self.assertEqual(runner((divmod, (7, 2), {})), (b"r", (3, 1)))
        status, text = runner((divmod, (7, 0), {}))
        self.assertEqual(status, b"e")
        self.assertTrue(
            text.startswith(
                "Exception 'integer division or modulo by zero' (ZeroDivisionError)\n"
                " doing call 'divmod(7, 0)'\n"
            ),
            text,
        )
        self.assertIn("ZeroDivisionError", text.splitlines()[-1])
        it = iter([1])
        self.assertEqual(runner((lambda: it, (), {})), (b"i", it))
        self.assertEqual(runner((lambda **kw: it, (), {"raw": True})), (b"r", it))
        self.assertEqual(CallRunner(raw=True)((lambda: it, (), {})), (b"r", it))

    def test_stats(self) -> None:
        runner = CallRunner(callStats=True)
        for _ in range(3):
            runner((sum, ([1, 2],), {}))
        runner((divmod, (1, 0), {}))
        self.assertEqual(len(runner.callTimes), 3)
        self.assertTrue(all(t >= 0 for t in runner.callTimes))
        self.assertEqual(CallRunner().callTimes, [])


class CallAfterDeferredTest(unittest.TestCase):
    timeout = 10

    def test_waitsForPending(self) -> None:
        ns = SimpleNamespace(d=Deferred())
        result = callAfterDeferred(ns, "d", lambda x: x * 2, 21)
        self.assertNoResult(result)
        startup = ns.d
        startup.callback("started")
        self.assertEqual(self.successResultOf(result), 42)
        self.assertFalse(hasattr(ns, "d"))
        self.assertEqual(self.successResultOf(startup), "started")

    def test_callsNow(self) -> None:
        self.assertEqual(self.successResultOf(callAfterDeferred(object(), "d", len, "ab")), 2)
        ns = SimpleNamespace(d=succeed(None))
        self.assertEqual(self.successResultOf(callAfterDeferred(ns, "d", len, "abc")), 3)
        self.assertFalse(hasattr(ns, "d"))


class KillProcessTest(unittest.TestCase):
    timeout = 10

    def spawn(self, code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        self.addCleanup(self._reap, proc)
        assert proc.stdout is not None
        proc.stdout.readline()  # the child is ready once it says so
        return proc

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    @inlineCallbacks
    def test_terminates(self):
        proc = self.spawn("import time; print('ready', flush=True); time.sleep(30)")
        self.assertIs((yield killProcess(proc.pid)), True)
        self.assertEqual(proc.wait(5), -15)

    @inlineCallbacks
    def test_killsWhenTermIgnored(self):
        proc = self.spawn(
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(30)"
        )
        self.assertIs((yield killProcess(proc.pid, timeout=0.3)), True)
        self.assertEqual(proc.wait(5), -9)

    @inlineCallbacks
    def test_alreadyGone(self):
        proc = self.spawn("print('ready', flush=True)")
        proc.wait(5)
        self.assertIs((yield killProcess(proc.pid)), False)

    @inlineCallbacks
    def test_exitedButNotReaped(self):
        proc = self.spawn("print('ready', flush=True)")
        # Wait for the exit without reaping: the child stays a zombie.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        self.assertIs((yield killProcess(proc.pid)), False)
        # killProcess left the exit status to the parent.
        self.assertEqual(proc.wait(5), 0)

"""
An idle child polls for its next call before it blocks, and backs off
while polling comes to nothing (`asynqueue._process._child`, *Waiting*).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from asynqueue._process import _child, _parent
from asynqueue._process._child import MAX_SPIN_SKIP, SPIN_SECONDS, ChildLoop
from asynqueue._support._system import cpuBudget
from asynqueue._wire._codec import CLOSE
from asynqueue._wire._framing import encode
from asynqueue.process import ProcessQueue, ProcessWorker

from ..helpers import process as h


class NeverReady:
    """A poller that reports nothing to read: the next call comes after the polls."""

    def __init__(self) -> None:
        self.polls = 0

    def poll(self, timeout: float) -> list[Any]:
        self.polls += 1
        return []


class WaitTests(TestCase):
    """`ChildLoop._waitAndRead` over a real socket pair."""

    timeout = 10

    def setUp(self) -> None:
        self.parentSide, childSide = socket.socketpair()
        self.addCleanup(self.parentSide.close)
        self.addCleanup(childSide.close)
        self.loop = ChildLoop(childSide.fileno())
        self.loop.spinSeconds = 0.0002

    def send(self) -> None:
        """The parent's next message (a CLOSE, which the loop only queues)."""
        self.parentSide.sendall(b"".join(bytes(b) for b in encode(CLOSE, [b"x"])))

    def wait(self) -> None:
        before = len(self.loop.controls)
        self.assertTrue(self.loop._waitAndRead())
        self.assertEqual(len(self.loop.controls), before + 1)

    def miss(self) -> NeverReady:
        """A wait whose polls all came to nothing; the message is read after them."""
        real, self.loop.poller = self.loop.poller, NeverReady()
        try:
            self.send()
            self.wait()
            return self.loop.poller
        finally:
            self.loop.poller = real

    def test_a_call_already_there_is_taken(self) -> None:
        self.loop.spinMisses = 4
        self.send()
        self.wait()
        self.assertEqual((self.loop.spinMisses, self.loop.spinSkip), (0, 0))

    def test_a_poll_that_comes_to_nothing_backs_off(self) -> None:
        poller = self.miss()
        self.assertGreater(poller.polls, 0)
        self.assertEqual((self.loop.spinMisses, self.loop.spinSkip), (1, 1))

    def test_the_back_off_doubles_up_to_its_cap(self) -> None:
        for skip in (1, 2, 4, 8):
            self.loop.spinMisses, self.loop.spinSkip = skip // 2, 0
            self.miss()
            self.assertEqual((self.loop.spinMisses, self.loop.spinSkip), (skip, skip))
        self.loop.spinMisses, self.loop.spinSkip = MAX_SPIN_SKIP, 0
        self.miss()
        self.assertEqual(self.loop.spinSkip, MAX_SPIN_SKIP)

    def test_skipped_waits_do_not_poll(self) -> None:
        self.loop.spinMisses = self.loop.spinSkip = 3
        # Long waits keep the back-off: the clock says each took a second.
        clock = iter(range(1000))
        self.patch(_child, "perf_counter", lambda: float(next(clock)))
        for left in (2, 1, 0):
            poller = self.miss()
            self.assertEqual(poller.polls, 0)
            self.assertEqual((self.loop.spinMisses, self.loop.spinSkip), (3, left))
        # With none left, it polls again.
        self.assertGreater(self.miss().polls, 0)

    def test_a_short_blocking_wait_starts_over(self) -> None:
        self.loop.spinSeconds = 5.0  # (a read of what is there takes far less)
        self.loop.spinMisses = self.loop.spinSkip = 64
        self.send()  # (already there: the wait is as short as can be)
        self.wait()
        self.assertEqual((self.loop.spinMisses, self.loop.spinSkip), (0, 0))

    def test_no_polling_when_turned_off(self) -> None:
        self.loop.spinSeconds = 0
        poller = self.miss()
        self.assertEqual(poller.polls, 0)
        self.assertEqual((self.loop.spinMisses, self.loop.spinSkip), (0, 0))


class SettingTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def check(self, expected: float, **kw: Any) -> Any:
        q = ProcessQueue(2, returnFailure=True, **kw)
        self.addCleanup(q.shutdown)
        answers = yield defer.gatherResults([q.call(h.childSpin) for _ in range(4)])
        self.assertEqual({a[0] for a in answers}, {expected})
        self.assertEqual(answers[0][1], MAX_SPIN_SKIP)
        results = yield defer.gatherResults([q.call(h.add, i, 1) for i in range(200)])
        self.assertEqual(results, list(range(1, 201)))

    def test_the_default(self) -> Any:
        return self.check(SPIN_SECONDS if cpuBudget() >= 2 else 0.0)

    def test_auto_polls_only_with_two_cpus_or_more(self) -> None:
        for budget, expected in ((1.0, 0.0), (1.5, 0.0), (2.0, SPIN_SECONDS), (8.0, SPIN_SECONDS)):
            self.patch(_parent, "cpuBudget", lambda budget=budget: budget)
            self.assertEqual(_parent._spinSeconds("auto"), expected, budget)
            self.assertEqual(_parent._spinSeconds(0.0003), 0.0003)

    def test_a_chosen_time(self) -> Any:
        return self.check(0.0003, spin=0.0003)

    def test_turned_off(self) -> Any:
        return self.check(0.0, spin=None)

    def test_bad_settings_fail_at_once(self) -> None:
        for bad, error in (
            (-0.001, ValueError),
            (1, ValueError),
            (float("nan"), ValueError),
            ("fast", TypeError),
            (True, TypeError),
            ("Auto", TypeError),
        ):
            with self.assertRaises(error, msg=repr(bad)):
                ProcessQueue(1, spin=bad)
            with self.assertRaises(error, msg=repr(bad)):
                ProcessWorker(spin=bad)

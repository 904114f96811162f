"""
An idle child polls for its next call before it blocks, backs off while
polling comes to nothing, and polls only while few other children are in
play (`asynqueue._process._child`, *Waiting*; `_arena.PollBoard`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from asynqueue._process import _child, _parent
from asynqueue._process._arena import BOARD_SLOTS, PollBoard
from asynqueue._process._child import IN_PLAY_NS, MAX_SPIN_SKIP, SPIN_SECONDS, ChildLoop
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


def newBoard(test: TestCase) -> PollBoard:
    board = PollBoard.create()
    if board is None:
        test.fail("no memfd on this system")
    test.addCleanup(os.close, board.fd)
    return board


class BoardTests(TestCase):
    """`PollBoard` in real shared memory, two mappings of it."""

    def test_two_mappings_see_the_same_marks_and_stamps(self) -> None:
        parent = newBoard(self)
        child = PollBoard(os.dup(parent.fd))
        parent.setExtent(3)
        self.assertEqual(child.busy(), 0)
        child.mark(0, True)
        child.mark(2, True)
        self.assertEqual(parent.busy(), 2)
        parent.setExtent(2)  # (the place at 2 is not in use: not counted)
        self.assertEqual(child.busy(), 1)
        child.stamp(1, 1_000)
        self.assertEqual(parent.recent(0, 999), 1)
        self.assertEqual(parent.recent(1, 999), 0)  # (but for the one asking)
        self.assertEqual(parent.recent(0, 1_000), 0)
        parent.clear(1)
        parent.clear(0)
        self.assertEqual((child.busy(), child.recent(2, 0)), (0, 0))

    def test_places_are_handed_out_lowest_first_and_taken_back(self) -> None:
        taken = [_parent._Board.take() for _ in range(3)]
        self.assertNotIn(None, taken)
        try:
            self.assertEqual(len(set(taken)), 3)
            board = _parent._Board.board
            assert board is not None
            board.mark(taken[1], True)
            _parent._Board.give(taken[1])
            self.assertEqual(board.map[taken[1]], 0)  # (cleared)
            lowest = min(set(range(BOARD_SLOTS)) - _parent._Board.used)
            again = _parent._Board.take()
            self.assertEqual(again, lowest)
            self.assertIn(again, _parent._Board.used)
            taken[1] = again
        finally:
            for slot in taken:
                _parent._Board.give(slot)  # type: ignore[arg-type]
        self.assertFalse(set(taken) & _parent._Board.used)


class WaitTests(TestCase):
    """`ChildLoop._waitAndRead` over a real socket pair and a real board."""

    timeout = 10

    def setUp(self) -> None:
        self.parentSide, childSide = socket.socketpair()
        self.addCleanup(self.parentSide.close)
        self.addCleanup(childSide.close)
        self.loop = ChildLoop(childSide.fileno())
        self.loop.spinSeconds = 0.0002
        self.board = self.loop.board = newBoard(self)
        self.board.setExtent(2)  # me at 0, another child at 1
        self.board.mark(0, True)

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

    def test_no_polling_without_a_board(self) -> None:
        self.loop.board = None
        self.assertEqual(self.miss().polls, 0)

    def test_no_polling_while_another_child_is_busy(self) -> None:
        self.board.mark(1, True)
        self.assertEqual(self.miss().polls, 0)
        self.assertEqual((self.loop.spinMisses, self.loop.spinSkip), (0, 0))  # (not a miss)
        self.loop.pollers = 2  # (with three CPUs, two children may be busy)
        self.assertGreater(self.miss().polls, 0)

    def test_no_polling_while_another_child_took_calls_lately(self) -> None:
        self.board.stamp(1, time.monotonic_ns())
        self.assertEqual(self.miss().polls, 0)
        self.board.stamp(1, time.monotonic_ns() - 2 * IN_PLAY_NS)
        self.assertGreater(self.miss().polls, 0)

    def test_polling_stops_when_another_child_gets_busy(self) -> None:
        board = self.board

        class BusyOnThird(NeverReady):
            def poll(self, timeout: float) -> list[Any]:
                if self.polls == 2:
                    board.mark(1, True)
                return super().poll(timeout)

        self.loop.spinSeconds = 5.0  # (it would poll that long)
        real, self.loop.poller = self.loop.poller, BusyOnThird()
        try:
            self.send()
            self.wait()
            self.assertEqual(self.loop.poller.polls, 3)
        finally:
            self.loop.poller = real
        self.assertEqual((self.loop.spinMisses, self.loop.spinSkip), (0, 0))

    def test_blocked_means_idle_on_the_board_and_a_stamp_after(self) -> None:
        self.loop.spinSeconds = 0.0001
        self.loop.spinSkip = 1  # (it blocks at once)
        before = time.monotonic_ns()
        done = threading.Event()
        thread = threading.Thread(target=lambda: (self.loop._waitAndRead(), done.set()))
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while self.board.map[0] != 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            self.assertEqual(self.board.map[0], 0)  # idle while it blocks
            self.assertFalse(done.is_set())
        finally:
            self.send()
            thread.join(5)
        self.assertTrue(done.is_set())
        self.assertEqual(self.board.map[0], 1)
        self.assertGreaterEqual(self.board.stamps[0], before)


class SettingTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def check(self, expected: float, **kw: Any) -> Any:
        q = ProcessQueue(2, returnFailure=True, **kw)
        self.addCleanup(q.shutdown)
        answers = yield defer.gatherResults([q.call(h.childSpin) for _ in range(4)])
        self.assertEqual({a[0] for a in answers}, {expected})
        self.assertEqual(answers[0][1], MAX_SPIN_SKIP)
        if expected:
            # Each child has its own place on the board; they leave one CPU.
            self.assertEqual({a[2] for a in answers}, {True})
            self.assertEqual({a[4] for a in answers}, {max(1, int(cpuBudget()) - 1)})
            slots = {a[3] for a in answers}
            self.assertEqual(len(slots), 2)
            self.assertLessEqual(slots, _parent._Board.used)
        else:
            self.assertEqual({a[2] for a in answers}, {False})
            slots = set()
        results = yield defer.gatherResults([q.call(h.add, i, 1) for i in range(200)])
        self.assertEqual(results, list(range(1, 201)))
        yield q.shutdown()
        self.assertFalse(slots & _parent._Board.used)  # (given back)

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

"""
Full garbage collections held off while a queue's backlog is large
(`_core._gcpause`): when the hold starts and ends, with the `Dispatcher`
driven by hand (in-memory workers, a `Clock`), and that it never outlives
its holders or overrides a threshold set by someone else meanwhile.
"""

from __future__ import annotations

import gc
from typing import Any

from asynqueue._core import _gcpause
from asynqueue._core._calls import _Call

from .test_dispatch import DispatchTestCase, identity
from .test_queue import PipeliningWorker

BURST = 20
LOW = 5


class _GCPauseCase(DispatchTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.thresholds = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *self.thresholds)
        self.patch(_gcpause, "BURST", BURST)
        self.patch(_gcpause, "LOW", LOW)
        # No full collection seen lately (unless a test runs one): a hold
        # ends with the thresholds put back, not with a grace.
        self.patch(_gcpause, "_lastFull", float("-inf"))
        self.assertFalse(_gcpause.isHeld())

    def tearDown(self) -> None:
        # No test may leave the collector held or in a grace (nor, failing,
        # the next tests).
        held = _gcpause.isHeld()
        graced = _gcpause._saved is not None
        with _gcpause._lock:
            if held:
                _gcpause._end()
            _gcpause._restore()
        self.assertFalse(held)
        self.assertFalse(graced)
        super().tearDown()

    def submit(self, n: int) -> list[_Call]:
        return [self.call(identity, i) for i in range(n)]

    def assertHeld(self) -> None:
        self.assertTrue(_gcpause.isHeld())
        self.assertGreater(gc.get_threshold()[2], 1_000_000)
        self.assertEqual(gc.get_threshold()[:2], self.thresholds[:2])

    def assertReleased(self) -> None:
        self.assertFalse(_gcpause.isHeld())
        self.assertEqual(gc.get_threshold(), self.thresholds)


class GCPauseTests(_GCPauseCase):
    def test_a_backlog_over_the_burst_holds_until_it_drains(self) -> None:
        w = PipeliningWorker(window=4)
        self.attach(w)
        calls = self.submit(BURST)  # 4 taken, BURST - 4 queued: not yet
        self.assertReleased()
        calls += self.submit(5)  # BURST + 1 queued
        self.assertHeld()
        results: list[Any] = []
        for c in calls:
            c.addCallback(results.append)
        while w.current:
            w.finishAll()
            if self.queued() > LOW:
                self.assertHeld()
        self.assertReleased()
        self.assertEqual(results, list(range(BURST)) + list(range(5)))

    def test_abandoning_the_backlog_releases(self) -> None:
        calls = self.submit(BURST + 1)  # no worker: all queued
        self.assertHeld()
        for c in calls:
            c.addErrback(lambda _: None)
        self.dispatcher.abandon("was shut down")
        self.assertReleased()

    def test_withdrawing_down_to_the_low_mark_releases(self) -> None:
        calls = self.submit(BURST + 1)
        self.assertHeld()
        for c in calls:
            c.addErrback(lambda _: None)
        for c in calls[: BURST + 1 - LOW - 1]:
            self.assertTrue(self.dispatcher.withdraw(c))
            self.assertHeld()
        self.assertTrue(self.dispatcher.withdraw(calls[BURST - LOW]))
        self.assertReleased()
        for c in calls[BURST - LOW + 1 :]:
            self.dispatcher.withdraw(c)

    def test_cancelling_the_queued_calls_releases(self) -> None:
        calls = self.submit(BURST + 1)
        self.assertHeld()
        for c in calls:
            c.addErrback(lambda _: None)
            c.cancel()
        self.assertEqual(self.queued(), 0)
        self.assertReleased()

    def test_two_holders_release_together(self) -> None:
        first = self.submit(BURST + 1)
        token = _gcpause.hold(lambda: 0)  # another queue's hold
        for c in first:
            c.addErrback(lambda _: None)
        self.dispatcher.abandon("was shut down")
        self.assertHeld()  # the other still holds
        _gcpause.release(token)
        self.assertReleased()
        _gcpause.release(token)  # a second release is a no-op
        self.assertReleased()

    def test_a_threshold_changed_meanwhile_is_kept(self) -> None:
        calls = self.submit(BURST + 1)
        self.assertHeld()
        gc.set_threshold(500, 7, 9)  # the program's own choice, during the hold
        for c in calls:
            c.addErrback(lambda _: None)
        self.dispatcher.abandon("was shut down")
        self.assertFalse(_gcpause.isHeld())
        self.assertEqual(gc.get_threshold(), (500, 7, 9))

    def test_a_stale_hold_ends_at_the_next_collection(self) -> None:
        # A queue dropped with its backlog never releases: after STALE
        # seconds without progress, any collection ends the hold.
        calls = self.submit(BURST + 1)
        self.assertHeld()
        self.patch(_gcpause, "STALE", 0.0)
        self.patch(_gcpause, "_renewed", -1.0)
        gc.collect(0)
        self.assertReleased()
        # The dispatcher's own release later is spent: no second restore.
        gc.set_threshold(600, 10, 10)
        for c in calls:
            c.addErrback(lambda _: None)
        self.dispatcher.abandon("was shut down")
        self.assertEqual(gc.get_threshold(), (600, 10, 10))

    def test_a_moving_queue_keeps_its_hold(self) -> None:
        # Progress is polled at a collection's start: a queue whose backlog
        # moved since the last look renews the hold, one that did not loses
        # it once STALE has passed.
        # (Only the collections below poll: an automatic one in between
        # would see the progress first.)
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        w = PipeliningWorker(window=4)
        self.attach(w)
        calls = self.submit(BURST + 10)
        for c in calls:
            c.addErrback(lambda _: None)
        self.assertHeld()
        self.patch(_gcpause, "POLL", 0.0)
        self.patch(_gcpause, "STALE", 1e-9)
        w.finishAll()  # progress since the hold began
        self.patch(_gcpause, "_renewed", -1.0)
        gc.collect(0)
        self.assertHeld()  # renewed: it moved
        self.patch(_gcpause, "_renewed", -1.0)
        gc.collect(0)
        self.assertReleased()  # nothing moved since the last look
        while w.current:
            w.finishAll()


class GraceTests(_GCPauseCase):
    """
    A hold that ends less than SPACING seconds after a full collection
    ends with a grace: the next full collection comes a usual cycle later.
    """

    def setUp(self) -> None:
        super().setUp()
        # Only the collections below run (an automatic one would move the
        # count between a release and its check).
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)

    def holdAndRelease(self, meanwhile: Any = None, usual: tuple[int, ...] | None = None) -> None:
        """
        A backlog over the burst, then abandoned: one hold, one release;
        *meanwhile()* is called during the hold, whose thresholds come from
        *usual* (by default those before the test).
        """
        usual = usual or self.thresholds
        calls = self.submit(BURST + 1)
        self.assertTrue(_gcpause.isHeld())
        self.assertEqual(gc.get_threshold()[:2], usual[:2])
        self.assertGreater(gc.get_threshold()[2], 1_000_000)
        if meanwhile is not None:
            meanwhile()
        for c in calls:
            c.addErrback(lambda _: None)
        self.dispatcher.abandon("was shut down")
        self.assertFalse(_gcpause.isHeld())

    def enterGrace(self) -> None:
        """A hold, a full collection, a hold again: a grace after that one."""
        self.holdAndRelease()  # (the watch is on from now)
        self.fullThenYoung()
        self.holdAndRelease()
        self.assertGrace(self.thresholds)

    def assertGrace(self, usual: tuple[int, ...]) -> None:
        self.assertFalse(_gcpause.isHeld())
        threshold = gc.get_threshold()
        self.assertEqual(threshold[:2], usual[:2])
        # A usual cycle from now: the count of middle-generation collections
        # since the last full one, plus the usual threshold (the count is
        # above 0 here: see fullThenYoung).
        count = gc.get_count()[2]
        self.assertGreater(count, 0)
        self.assertEqual(threshold[2], count + usual[2])

    @staticmethod
    def fullThenYoung() -> None:
        """A full collection, then two of the middle generation (the count is 2)."""
        gc.collect()
        gc.collect(1)
        gc.collect(1)

    def test_a_full_collection_during_the_hold_ends_it_with_a_grace(self) -> None:
        self.holdAndRelease(meanwhile=self.fullThenYoung)  # seen by the watch: held on
        self.assertGrace(self.thresholds)
        graced = gc.get_threshold()
        gc.collect(1)  # not a full collection: the grace goes on (its count rises)
        self.assertEqual(gc.get_threshold(), graced)
        gc.collect()  # the full collection the grace waited for
        self.assertReleased()

    def test_a_full_collection_long_ago_gets_no_grace(self) -> None:
        self.holdAndRelease()
        self.fullThenYoung()
        self.patch(_gcpause, "SPACING", 0.0)
        self.holdAndRelease()
        self.assertReleased()

    def test_a_hold_during_a_grace_goes_back_to_the_usual_thresholds(self) -> None:
        self.enterGrace()
        self.holdAndRelease()  # held from the grace: its usual ones kept
        self.assertGrace(self.thresholds)
        gc.collect()
        self.assertReleased()

    def test_a_threshold_set_during_a_grace_is_kept(self) -> None:
        self.enterGrace()
        gc.set_threshold(500, 7, 9)  # the program's own choice
        gc.collect()
        self.assertEqual(gc.get_threshold(), (500, 7, 9))
        self.assertIsNone(_gcpause._saved)
        # And the next hold goes back to the program's choice.
        self.patch(_gcpause, "SPACING", 0.0)
        self.holdAndRelease(usual=(500, 7, 9))
        self.assertEqual(gc.get_threshold(), (500, 7, 9))

    def test_a_threshold_set_during_the_hold_gets_no_grace(self) -> None:
        self.holdAndRelease()
        self.fullThenYoung()
        self.holdAndRelease(meanwhile=lambda: gc.set_threshold(500, 7, 9))
        self.assertEqual(gc.get_threshold(), (500, 7, 9))
        self.assertIsNone(_gcpause._saved)


class LongHoldTests(_GCPauseCase):
    """A hold lets a full collection through once MAX_DEFER seconds passed without one."""

    def setUp(self) -> None:
        super().setUp()
        # Only the collections below run, and each looks at the holders.
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        self.patch(_gcpause, "POLL", 0.0)
        self.worker = PipeliningWorker(window=4)
        self.attach(self.worker)
        self.calls = self.submit(BURST + 10)
        for c in self.calls:
            c.addErrback(lambda _: None)
        self.assertHeld()

    def drain(self) -> None:
        while self.worker.current:
            self.worker.finishAll()

    def test_a_full_collection_comes_through_once_one_is_due(self) -> None:
        gc.collect(0)  # a look at the holders: not due yet (MAX_DEFER is a minute)
        self.assertHeld()
        self.patch(_gcpause, "MAX_DEFER", 0.0)
        gc.collect(0)  # due now: the oldest threshold goes down, held still
        self.assertTrue(_gcpause.isHeld())
        self.assertEqual(gc.get_threshold(), (*self.thresholds[:2], 0))
        gc.collect(1)  # not a full collection: still let through
        self.assertEqual(gc.get_threshold()[2], 0)
        self.patch(_gcpause, "MAX_DEFER", 60.0)
        gc.collect()  # the full collection: held again
        self.assertHeld()
        gc.collect(0)  # and not due again for a while
        self.assertHeld()
        self.drain()  # a full collection ran lately: the hold ends with a grace
        self.assertFalse(_gcpause.isHeld())
        self.assertGreater(gc.get_threshold()[2], 0)
        gc.collect()
        self.assertReleased()

    def test_a_hold_that_ends_while_a_full_collection_is_due_puts_the_thresholds_back(
        self,
    ) -> None:
        self.patch(_gcpause, "MAX_DEFER", 0.0)
        gc.collect(0)
        self.assertEqual(gc.get_threshold()[2], 0)
        self.drain()
        self.assertReleased()
        gc.collect()  # (no hold left to raise it again)
        self.assertReleased()

    def test_a_threshold_the_program_set_is_not_lowered(self) -> None:
        gc.set_threshold(500, 7, 9)
        self.patch(_gcpause, "MAX_DEFER", 0.0)
        gc.collect(0)
        self.assertEqual(gc.get_threshold(), (500, 7, 9))
        self.drain()
        self.assertEqual(gc.get_threshold(), (500, 7, 9))

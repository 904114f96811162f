"""
The fault soak: thousands of calls that return, raise, kill their worker
process, time out, return 1-20 MB, stream items or get cancelled, while
workers are detached (their calls reassigned) and attached; then shutdown.
Every Deferred fires exactly once with the right outcome, and no child
process is left.

A small size by default; ``ASYNQUEUE_SOAK=10000`` runs 10,000 calls per queue
(``ASYNQUEUE_SOAK_SEED`` picks another seed).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import Counter
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from asynqueue import ThreadQueue, ThreadWorker, errors
from asynqueue.iteration import Deferator
from asynqueue.process import ProcessQueue, ProcessWorker

from .helpers import process as h
from .helpers.common import collect, waitUntil

SIZE = int(os.environ.get("ASYNQUEUE_SOAK", "0") or 0) or 1000
SEED = int(os.environ.get("ASYNQUEUE_SOAK_SEED", "13"))
# Calls in flight at once (large results are dropped as soon as checked).
WINDOW = 64
# A sleeping call's timeout, and how long it would sleep.
TIMEOUT, SLEEP = 0.3, 3.0

# Kinds of call and their weights.
KINDS = {
    "value": 50,
    "error": 12,
    "items": 8,
    "cancel": 14,
    "large": 3,
    "sleep": 1,
    "exit": 1,
}

# Some calls belong to a series (None: most do not).
SERIES = (None, None, None, "s1", "s2", "s3")

# Kinds whose Deferred fires as their task ends (not later, as streamed or
# chunked results do, nor earlier, as a cancel does): in a series, they fire
# in submission order.
IN_ORDER = {"value", "error", "sleep", "exit"}


def _dropTimer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


def workerChildren() -> list[int]:
    """PIDs of this process's worker children still there (running or not reaped)."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue  # gone meanwhile
        if ppid == me and b"asynqueue" in cmdline:
            found.append(int(entry))
    return found


class Soak:
    """One soak run: the calls, the churn of workers, and what came back."""

    def __init__(self, q: Any, newWorker: Any, kinds: dict[str, int], size: int) -> None:
        self.q = q
        self.newWorker = newWorker
        # The calls are the same for a seed; the churn's timing varies.
        self.rng = random.Random(SEED)
        self.churnRng = random.Random(SEED + 1)
        self.kinds: dict[int, str] = {}
        self.calls: dict[int, Any] = {}
        self.history: dict[int, str] = {}
        self.names = list(kinds)
        self.weights = list(kinds.values())
        self.size = size
        self.submitted = 0
        self.outstanding = 0
        self.fired: Counter[int] = Counter()
        self.wrong: list[str] = []
        self.seen: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.finished: Deferred[None] = Deferred()
        self.churns: Counter[str] = Counter()
        self.nextChurn: Any = None
        self.order: dict[Any, list[int]] = {}  # series -> IN_ORDER calls, as they fired

    def start(self) -> Deferred[None]:
        self.topUp()
        self.churn()
        return self.finished

    # ------------------------------------------------------------ calls

    def topUp(self) -> None:
        while self.submitted < self.size and self.outstanding < WINDOW:
            self.submitOne()
        if self.submitted == self.size and not self.outstanding and not self.finished.called:
            if self.nextChurn is not None and self.nextChurn.active():
                self.nextChurn.cancel()
            self.finished.callback(None)

    def submitOne(self) -> None:
        rng = self.rng
        i = self.submitted
        self.submitted += 1
        self.outstanding += 1
        kind = self.kinds[i] = rng.choices(self.names, self.weights)[0]
        self.seen[kind] += 1
        series = rng.choice(SERIES)
        q = self.q
        if kind == "value":
            d = q.call(h.soakValue, i, series=series)
            expect: Any = i
        elif kind == "error":
            d = q.call(h.soakError, i, series=series)
            expect = ValueError
        elif kind == "items":
            n = rng.randint(1, 300)
            d = q.call(h.soakItems, n, series=series)
            expect = list(range(n))
        elif kind == "cancel":
            d = q.call(h.soakValue, i, rng.choice([0.0, 0.02]), series=series)
            expect = i
            delay = rng.choice([None, 0.0, 0.005, 0.03])
            if delay is None:
                d.cancel()
            else:
                timer = reactor.callLater(delay, d.cancel)
                d.addBoth(_dropTimer, timer)  # fired first: no cancel left behind
        elif kind == "large":
            tag, megabytes = i % 251, rng.randint(1, 20)
            d = q.call(h.soakLarge, tag, megabytes, series=series)
            expect = (tag, megabytes)
        elif kind == "sleep":
            d = q.call(h.soakValue, i, SLEEP, series=series, timeout=TIMEOUT)
            expect = errors.TimeoutError
        else:
            d = q.call(h.soakExit, series=series)
            expect = errors.WorkerLost
        self.calls[i] = d
        d.addBoth(self.fired1, i, kind, expect, series)

    def fired1(self, result: Any, i: int, kind: str, expect: Any, series: Any) -> None:
        self.fired[i] += 1
        if self.fired[i] > 1:
            self.wrong.append(f"call {i} ({kind}) fired {self.fired[i]} times")
            return
        if series is not None and kind in IN_ORDER:
            self.order.setdefault(series, []).append(i)
        call = self.calls.pop(i)
        self.history[i] = f"{kind} (timeouts {call.timeouts}, losses {call.losses})"
        if kind == "items" and isinstance(result, Deferator):
            collect(result).addBoth(self.itemsDone, i, expect)
        elif kind == "items":
            self.itemsDone(result, i, expect)
        else:
            self.check(result, i, kind, expect)
            self.done()

    def itemsDone(self, items: Any, i: int, expect: list[int]) -> None:
        if isinstance(items, Failure) and items.check(errors.WorkerError):
            # Its worker went away before all items came: a clear error.
            self.outcomes["items cut short"] += 1
            return self.done()
        if items != expect:
            self.wrong.append(f"call {i} (items) gave {items!r:.80}")
        else:
            self.outcomes["items"] += 1
        self.done()

    def check(self, result: Any, i: int, kind: str, expect: Any) -> None:
        if kind == "cancel" and isinstance(result, Failure) and result.check(CancelledError):
            self.outcomes["cancelled"] += 1
            return
        if kind == "large":
            tag, megabytes = expect
            right = isinstance(result, bytes) and len(result) == megabytes << 20
            right = right and result[:1] == result[-1:] == bytes([tag])
        elif isinstance(expect, type):
            right = isinstance(result, Failure) and bool(result.check(expect))
        else:
            right = result == expect
        if right:
            self.outcomes[kind] += 1
        else:
            self.wrong.append(f"call {i} ({kind}) gave {result!r:.200}")
        if isinstance(result, Failure) and not right:
            result.cleanFailure()

    def done(self) -> None:
        self.outstanding -= 1
        reactor.callLater(0, self.topUp)

    # ------------------------------------------------------------ workers

    def churn(self) -> None:
        """Now and then detach a worker (its calls go back to the queue), attach another."""
        rng = self.churnRng
        workers = self.q.workers()
        if workers:
            crash = rng.random() < 0.7
            self.churns["crash" if crash else "graceful"] += 1
            d = self.q.detachWorker(rng.choice(workers), reassign=True, crash=crash)
            d.addCallback(self.noneLeft)
        if len(self.q.workers()) < 3:
            self.q.attachWorker(self.newWorker())
        self.nextChurn = reactor.callLater(rng.uniform(0.05, 0.4), self.churn)

    def noneLeft(self, unfinished: list[Any]) -> None:
        if unfinished:
            self.wrong.append(f"a reassigning detach returned {unfinished!r:.200}")


# Per test: the small size fits the default; 10,000 calls take minutes.
LIMIT = 60 if SIZE <= 1000 else 3600
pytestmark = pytest.mark.timeout(LIMIT)


class SoakTests(TestCase):
    timeout = LIMIT

    @inlineCallbacks
    def soak(self, q: Any, newWorker: Any, kinds: dict[str, int]) -> Any:
        soak = Soak(q, newWorker, kinds, SIZE)
        t0 = time.monotonic()
        yield soak.start()
        yield q.shutdown()
        self.assertEqual(soak.wrong, [])
        self.assertEqual(sorted(soak.fired), list(range(SIZE)))
        self.assertEqual(set(soak.fired.values()), {1})
        for series, fired in soak.order.items():
            late = [
                f"{i} {soak.history[i]} before {j} {soak.history[j]}"
                for i, j in itertools.pairwise(fired)
                if i > j
            ]
            self.assertEqual(late, [], f"series {series}: fired after later calls")
        # Every kind of call was made, and the right outcomes add up.
        self.assertEqual(set(soak.seen), set(kinds))
        self.assertEqual(sum(soak.outcomes.values()), SIZE)
        self.assertTrue(soak.churns)
        print(
            f"\nsoak {type(q).__name__}: {SIZE} calls in {time.monotonic() - t0:.1f} s;"
            f" {dict(soak.outcomes)}; detaches {dict(soak.churns)}"
        )
        return soak

    @inlineCallbacks
    def test_process_queue(self) -> Any:
        q = ProcessQueue(3, returnFailure=True, timeout=5)
        yield self.soak(q, ProcessWorker, KINDS)
        # Every child process was reaped: none is left, not even as a zombie.
        yield waitUntil(lambda: not workerChildren(), 20)

    @inlineCallbacks
    def test_thread_queue(self) -> Any:
        kinds = dict(KINDS)
        del kinds["exit"]  # no process to end
        q = ThreadQueue(3, returnFailure=True, timeout=5)
        yield self.soak(q, ThreadWorker, kinds)

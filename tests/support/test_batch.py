"""Batches whose calls not started can be given back (`asynqueue._support._batch`)."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from asynqueue._futures._work import runGroup
from asynqueue._support._batch import (
    Batch,
    isBatch,
    runningBatch,
    stopRunningBatch,
)


def test_a_batch_travels_as_a_plain_list_without_its_owner() -> None:
    told: list[Any] = []
    batch = Batch([(abs, (-1,)), (len, ("ab",))], giveBack=lambda k, done: told.append(k))
    copy = pickle.loads(pickle.dumps(batch))
    assert type(copy) is list
    assert copy == [(abs, (-1,)), (len, ("ab",))]
    assert told == []
    assert isBatch((batch, 2)) and not isBatch((copy,)) and not isBatch(())


def test_nothing_to_stop_outside_a_batch_and_nothing_left_after_its_last_call() -> None:
    assert stopRunningBatch() is None
    with runningBatch(2) as run:
        for i in run.indices:
            run.outcomes.append(i)
        assert stopRunningBatch() == (2, run)  # every call taken: none to give back
        assert run.unsent() == [0, 1]
        assert run.finish() == [0, 1]
        assert stopRunningBatch() is None  # (returning its result: nothing goes ahead)
    assert stopRunningBatch() is None


@given(n=st.integers(1, 40), stopAt=st.integers(0, 45))
def test_a_stopped_batch_runs_each_call_here_or_gives_it_back(n: int, stopAt: int) -> None:
    """Stopped inside call *stopAt*: it and those before ran here, once; the rest did not."""
    ran: list[int] = []
    stopped: Any = None
    with runningBatch(n) as run:
        for i in run.indices:
            if i == stopAt:  # (as a signal handler would, in the middle of the call)
                stopped = stopRunningBatch()
            ran.append(i)
            run.outcomes.append(i * 10)
    if stopAt >= n:  # (never stopped)
        assert stopped is None
        assert ran == list(range(n))
        return
    start, stopRun = stopped
    assert stopRun is run
    assert start == stopAt + 1
    assert ran == list(range(start))
    assert run.unsent() == [i * 10 for i in range(start)]


def test_run_group_leaves_out_the_outcomes_sent_ahead() -> None:
    sent: list[Any] = []

    def stopHere(x: int) -> int:
        stopped = stopRunningBatch()
        assert stopped is not None
        _, run = stopped
        sent.extend(run.unsent())  # (what a child sends in its REST message)
        run.sent += len(run.unsent())
        return x

    def boom() -> None:
        raise KeyError("boom")

    calls = [(abs, (-1,)), (boom, ()), (stopHere, (3,)), (abs, (-4,)), (abs, (-5,))]
    outcomes = runGroup(calls)
    assert [o[:2] for o in sent[:1]] == [(True, 1)]
    assert sent[1][0] is False and isinstance(sent[1][1], KeyError) and "boom" in sent[1][2]
    assert outcomes == [(True, 3, "")]  # the call that stopped it; 3 and 4 never ran
    assert runGroup([(abs, (-i,)) for i in range(3)]) == [(True, i, "") for i in range(3)]

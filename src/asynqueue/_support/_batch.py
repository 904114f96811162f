"""
Batches: many small calls travelling as one task, whose calls not started yet
can be given back while one of them runs long.

A `Batch` is the list of calls of such a task (it pickles as a plain list).
Whoever queued it sets `Batch.giveBack`, to hear which calls will not run
there. In the process that runs it, the batch runner takes its calls one at
a time from `runningBatch`; `stopRunningBatch` (from a signal handler, in the
middle of one of them) ends it after the current call, and lets the outcomes
of the calls done go ahead. Standard library only: lean child processes
import this.
"""

from __future__ import annotations

import contextlib
import operator
from collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:  # (the child must not pay for importing typing)
    from collections.abc import Callable, Iterator
    from typing import Any

__all__ = ["Batch", "BatchRun", "isBatch", "runningBatch", "stopRunningBatch"]


class Batch(list):
    """
    The calls of one batch task. ``giveBack(k, done)`` (if set) is told, in
    the reactor thread, that the calls from index *k* on will not run where
    the task went (the owner queues them again), and given the outcomes of
    the first ``len(done)`` calls, which the task's result then leaves out.
    """

    __slots__ = ("giveBack",)

    def __init__(
        self, calls: Any = (), giveBack: Callable[[int, list[Any]], object] | None = None
    ) -> None:
        super().__init__(calls)
        self.giveBack = giveBack

    def __reduce__(self) -> Any:
        return (list, (list(self),))  # the far side needs the calls only


def isBatch(args: Any) -> bool:
    """Whether a task with these positional *args* runs a `Batch`."""
    return bool(args) and type(args[0]) is Batch


class BatchRun:
    """
    A batch running here: take call indices from ``indices`` one at a time
    (taking one is a single step that a signal handler cannot split, so a
    call is either taken, and runs here, or left to `stopRunningBatch`), and
    append each call's outcome to ``outcomes``. ``sent`` outcomes went ahead
    of the batch's result (see `stopRunningBatch`); it returns `finish`.
    """

    __slots__ = ("finished", "indices", "n", "outcomes", "sent")

    def __init__(self, n: int) -> None:
        self.n = n
        self.indices = iter(range(n))
        self.outcomes: list[Any] = []
        self.sent = 0
        self.finished = False

    def unsent(self) -> list[Any]:
        return self.outcomes[self.sent :]

    def finish(self) -> list[Any]:
        """The outcomes not sent ahead, for the batch's result: none go ahead now."""
        self.finished = True  # (first: a handler from here on sends nothing)
        return self.outcomes[self.sent :]


# The running batches, innermost last (one, in practice).
_running: list[BatchRun] = []

# Called as each batch starts, before its first call (the process child
# sets it: a request to stop may have come before the batch began).
onStart: list[Callable[[], object]] = []


@contextlib.contextmanager
def runningBatch(n: int) -> Iterator[BatchRun]:
    """A batch of *n* calls running in this block (see `BatchRun`)."""
    run = BatchRun(n)
    _running.append(run)
    try:
        for hook in onStart:
            hook()
        yield run
    finally:
        _running.remove(run)


# Called when a batch ends itself after call *i*, whose outcome is to be the
# batch task's own (`endWithOwnOutcome`): the process child sets it, and
# sends the outcomes so far ahead, saying so (REST).
onOwnEnd: list[Callable[[int, BatchRun], object]] = []


# Called after each outcome a batch runner appends (`outcomeReady`): the
# process child sets it, and holds the outcomes as results of the batch's
# task (marking them sent), so that a call done is never lost to a crash.
onOutcome: list[Callable[[BatchRun], object]] = []


def outcomeReady(run: BatchRun) -> None:
    """*run*'s runner appended an outcome: tell `onOutcome`."""
    for hook in onOutcome:
        hook(run)


def endWithOwnOutcome(i: int) -> bool:
    """
    End the innermost running batch after its call *i*, whose outcome is to
    be the batch task's own result or error (one that a batch's list of
    outcomes cannot carry: an iterator to stream, say). The calls after *i*
    go back to the owner, and the outcomes not sent yet go ahead of the
    task's result (`onOwnEnd`). False, changing nothing, where nobody can
    send them (no process child runs this batch).
    """
    if not onOwnEnd or not _running or _running[-1].finished:
        return False
    run = _running[-1]
    deque(run.indices, maxlen=0)  # (taken up: the runner's loop ends)
    run.finished = True  # (first: a signal handler from here on sends nothing)
    for hook in onOwnEnd:
        hook(i + 1, run)
    return True


def stopRunningBatch() -> tuple[int, BatchRun] | None:
    """
    End the innermost running batch after the call it runs: the index of
    its first call not taken (its length if every call was), and the batch;
    None if no batch runs (or it is returning its result). The outcomes of
    the calls done may go ahead of the batch's result: then add their
    number to its ``sent``.
    """
    if not _running or _running[-1].finished:
        return None
    run = _running[-1]
    left = operator.length_hint(run.indices)
    if left:
        deque(run.indices, maxlen=0)  # (taken up: the runner's loop ends)
    return run.n - left, run

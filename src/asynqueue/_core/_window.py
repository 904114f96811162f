"""
The adaptive window of a worker: how many tasks it takes before its ``run``
Deferred waits. Enough to keep the other end (a thread, a child process, a
server's workers) busy while the reactor is elsewhere, few enough that later
scheduling choices (niceness, doNext, a new series) still apply.

Every worker that pipelines sizes its window the same way: about
`WINDOW_WORK` seconds of work per worker at the other end, by the recent
average task time, at least one task, at most the worker's own maximum.
`PipelineWindow` is that policy for the workers that talk over a wire client.

One exception: a worker whose window is one task, and whose task in flight
is a batch of ``TaskQueue.map`` (an `applyChunk` call) of up to
`BATCH_BEHIND_LIMIT` seconds, takes a second one. That batch waits at the
other end behind the running one, so the other end does not wait a round
trip between the two; at the end of a map, one short batch at most waits
while another worker may be idle. (Other tasks keep the rule: they gain
little from it and would be committed to a worker before the scheduler's
later choices can apply.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sized
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from ._chunk import applyChunk
from ._task import Task

__all__ = [
    "BATCH_BEHIND_LIMIT",
    "GROUP_MAX",
    "GROUP_SECONDS",
    "GROUP_WINDOW",
    "SMOOTHING",
    "WINDOW_WORK",
    "PipelineWindow",
    "groupSizeFor",
    "smoothed",
    "smoothedOver",
    "windowFor",
]

# A pipelining worker keeps about this much work (by the recent average
# task time) in flight per worker at the other end.
WINDOW_WORK = 0.002
# A map batch that takes up to this long (by the recent average task time)
# may wait behind another one in a worker whose window is one task.
BATCH_BEHIND_LIMIT = 0.02


# Groups (a backlog's plain calls as one task, see asynqueue._core._dispatch,
# *Groups*): at most this many calls in one, and about this many seconds of
# them, going by the calls run so far.
GROUP_MAX = 32
GROUP_SECONDS = 0.002
# A worker given a group with this many tasks in hand waits for one to end:
# a few groups keep it busy, and a window of groups (each up to GROUP_MAX
# calls) would commit many more calls to one worker than a window of calls
# does, before the scheduler's later choices (and every series of them held).
GROUP_WINDOW = 3


# The weight of the newest task time in the running average.
SMOOTHING = 0.3


def smoothed(average: float | None, sample: float) -> float:
    """The running average of task times, after one more *sample*."""
    return sample if average is None else average + SMOOTHING * (sample - average)


def smoothedOver(average: float | None, runs: Iterable[tuple[float, Any]]) -> float | None:
    """
    `smoothed` after the time of each of *runs* in turn (``(dt, ...)``
    pairs): the results of one read, at the cost of one call.
    """
    for dt, _ in runs:
        average = dt if average is None else average + SMOOTHING * (dt - average)
    return average


def windowFor(averageRun: float, maxWindow: int, workers: int = 1) -> int:
    """Tasks in flight for about `WINDOW_WORK` seconds of work per worker."""
    return max(1, min(maxWindow, int(WINDOW_WORK * workers / max(averageRun, 1e-7))))


def groupSizeFor(perCall: float | None) -> int:
    """
    How many calls a worker takes as one group, by the average seconds a
    call took there (*perCall*; None before any ran: 1, no group).
    """
    if perCall is None:
        return 1
    return max(1, min(GROUP_MAX, int(GROUP_SECONDS / max(perCall, 1e-7))))


class Attempt(Protocol):
    """A task sent over a wire client (None: a worker update of its own)."""

    task: Task | None


class Pipe(Protocol):
    """What the window counts on a wire client: tasks sent and not yet done."""

    inflight: Mapping[int, Attempt]
    firstBatch: Sized


class PipelineWindow:
    """
    The adaptive pipelining window of a worker that talks over a `WireClient`
    (`ProcessWorker`, `WireWorker`): as many tasks in flight as make about
    `WINDOW_WORK` seconds of work per worker at the other end, at least one,
    at most ``maxWindow``. The worker fills ``_readyWaiters`` with the
    Deferreds its ``run`` returned while full.

    A subclass provides ``_activeClient()`` (the WireClient taking new tasks,
    or None), and may override ``_parallelism()`` and ``_roomWithoutClient``.
    """

    maxWindow: int
    _avgRun: float | None
    _readyWaiters: deque[Deferred[None]]
    _stopping: bool
    _broken: str | None  # why the worker broke
    # Whether a task may be accepted while no client is active (a process
    # worker starts a child for it; a remote worker waits for its link).
    _roomWithoutClient = True

    @property
    def gaveUp(self) -> str | None:
        """Why the worker quit for good on its own (its queue reads it on resignation), or None."""
        return self._broken

    def _activeClient(self) -> Pipe | None:
        raise NotImplementedError

    def _parallelism(self) -> int:
        """How many workers at the other end run my tasks at once."""
        return 1

    # The last window computed, and the average and parallelism it was
    # computed for: checked several times per task, recomputed only when
    # one of them changed.
    _windowKey: tuple[float | None, int] | None = None
    _windowSize = 1

    def _noteRuns(self, runs: list[tuple[float, float]], now: float) -> None:
        """The calls of one read ran: ``(seconds at the other end, sent at)`` each."""
        self._avgRun = smoothedOver(self._avgRun, runs)

    def _window(self) -> int:
        workers = self._parallelism()
        avg = self._avgRun
        key = (avg, workers)
        if key == self._windowKey:
            return self._windowSize
        if avg is None:
            size = min(2 * workers, self.maxWindow)
        else:
            size = windowFor(avg, self.maxWindow, workers)
        self._windowKey, self._windowSize = key, size
        return size

    def _hasRoom(self) -> bool:
        client = self._activeClient()
        if client is None:
            return self._roomWithoutClient
        held = len(client.inflight) + len(client.firstBatch)
        window = self._window()
        if held < window:
            return True
        return held == window == 1 and self._batchBehind(client)

    def _batchBehind(self, client: Pipe) -> bool:
        """Whether the one task in flight is a short map batch (see the module docstring)."""
        avg = self._avgRun
        if avg is None or avg > BATCH_BEHIND_LIMIT or client.firstBatch:
            return False
        for attempt in client.inflight.values():
            task = attempt.task
            return task is not None and task.callTuple[0] is applyChunk
        return False

    def _checkReady(self) -> None:
        # A stopped or broken worker stays "busy" for good.
        if self._stopping or self._broken is not None:
            return
        while self._readyWaiters and self._hasRoom():
            self._readyWaiters.popleft().callback(None)

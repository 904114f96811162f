"""
`Task`, one attempt at running a queued call (original path ``asynqueue.tasks``),
`Status`, what a worker reports about it (``task.callback((status, result))``),
and the original's `TaskHandler`, `Assignment` and `AssignmentFactory`.

`Assignment` and `AssignmentFactory` live here, in the original's module, so
that code replacing ``tasks.Assignment`` (as the original's tests do) still
reaches the factory. Neither is used by `TaskQueue`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from ._core._task import DO_LAST_PRIORITY, DO_NEXT_PRIORITY, Task
from ._core._taskhandler import TaskHandler
from ._support._status import Status

__all__ = [
    "DO_LAST_PRIORITY",
    "DO_NEXT_PRIORITY",
    "Assignment",
    "AssignmentFactory",
    "Status",
    "Task",
    "TaskHandler",
]


class Assignment:
    """A *task* offered to whichever worker accepts it; ``d`` fires on acceptance."""

    __slots__ = ("d", "task")

    def __init__(self, task: Any) -> None:
        self.task = task
        self.d: Deferred[None] = Deferred()

    def accept(self, worker: Any) -> Deferred[None] | None:
        """Give the task to *worker*; returns what its ``run`` returns."""
        self.d.callback(None)
        return worker.run(self.task)


class AssignmentFactory:
    """
    Matches workers' requests for work in a series with new tasks of that
    series, first come first served on both sides.

    A worker's outstanding requests are in its ``assignments`` dict (series
    -> list of Deferreds). While ``worker.hired`` is true, a worker that
    accepted an assignment asks for another once its ``run`` says it is ready.
    """

    def __init__(self) -> None:
        self.waiting: dict[Hashable, list[Deferred[Any]]] = {}
        self.pending: dict[Hashable, list[Assignment]] = {}

    def request(self, worker: Any, series: Hashable) -> None:
        """*worker* asks for the next assignment in *series*."""
        pending = self.pending.get(series)
        if pending:
            d: Deferred[Any] = succeed(pending.pop(0))
        else:
            d = Deferred()
            self.waiting.setdefault(series, []).append(d)
        if not isinstance(getattr(worker, "assignments", None), dict):
            worker.assignments = {}
        worker.assignments.setdefault(series, []).append(d)
        d.addCallback(self._accept, worker, series, d)

    def _accept(self, assignment: Any, worker: Any, series: Hashable, d: Deferred[Any]) -> Any:
        worker.assignments[series].remove(d)
        if not isinstance(assignment, Assignment):
            return None  # a cancelled request
        ready = assignment.accept(worker)
        if getattr(worker, "hired", False):
            if ready is None:
                self.request(worker, series)
            else:
                ready.addCallback(lambda _: self.request(worker, series))
        return ready

    def new(self, task: Any) -> Deferred[None]:
        """Queue an assignment of *task*; fires when a worker has accepted it."""
        assignment = Assignment(task)
        waiting = self.waiting.get(task.series)
        if waiting:
            waiting.pop(0).callback(assignment)
        else:
            self.pending.setdefault(task.series, []).append(assignment)
        return assignment.d

    def cancelRequests(self, worker: Any) -> None:
        """Withdraw *worker*'s outstanding requests."""
        for series, requests in getattr(worker, "assignments", {}).items():
            waiting = self.waiting.get(series, [])
            for d in list(requests):
                if d in waiting:
                    waiting.remove(d)
                    d.callback(None)

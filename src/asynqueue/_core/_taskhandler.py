"""
`TaskHandler`: the original's pool of hired workers that tasks are handed
to, kept for code written against AsynQueue 0.9.x. A `TaskQueue` does all
of this itself (plus timeouts, retries and shutdown bookkeeping); this is a
small stand-alone version of the original's public class.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from ..errors import ImplementationError, QueueRunError
from ..interfaces import IWorker
from ._task import Task

__all__ = ["TaskHandler"]

# A task waiting for a worker: (priority, order, task, Deferred of its acceptance).
_Waiting = tuple[int, int, Task, Deferred[None]]


def _qualified(worker: IWorker, series: Hashable) -> bool:
    return (
        series is None
        or series in getattr(worker, "cQualified", ())
        or series in getattr(worker, "iQualified", ())
    )


class TaskHandler:
    """
    Hires workers and hands each task (an object with ``callTuple``,
    ``priority``, ``series`` and a ``d`` that its worker fires) to a free
    worker qualified for its series, lowest priority value first, oldest
    first among equals.

    ``handler(task)`` gives a Deferred that fires when a worker has accepted
    the task; the task's own ``d`` fires with its outcome.

    Attributes:
        workers: the hired workers by ID.
        isRunning: False after `shutdown`.
    """

    def __init__(self) -> None:
        self.isRunning = True
        self.workers: dict[int, IWorker] = {}
        self._IDs = itertools.count(1)
        self._order = itertools.count()
        self._free: dict[int, None] = {}  # free worker IDs, in the order they freed up
        self._waiting: list[_Waiting] = []
        self._assigning = False
        self._again = False

    def hire(self, worker: IWorker) -> Deferred[int]:
        """Add *worker* (sets its ``ID``); fires with that ID."""
        if not IWorker.providedBy(worker):
            raise ImplementationError(f"{worker!r} does not provide IWorker")
        IWorker.validateInvariants(worker)
        ID = next(self._IDs)
        worker.ID = ID  # type: ignore[attr-defined]  # (not in IWorker: the original set it)
        self.workers[ID] = worker
        worker.setResignator(lambda: self.terminate(ID, crash=True, reassign=True))
        self._free[ID] = None
        self._assign()
        return succeed(ID)

    def roster(self, series: Hashable = None) -> list[IWorker]:
        """The workers qualified for *series* (all of them for None)."""
        return [w for w in self.workers.values() if _qualified(w, series)]

    def __call__(self, task: Task) -> Deferred[None]:
        if not self.isRunning:
            raise QueueRunError("The task handler has been shut down")
        accepted: Deferred[None] = Deferred()
        self._waiting.append((getattr(task, "priority", 0), next(self._order), task, accepted))
        self._assign()
        return accepted

    def terminate(
        self,
        workerID: int,
        timeout: float | None = None,
        crash: bool = False,
        reassign: bool = False,
    ) -> Deferred[list[Task]]:
        """
        Let a worker go: ``stop`` it, or ``crash`` it at once (``crash=True``)
        or after *timeout* seconds without stopping. Fires with the tasks it
        left unfinished ([] if it stopped); with ``reassign=True`` they are
        handed to other workers instead (and the list is empty).
        """
        worker = self.workers.pop(workerID, None)
        self._free.pop(workerID, None)
        if worker is None:
            return succeed([])
        if crash:
            d: Deferred[list[Task]] = succeed(list(worker.crash() or []))
        else:
            d = self._stop(worker, timeout)
        if reassign:
            d.addCallback(self._reassign)
        return d

    def shutdown(self, timeout: float | None = None) -> Deferred[list[Task]]:
        """Terminate every worker; fires with all tasks they left unfinished."""
        self.isRunning = False
        waiting, self._waiting = self._waiting, []
        for *_, accepted in waiting:
            accepted.errback(Failure(QueueRunError("The task handler was shut down")))
        dList = [self.terminate(ID, timeout=timeout) for ID in list(self.workers)]
        return gatherResults(dList).addCallback(lambda lists: [t for tasks in lists for t in tasks])

    # ------------------------------------------------------------ internals

    @staticmethod
    def _stop(worker: IWorker, timeout: float | None) -> Deferred[list[Task]]:
        result: Deferred[list[Task]] = Deferred()
        call = None

        def stopped(_: object) -> None:
            if call is not None and call.active():
                call.cancel()
            if not result.called:
                result.callback([])

        def tooSlow() -> None:
            if not result.called:
                result.callback(list(worker.crash() or []))

        if timeout:
            from twisted.internet import reactor

            call = reactor.callLater(timeout, tooSlow)
        worker.stop().addBoth(stopped)
        return result

    def _reassign(self, unfinished: list[Task]) -> list[Task]:
        for task in unfinished:
            self(task).addErrback(lambda _: None)  # shut down meanwhile: nothing to do
        return []

    def _assign(self) -> None:
        # A worker's run may report "ready" synchronously and re-enter here.
        if self._assigning:
            self._again = True
            return
        self._assigning = True
        try:
            self._again = True
            while self._again:
                self._again = False
                for ID in list(self._free):
                    worker = self.workers[ID]  # (a worker let go leaves _free too)
                    entry = self._pick(worker)
                    if entry is None:
                        continue
                    del self._free[ID]
                    self._waiting.remove(entry)
                    _, _, task, accepted = entry
                    ready = worker.run(task)
                    accepted.callback(None)
                    if ready is None:
                        self._free[ID] = None
                        self._again = True
                    else:
                        ready.addBoth(self._freed, ID)
        finally:
            self._assigning = False

    def _pick(self, worker: IWorker) -> _Waiting | None:
        candidates = [e for e in self._waiting if _qualified(worker, e[2].series)]
        return min(candidates, key=lambda e: (e[0], e[1])) if candidates else None

    def _freed(self, _: object, ID: int) -> None:
        if ID in self.workers:
            self._free[ID] = None
            self._assign()

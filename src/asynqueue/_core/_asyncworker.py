"""
`AsyncWorker`: runs tasks in the reactor thread, one at a time.

Callables may return plain values, Deferreds or coroutines; they must not
block. A failing task is reported and the worker goes on with the next one
(the original's worker stayed locked forever after the first error).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from .._iter._base import isIterator
from .._support._status import Status
from ..interfaces import IWorker
from ._task import Task

__all__ = ["AsyncWorker", "resultStatus"]


def resultStatus(result: Any, raw: bool) -> tuple[Status, Any]:
    """``(ITERATOR, Deferator)`` for an iterator (unless *raw*), else ``(RESULT, result)``."""
    if not raw and isIterator(result):
        from .._iter._deferator import Deferator

        return Status.ITERATOR, Deferator(result)
    return Status.RESULT, result


@implementer(IWorker)
class AsyncWorker:
    """
    A worker that runs each task in the reactor thread.

    Args:
        series: series this worker is qualified for, besides ``cQualified``.
        raw: return iterator results as-is instead of as Deferators.
    """

    cQualified = ["async", "local"]

    def __init__(self, series: Sequence[Hashable] = (), raw: bool = False) -> None:
        self.iQualified = list(series)
        self.raw = raw
        self._queue: deque[tuple[Task, Deferred[None]]] = deque()
        self._current: Task | None = None
        self._currentD: Deferred[Any] | None = None
        self._stopWaiters: list[Deferred[None]] = []
        self._crashed = False
        self._looping = False
        self._resignator: Callable[[], object] | None = None

    def setResignator(self, callableObject: Callable[[], object]) -> None:
        self._resignator = callableObject

    def run(self, task: Task) -> Deferred[None]:
        """Queue *task*; the Deferred fires once it has finished."""
        ready: Deferred[None] = Deferred()
        if task.priority <= -20:
            self._queue.appendleft((task, ready))
        else:
            self._queue.append((task, ready))
        if self._current is None:
            self._runNext()
        return ready

    def _runNext(self) -> None:
        # A loop, not recursion: synchronous tasks finish within the call.
        if self._looping:
            return
        self._looping = True
        try:
            self._loop()
        finally:
            self._looping = False
        self._notifyStopped()

    def _loop(self) -> None:
        while self._current is None and self._queue and not self._crashed:
            task, ready = self._queue.popleft()
            self._current = task
            task.started()
            f, args, kw = task.callTuple
            raw = self.raw if task.raw is None else task.raw
            try:
                result = f(*args, **kw)
                if inspect.iscoroutine(result):
                    result = ensureDeferred(result)
            except BaseException:
                self._finish(task, ready, (Status.ERROR, Failure()))
                continue
            if isinstance(result, Deferred):
                self._currentD = result
                result.addCallbacks(
                    lambda value, t=task, r=ready, raw=raw: self._finish(
                        t, r, resultStatus(value, raw)
                    ),
                    lambda failure, t=task, r=ready: self._finish(t, r, (Status.ERROR, failure)),
                )
                return
            self._finish(task, ready, resultStatus(result, raw))

    def _finish(self, task: Task, ready: Deferred[None], statusResult: tuple[Status, Any]) -> None:
        if self._current is not task:
            return  # crashed or timed out meanwhile; the queue no longer waits
        self._current = None
        self._currentD = None
        task.callback(statusResult)
        ready.callback(None)
        # Called back later by a Deferred: go on (a no-op inside the loop).
        self._runNext()

    def timedOut(self, task: Task) -> None:
        """Cancel a timed-out task's Deferred so the worker can go on."""
        if self._current is task and self._currentD is not None:
            self._currentD.cancel()

    def cancelled(self, task: Task) -> None:
        """The caller cancelled *task*: drop it unrun, or cancel its Deferred."""
        for item in self._queue:
            if item[0] is task:
                self._queue.remove(item)
                item[1].callback(None)
                self._notifyStopped()
                return
        self.timedOut(task)

    def _notifyStopped(self) -> None:
        if self._current is None and not self._queue and self._stopWaiters:
            waiters, self._stopWaiters = self._stopWaiters, []
            for d in waiters:
                d.callback(None)

    def stop(self) -> Deferred[None]:
        """Fires once the tasks in hand have finished."""
        if self._current is None and not self._queue:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stopWaiters.append(d)
        return d

    def crash(self) -> list[Task]:
        """Stop now; returns the tasks not finished."""
        self._crashed = True
        unfinished = [] if self._current is None else [self._current]
        unfinished.extend(task for task, _ in self._queue)
        self._queue.clear()
        self._current = None
        current, self._currentD = self._currentD, None
        if current is not None:
            current.cancel()
        self._notifyStopped()
        return unfinished

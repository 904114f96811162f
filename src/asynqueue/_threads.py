"""
`ThreadWorker`, `ThreadQueue` and `deferToThread`: tasks run in dedicated threads.

Each ThreadWorker owns one daemon thread and an inbox. The reactor puts tasks
in the inbox; the thread runs them in order and puts ``(task, status, result)``
in an outbox. Crossing back to the reactor costs one ``callFromThread`` per
*batch*: the thread only wakes the reactor when the outbox was empty, and the
reactor takes everything in the outbox at once.

The worker accepts up to a *window* of tasks before its ``run`` Deferred
waits, so the thread always has the next task at hand while the reactor is
busy. By default the window adapts to how long tasks take: about
`WINDOW_WORK` seconds of work (by the recent average), from 1 for slow tasks
up to `MAX_WINDOW` for tiny ones, whose hand-offs then cost one reactor
wake-up per batch of up to `MAX_WINDOW` results instead of per few.

A thread stuck in user code cannot be killed. When a task times out, the
worker abandons that thread (it is a daemon, so it never blocks interpreter
exit, and whatever it returns later is dropped) and starts a fresh thread
that takes over the inbox. The queue retries the task once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from . import errors
from ._iteration import isIterator
from ._queue import TaskQueue
from ._task import Task
from ._util import whenFired
from .interfaces import IWorker

__all__ = ["ThreadQueue", "ThreadWorker", "deferToThread"]

# Tasks a thread worker accepts before it asks the queue to wait: enough to
# keep the thread busy while the reactor handles a batch of results, few
# enough that a late doNext task does not wait long behind them.
DEFAULT_WINDOW = 4
# The adaptive window: at most this many tasks, about this much work.
MAX_WINDOW = 64
WINDOW_WORK = 0.002

_TASK = 0
_CALL = 1
_EXIT = 2


@implementer(IWorker)
class ThreadWorker:
    """
    A worker with one dedicated thread.

    Args:
        series: series this worker is qualified for, besides ``cQualified``.
        raw: return iterator results as-is instead of as Deferators.
        window: how many tasks it holds in flight at most; None (the default)
            adapts it to the tasks' running time (see the module docstring).
        reactor: the reactor to report to (the global one by default).
    """

    cQualified = ["thread", "local"]
    reportsStart = True

    def __init__(
        self,
        series: list[Any] | tuple[Any, ...] = (),
        raw: bool = False,
        window: int | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self.iQualified = list(series)
        self.raw = raw
        self.window = None if window is None else max(1, window)
        self._avgRun: float | None = None
        self._runTime = 0.0  # task seconds since the last flush (under the lock)
        self._runCount = 0
        self._cond = threading.Condition(threading.Lock())
        # VIP work (doNext tasks, deferToThread calls) first, each FIFO.
        self._vip: deque[tuple[int, Any]] = deque()
        self._inbox: deque[tuple[int, Any]] = deque()
        self._outbox: list[tuple[int, Any, Any, Any]] = []
        self._generation = 0
        self._current: Task | None = None
        self._quitting = False
        self._crashed = False
        self._inflight = 0
        self._readyWaiter: Deferred[None] | None = None
        self._stopD: Deferred[None] | None = None
        self._resignator: Callable[[], Any] | None = None
        self._startThread()

    def __repr__(self) -> str:
        return f"<ThreadWorker ID={getattr(self, 'ID', None)} inflight={self._inflight}>"

    # ---------------------------------------------------------------- reactor side

    def setResignator(self, callableObject: Callable[[], Any]) -> None:
        self._resignator = callableObject

    def run(self, task: Task) -> Deferred[None] | None:
        """
        Hand *task* to the thread. Returns None while I can take more at once
        (the queue's fast path), else a Deferred that fires when I can.
        """
        if self._crashed or self._quitting:
            task.callback(("d", "thread worker is stopped"))
            return None
        with self._cond:
            if task.priority <= -20:
                self._vip.append((_TASK, task))
            else:
                self._inbox.append((_TASK, task))
            self._cond.notify()
        self._inflight += 1
        if self._inflight < self._window():
            return None
        self._readyWaiter = Deferred()
        return self._readyWaiter

    def deferToThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """Run ``f(*args, **kw)`` in my thread ahead of queued tasks."""
        if self._crashed or self._quitting:
            return fail(errors.ThreadError("thread worker is stopped"))
        d: Deferred[Any] = Deferred()
        with self._cond:
            self._vip.append((_CALL, (f, args, kw, d)))
            self._cond.notify()
        return d

    def _flush(self) -> None:
        """Deliver every finished result (one reactor wake-up per batch)."""
        with self._cond:
            batch, self._outbox = self._outbox, []
            runTime, runCount = self._runTime, self._runCount
            self._runTime, self._runCount = 0.0, 0
        if runCount:
            mean = runTime / runCount
            avg = self._avgRun
            self._avgRun = mean if avg is None else 0.7 * avg + 0.3 * mean
        for kind, target, ok, value in batch:
            if kind == _TASK:
                self._inflight -= 1
                if ok == "i":
                    from ._iteration import threadDeferator

                    value = threadDeferator(value, self.deferToThread)
                target.callback((ok, value))
            elif kind == _CALL:
                if ok:
                    target.callback(value)
                else:
                    target.errback(value)
            elif kind == _EXIT and self._stopD is not None and not self._stopD.called:
                self._stopD.callback(None)
        self._maybeReady()

    def _window(self) -> int:
        if self.window is not None:
            return self.window
        avg = self._avgRun
        if avg is None:
            return DEFAULT_WINDOW
        return max(1, min(MAX_WINDOW, int(WINDOW_WORK / max(avg, 1e-7))))

    def _maybeReady(self) -> None:
        waiter = self._readyWaiter
        if waiter is not None and self._inflight < self._window():
            self._readyWaiter = None
            waiter.callback(None)

    def timedOut(self, task: Task) -> None:
        """Abandon the thread stuck in *task* and carry on in a fresh one."""
        with self._cond:
            if self._current is task:
                self._generation += 1
                self._current = None
                abandon = True
            else:
                abandon = False
                for box in (self._vip, self._inbox):
                    for item in box:
                        if item[0] == _TASK and item[1] is task:
                            box.remove(item)
                            abandon = None  # type: ignore[assignment]
                            break
        if abandon is False:
            return  # already finished; its result is on the way and ignored
        self._inflight -= 1
        if abandon:
            self._startThread()
        self._maybeReady()

    def stop(self) -> Deferred[None]:
        """Finish the tasks in hand, then end the thread."""
        if self._stopD is None:
            self._stopD = Deferred()
            if self._crashed:
                self._stopD.callback(None)
            else:
                with self._cond:
                    self._quitting = True
                    self._cond.notify()
        return whenFired(self._stopD)

    def crash(self) -> list[Task]:
        """Stop now. The thread, if busy, is abandoned. Returns unfinished tasks."""
        with self._cond:
            self._crashed = True
            self._quitting = True
            self._generation += 1
            unfinished = [] if self._current is None else [self._current]
            calls = []
            for kind, payload in [*self._vip, *self._inbox]:
                if kind == _TASK:
                    unfinished.append(payload)
                else:
                    calls.append(payload[3])
            self._vip.clear()
            self._inbox.clear()
            self._current = None
            self._cond.notify()
        for d in calls:
            d.errback(Failure(errors.ThreadError("thread worker crashed")))
        if self._stopD is not None and not self._stopD.called:
            self._stopD.callback(None)
        self._inflight = 0
        return unfinished

    # ---------------------------------------------------------------- thread side

    def _startThread(self) -> None:
        thread = threading.Thread(
            target=self._loop,
            args=(self._generation,),
            name=f"asynqueue-ThreadWorker-{id(self):x}",
            daemon=True,
        )
        thread.start()

    def _loop(self, generation: int) -> None:
        cond = self._cond
        vip = self._vip
        inbox = self._inbox
        while True:
            with cond:
                while (
                    not vip and not inbox and not self._quitting and self._generation == generation
                ):
                    cond.wait()
                if self._generation != generation:
                    return  # abandoned (timeout or crash)
                if not vip and not inbox:
                    self._outbox.append((_EXIT, None, None, None))
                    wake = len(self._outbox) == 1
                    if wake:
                        self._reactor.callFromThread(self._flush)
                    return
                kind, payload = (vip or inbox).popleft()
                if kind == _TASK:
                    self._current = payload
            if kind == _TASK:
                t0 = time.perf_counter()
                item = self._runTask(payload)
                self._post(generation, item, time.perf_counter() - t0)
                # Drop the task and its result now: held until the next task,
                # a big result would be freed here, delaying that task.
                item = payload = None
            else:
                f, args, kw, d = payload
                try:
                    self._post(generation, (_CALL, d, True, f(*args, **kw)))
                except BaseException:
                    self._post(generation, (_CALL, d, False, Failure()))

    def _runTask(self, task: Task) -> tuple[int, Any, Any, Any]:
        task.started()
        f, args, kw = task.callTuple
        try:
            result = f(*args, **kw)
        except BaseException:
            return (_TASK, task, "e", Failure())
        raw = self.raw if task.raw is None else task.raw
        if not raw and isIterator(result):
            return (_TASK, task, "i", result)
        return (_TASK, task, "r", result)

    def _post(
        self, generation: int, item: tuple[int, Any, Any, Any], runTime: float | None = None
    ) -> None:
        with self._cond:
            if self._generation != generation and item[0] != _EXIT:
                return  # from an abandoned thread: dropped
            if runTime is not None:
                self._runTime += runTime
                self._runCount += 1
            if item[0] == _TASK:
                self._current = None
            self._outbox.append(item)
            wake = len(self._outbox) == 1
        if wake:
            self._reactor.callFromThread(self._flush)


class ThreadQueue(TaskQueue):
    """
    A `TaskQueue` with thread workers (one by default).

    ``ThreadQueue(raw=False, N=1, **kw)``; ``ThreadQueue(3)`` also makes three
    workers. Other keywords go to `TaskQueue`.
    """

    def __init__(self, raw: bool | int = False, N: int = 1, **kw: Any) -> None:
        if not isinstance(raw, bool) and isinstance(raw, int):
            raw, N = False, raw
        if N < 1:
            raise ValueError(f"a ThreadQueue needs at least one worker, not {N}")
        super().__init__(**kw)
        self.worker = ThreadWorker(raw=bool(raw), reactor=self._reactor)
        self.d = self.attachWorker(self.worker)
        for _ in range(N - 1):
            self.attachWorker(ThreadWorker(raw=bool(raw), reactor=self._reactor))

    def deferToThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """Run ``f(*args, **kw)`` on my first worker's thread, skipping the queue."""
        return self.worker.deferToThread(f, *args, **kw)


_sharedWorker: ThreadWorker | None = None


def deferToThread(*fargs: Any, **kw: Any) -> Deferred[Any]:
    """
    Run ``f(*args, **kw)`` in a shared dedicated thread; a Deferred of its result.

    Calls run one at a time, in order. Called with no arguments, stops that
    thread (the Deferred fires when it has ended).
    """
    global _sharedWorker
    if not fargs:
        worker, _sharedWorker = _sharedWorker, None
        return succeed(None) if worker is None else worker.stop()
    if _sharedWorker is None:
        from twisted.internet import reactor

        _sharedWorker = ThreadWorker()
        reactor.addSystemEventTrigger("before", "shutdown", deferToThread)
    f, *args = fargs
    return _sharedWorker.deferToThread(f, *args, **kw)

"""
`ThreadWorker`, `ThreadQueue` and `deferToThread`: tasks run in dedicated threads.

Each ThreadWorker owns one daemon thread and an inbox. The reactor puts tasks
in the inbox; the thread runs them in order and puts ``(task, status, result)``
in an outbox. Crossing back to the reactor costs one wake-up per *batch*
(a byte in the worker's own pipe, which the reactor watches: see `_wake`):
the thread only wakes the reactor when the outbox was empty, and the
reactor takes everything in the outbox at once.

The worker accepts up to a *window* of tasks before its ``run`` Deferred
waits, so the thread always has the next task at hand while the reactor is
busy. By default the window adapts to how long tasks take, as every
pipelining worker's does (`asynqueue._core._window`): about two milliseconds
of work by the recent average, from 1 for slow tasks up to
`THREAD_MAX_WINDOW` for tiny ones, whose hand-offs then cost one reactor
wake-up per batch of up to `THREAD_MAX_WINDOW` results instead of per few.

While calls wait in the queue, the worker takes them in *groups* (see
`asynqueue._core._dispatch`, *Groups*): one task runs the next plain calls
(``groupRunner``), each with the outcome it would have had alone, and the
reactor makes, hands over and delivers one task for them all. At most
`GROUP_WINDOW` tasks wait here while groups come. A group's calls sit in a
deque that the thread takes from the left; the reactor takes those not
started from the right (`_cutGroup`: a stall, or a cancelled call), so each
call goes to exactly one side, without the thread's lock per call.

A thread stuck in user code cannot be killed. When a task times out, the
worker abandons that thread (it is a daemon, so it never blocks interpreter
exit, and whatever it returns later is dropped) and starts a fresh thread
that takes over the inbox. The queue retries the task once.

Hand-off mechanics (the hot path, so spelled out): the reactor appends to a
deque and rings a *doorbell*, a ``queue.SimpleQueue`` of tokens, but only
when the thread says it is idle (``_idle``): a busy thread takes the next
item without a token, so a burst of tasks costs one ring, not one per task.
Both ends of a SimpleQueue are C code (a ``threading.Condition`` runs Python
for every ``notify``). No wake-up is lost: the thread raises ``_idle`` *before*
it looks at the deques a last time, and the reactor reads ``_idle`` *after*
its append, so one of the two sees the other (the GIL orders them). Events
(a stop, a crash, a task withdrawn on a timeout) always ring; a token left
over just makes an idle thread look once more. A plain lock keeps the
thread's state changes (taking a task, posting its result) atomic with the
reactor's timeouts and crashes; the reactor takes results without it.
A task given to an idle thread while the reactor delivers that thread's
last result (a caller making its next call from the callback) rings when
the delivery ends (`_LateBells`): the thread then wakes once, not twice.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import errors
from .._core._queue import TaskQueue
from .._core._task import Task
from .._core._window import (
    GROUP_WINDOW,
    SMOOTHING,
    WINDOW_WORK,
    groupSizeFor,
    smoothed,
)
from .._iter._base import isIterator
from .._support._batch import Batch
from .._support._status import ERROR, ITERATOR, RESULT, Status
from .._support._util import whenFired
from ..interfaces import IWorker
from ._wake import fromThread, wakerFor

__all__ = ["ThreadQueue", "ThreadWorker", "deferToThread"]

# Tasks a thread worker accepts before it asks the queue to wait: enough to
# keep the thread busy while the reactor handles a batch of results, few
# enough that a late doNext task does not wait long behind them.
DEFAULT_WINDOW = 4
# The adaptive window (see asynqueue._core._window): at most this many tasks.
THREAD_MAX_WINDOW = 64

_TASK = 0
_CALL = 1
_EXIT = 2

# A doorbell may ring late (see _LateBells) only this soon after its thread
# posted a result; that thread's first wait for more ends after twice this.
LATE_BELLS_LIMIT = 0.001


class _LateBells:
    """
    The doorbells of idle workers given a task while a flush delivers
    results (in the reactor's thread): they ring when it ends. One per
    reactor (`_lateBellsOf`): its workers' flushes and hand-outs all run in
    its thread. (A per-thread ``threading.local`` did the same at ~3 % of
    a sequential round trip more: its attributes cost a lookup each.)

    Rung at once, a doorbell wakes the thread while the reactor still runs
    the rest of its turn and holds the GIL; the thread then sleeps again,
    waiting for the GIL, and needs a second wake-up. Rung at the end of the
    flush, the thread wakes about when the reactor goes back to waiting, and
    takes the GIL at once (a sequential round trip: ~4 µs less, see the
    benchmarks README). Only the bell of a thread that posted a result less
    than `LATE_BELLS_LIMIT` ago may wait: that thread's first wait after a
    result ends by itself after twice that, and it looks at its inbox then.
    So a callback that blocks the reactor after giving a task (waiting for
    what the task does, say) delays the task by 2 ms at most.
    """

    __slots__ = ("bells", "flushing")

    def __init__(self) -> None:
        self.flushing = 0  # (flushes under way: they may nest)
        self.bells: list[Callable[[None], None]] = []


_lateBellsByReactor: weakref.WeakKeyDictionary[Any, _LateBells] = weakref.WeakKeyDictionary()


def _lateBellsOf(reactor: Any) -> _LateBells:
    """The late doorbells of *reactor*'s thread workers."""
    try:
        late = _lateBellsByReactor.get(reactor)
        if late is None:
            late = _lateBellsByReactor[reactor] = _LateBells()
    except TypeError:  # (a reactor that takes no weak reference: per worker)
        late = _LateBells()
    return late


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
    # One thread runs the tasks in the order given (see IWorker).
    runsInOrder = True

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
        self._avgCall: float | None = None  # (per call of a group: see groupRan)
        self._adaptive = DEFAULT_WINDOW  # the adaptive window, updated per flush
        # Guards the thread's state changes against timedOut and crash.
        self._lock = threading.Lock()
        self._doorbell: SimpleQueue[None] = SimpleQueue()
        # True while the thread waits (or is about to) for a token.
        self._idle = False
        # VIP work (doNext tasks, deferToThread calls) first, each FIFO.
        self._vip: deque[tuple[int, Any]] = deque()
        self._inbox: deque[Task] = deque()
        # (kind, target, status or ok, value, seconds the task ran): the
        # thread appends under the lock, the reactor pops without it.
        self._outbox: deque[tuple[int, Any, Any, Any, float]] = deque()
        self._generation = 0
        self._current: Task | None = None
        self._quitting = False
        self._crashed = False
        self._ended = False  # the thread quit (set under the lock)
        # Iterator results posted whose first batch the reactor has not yet
        # asked for: a quitting thread waits for those requests (under the lock).
        self._firstBatches = 0
        self._inflight = 0
        # When the thread last posted a task's result (its perf_counter):
        # see _LateBells.
        self._postedAt = 0.0
        self._late = _lateBellsOf(reactor)
        self._readyWaiter: Deferred[None] | None = None
        # True while the last task given was a group: at most GROUP_WINDOW
        # tasks then (see run).
        self._grouping = False
        # (One object, so that a task's callable is it: see run and _flush.)
        self.groupRunner = self._runGroup
        self._stopD: Deferred[None] | None = None
        self._resignator: Callable[[], Any] | None = None
        # How the thread wakes the reactor into _flush: my own pipe if the
        # reactor watches descriptors (closed when I end), else through its
        # thread calls. Called under the lock, so never after the close.
        self._pipe = wakerFor(reactor, self._flush)
        self._post = self._pipe.wake if self._pipe is not None else fromThread(reactor, self._flush)
        self._startThread()

    @property
    def threadRunning(self) -> bool:
        """False once my thread has left its loop (after `stop`) or was dropped (`crash`)."""
        return not self._crashed and not (self._stopD is not None and self._stopD.called)

    @property
    def t(self) -> ThreadWorker:
        """The original's per-worker thread looper; here the worker is its own."""
        return self

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
        if self._quitting:  # (stopped, or crashed)
            task.callback((Status.NOT_RUN, "thread worker is stopped"))
            return None
        # No lock: a deque append is atomic, and the thread takes the item
        # (under its lock) only after the token that follows it.
        grouping = task.callTuple[0] is self.groupRunner
        if grouping:
            # The calls the thread takes one by one from the left; the
            # reactor may take those not started from the right (_cutGroup).
            calls = task.callTuple[1][0]
            task.callTuple = (self.groupRunner, (calls, deque(calls)), {})
        self._grouping = grouping
        if task.priority <= -20:
            self._vip.append((_TASK, task))
        else:
            self._inbox.append(task)
        if self._idle:  # (read after the append: see the module docstring)
            self._idle = False
            late = self._late
            if late.flushing and time.perf_counter() - self._postedAt < LATE_BELLS_LIMIT:
                late.bells.append(self._doorbell.put)  # (rung when the flush ends)
            else:
                self._doorbell.put(None)
        self._inflight += 1
        window = self._adaptive if self.window is None else self.window
        if grouping and window > GROUP_WINDOW:
            window = GROUP_WINDOW  # (see _window)
        if self._inflight < window:
            return None
        self._readyWaiter = Deferred()
        return self._readyWaiter

    def deferToThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """Run ``f(*args, **kw)`` in my thread ahead of queued tasks."""
        d: Deferred[Any] = Deferred()
        with self._lock:  # (a thread about to quit must see the call, or refuse it)
            if self._crashed or self._ended:
                return fail(errors.ThreadError("thread worker is stopped"))
            self._vip.append((_CALL, (f, args, kw, d)))
        self._doorbell.put(None)
        return d

    def _flush(self) -> None:
        """Deliver the finished results (one reactor wake-up per batch)."""
        late = self._late
        late.flushing += 1
        try:
            outbox = self._outbox
            popleft = outbox.popleft
            groupRunner = self.groupRunner
            runTime = 0.0
            runCount = 0
            # No lock: the thread only appends, and wakes the reactor when it
            # made the outbox non-empty. Only what is there now: results that
            # arrive meanwhile wait for the next reactor turn (below), so that
            # a busy worker cannot keep the reactor in here.
            for _ in range(len(outbox)):
                try:
                    kind, target, ok, value, seconds = popleft()
                except IndexError:
                    break  # a callback crashed me: crash() took the rest
                if kind == _TASK:
                    runTime += seconds
                    runCount += 1
                    self._inflight -= 1
                    if target.callTuple[0] is groupRunner and ok is RESULT:
                        self._groupEnded(value)
                    elif ok is ITERATOR:
                        value = self._deferatorOf(value)
                    report = (ok, value)
                    onReport = target.onReport
                    if onReport is not None and target._reported is None and target._d is None:
                        # Task.callback, inlined (once per result): the queue's
                        # receiver, and no Deferred made to fire.
                        target._reported = report
                        onReport(target, report)
                    else:
                        target.callback(report)
                elif kind == _CALL:
                    if ok:
                        target.callback(value)
                    else:
                        target.errback(value)
                elif kind == _EXIT:
                    self._closePipe()
                    if self._stopD is not None and not self._stopD.called:
                        self._stopD.callback(None)
            if runCount:
                # smoothed and windowFor, inlined (once per flush: two calls
                # into another module cost ~3 % of a sequential round trip).
                sample = runTime / runCount
                avg = self._avgRun
                self._avgRun = avg = sample if avg is None else avg + SMOOTHING * (sample - avg)
                room = WINDOW_WORK / avg if avg > 1e-7 else THREAD_MAX_WINDOW
                self._adaptive = THREAD_MAX_WINDOW if room >= THREAD_MAX_WINDOW else int(room) or 1
            if outbox:
                self._reactor.callLater(0, self._flush)
            if self._readyWaiter is not None:
                self._maybeReady()
        finally:
            late.flushing -= 1
            if not late.flushing and late.bells:
                bells, late.bells = late.bells, []
                for bell in bells:
                    bell(None)

    def _window(self) -> int:
        window = self._adaptive if self.window is None else self.window
        # (Groups of up to GROUP_MAX calls each: a window of them would
        # commit many more calls to one thread than a window of calls.)
        return min(window, GROUP_WINDOW) if self._grouping else window

    def _closePipe(self) -> None:
        """My thread has ended or was dropped: no more wake-ups through my pipe."""
        if self._pipe is not None:
            with self._lock:
                self._pipe.close()  # (once: a second close does nothing)

    def _maybeReady(self) -> None:
        waiter = self._readyWaiter
        if waiter is not None and self._inflight < self._window():
            self._readyWaiter = None
            waiter.callback(None)

    def timedOut(self, task: Task) -> None:
        """
        Abandon the thread stuck in *task* and carry on in a fresh one. Tasks
        of its series waiting here go back unrun: the queue's retry of *task*
        must run before them.
        """
        behind: list[Task] = []
        with self._lock:
            if self._current is task:
                self._generation += 1
                self._current = None
                abandon = True
                if task.series is not None:
                    behind = [t for t in self._inbox if t.series == task.series]
                    for t in behind:
                        self._inbox.remove(t)
            else:
                abandon = False
                for box, item in ((self._vip, (_TASK, task)), (self._inbox, task)):
                    try:
                        box.remove(item)  # type: ignore[arg-type]
                    except ValueError:
                        continue
                    abandon = None  # type: ignore[assignment]
                    break
        if abandon is False:
            return  # already finished; its result is on the way and ignored
        self._inflight -= 1 + len(behind)
        if abandon:
            self._startThread()
        for t in behind:
            t.innocent = True
            t.callback((Status.NOT_RUN, "handed back behind a task of its series that timed out"))
        self._maybeReady()

    def handBack(self) -> None:
        """
        Hand back, unrun, the tasks waiting here behind the running one: the
        queue asks when that one takes long and another worker could run them
        (a task waiting for one of those would otherwise wait for ever). If
        the running one is a group, its calls not started come back too.
        """
        with self._lock:
            if self._quitting:
                return  # (stopping: it finishes what it has; crashed: nothing is left)
            # A group running: its calls not started come back too.
            back = self._cutGroup(self._current)
            waiting = [item[1] for item in self._vip if item[0] == _TASK]
            if waiting:
                calls = [item for item in self._vip if item[0] != _TASK]
                self._vip.clear()
                self._vip.extend(calls)
            waiting += self._inbox
            self._inbox.clear()
        if back is not None:
            back()
        if not waiting:
            return
        self._inflight -= len(waiting)
        for t in waiting:
            t.innocent = True
            t.callback((Status.NOT_RUN, "handed back from behind a long task"))
        self._maybeReady()

    # ---------------------------------------------------------------- groups

    def groupLimit(self) -> int:
        """
        How many plain calls of a backlog I take as one task now
        (`groupSizeFor` the calls run so far; 1 with a fixed window, which
        says how many calls may wait here).
        """
        if self.window is not None:
            return 1
        return groupSizeFor(self._avgCall if self._avgCall is not None else self._avgRun)

    @staticmethod
    def groupOutcome(outcome: tuple[Status, Any]) -> tuple[Status, Any]:
        """``(status, result)`` of one call of a group: its outcome, as it is."""
        return outcome

    def groupRan(self, calls: int, seconds: float) -> None:
        """A group ran *calls* calls in *seconds*."""
        if calls:
            self._avgCall = smoothed(self._avgCall, seconds / calls)

    def stopGroup(self, task: Task) -> None:
        """
        A call of group task *task* was cancelled: the group comes back unrun
        if it waits here; if it runs, its calls not started go back to the
        queue now (the one running finishes).
        """
        with self._lock:
            if self._current is task:
                back = self._cutGroup(task)
            else:
                try:
                    self._inbox.remove(task)
                except ValueError:
                    return  # (finished: its outcomes are on their way)
                back = None
        if back is not None:
            back()
            return
        self._inflight -= 1
        task.innocent = True
        task.callback((Status.NOT_RUN, "a group handed back: one of its calls was cancelled"))
        self._maybeReady()

    def _cutGroup(self, task: Task | None) -> Callable[[], object] | None:
        """
        (Under the lock) If *task*, the one my thread runs, is a group: take
        its calls not started, so that the thread does not run them, and
        return what gives them back to their owner (to call without the lock).
        """
        if task is None or task.callTuple[0] is not self.groupRunner:
            return None
        calls, left = task.callTuple[1]
        taken = 0
        while True:
            # (From the right, one at a time, as the thread takes from the
            # left: each call goes to one side only, and those taken here
            # are the last ones.)
            try:
                left.pop()
            except IndexError:
                break
            taken += 1
        giveBack = calls.giveBack
        if not taken or giveBack is None:
            return None
        return lambda: giveBack(len(calls) - taken, [])

    def _runGroup(
        self, calls: Batch, left: deque[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
    ) -> tuple[list[tuple[Status, Any]], float]:
        """
        (My thread) The group runner: *calls* in order (taken from *left*,
        see `_cutGroup`), with the outcome each would have had alone, and
        the seconds they all took.
        """
        clock = time.perf_counter
        t0 = clock()
        outcomes: list[tuple[Status, Any]] = []
        append = outcomes.append
        take = left.popleft
        raw = self.raw
        while True:
            try:
                f, args, kw = take()
            except IndexError:
                break
            try:
                result = f(*args, **kw) if kw else f(*args)
            except BaseException:
                append((ERROR, Failure()))
                continue
            if result is not None and not raw and isIterator(result):
                with self._lock:
                    # (A quitting thread waits for its first batch: see _flush.)
                    self._firstBatches += 1
                append((ITERATOR, result))
            else:
                append((RESULT, result))
        return outcomes, clock() - t0

    def _groupEnded(self, result: tuple[list[tuple[Status, Any]], float]) -> None:
        """
        (The reactor, before a group task's report) Its iterator results
        become Deferators, as a lone call's do.
        """
        outcomes = result[0]
        for i, (status, value) in enumerate(outcomes):
            if status is ITERATOR:
                outcomes[i] = (status, self._deferatorOf(value))

    def _deferatorOf(self, iterator: Any) -> Any:
        """
        (The reactor) A Deferator of *iterator*, a result my thread posted:
        it asks my thread for its first batch, which a quitting thread
        waits for (`_firstBatches`).
        """
        from .._iter._deferator import threadDeferator

        deferator = threadDeferator(iterator, self.deferToThread)  # (asks for a batch)
        with self._lock:
            self._firstBatches -= 1
        self._doorbell.put(None)  # (a quitting thread may go now)
        return deferator

    def stop(self) -> Deferred[None]:
        """
        Finish the tasks in hand (with the first batch of their iterator
        results), then end the thread.
        """
        if self._stopD is None:
            self._stopD = Deferred()
            if self._crashed:
                self._stopD.callback(None)
            else:
                self._quitting = True
                self._doorbell.put(None)
        return whenFired(self._stopD)

    def crash(self) -> list[Task]:
        """Stop now. The thread, if busy, is abandoned. Returns unfinished tasks."""
        with self._lock:
            self._crashed = True
            self._quitting = True
            self._generation += 1
            current = self._current
            unfinished = [] if current is None else [current]
            if current is not None and current.callTuple[0] is self.groupRunner:
                # (The abandoned thread runs none of the group's calls not
                # started: they go back with the group.)
                current.callTuple[1][1].clear()
            calls = []
            for kind, payload in self._vip:
                if kind == _TASK:
                    unfinished.append(payload)
                else:
                    calls.append(payload[3])
            unfinished.extend(self._inbox)
            # Finished, but not reported: they are not reported now either.
            outbox = self._outbox
            unfinished.extend(item[1] for item in outbox if item[0] == _TASK)
            kept = [item for item in outbox if item[0] != _TASK]
            outbox.clear()  # (in place: a flush may be draining it)
            outbox.extend(kept)
            self._vip.clear()
            self._inbox.clear()
            self._current = None
            if self._pipe is not None:
                self._pipe.close()  # (no thread posts any more)
        if outbox:
            # deferToThread results the pipe's last wake-up was for.
            self._reactor.callLater(0, self._flush)
        self._doorbell.put(None)  # a sleeping thread wakes up to end
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
        lock = self._lock
        ring = self._doorbell.get
        vip = self._vip
        inbox = self._inbox
        outbox = self._outbox
        clock = time.perf_counter
        while True:
            kind = -1
            # (A look without the lock first: an idle thread takes it only
            # when there is something to take, or to end.)
            if vip or inbox or self._quitting:
                with lock:
                    if self._generation != generation:
                        return  # abandoned (timeout or crash)
                    if vip:
                        kind, payload = vip.popleft()
                    elif inbox:
                        kind, payload = _TASK, inbox.popleft()
                    elif self._quitting and not self._firstBatches:
                        self._ended = True
                        outbox.append((_EXIT, None, None, None, 0.0))
                        if len(outbox) == 1:
                            self._post()
                        return
                    if kind == _TASK:
                        self._current = payload
            if kind < 0:
                # Nothing to do: say so, look once more (an item appended
                # before the reactor saw the flag is seen here), then wait.
                self._idle = True
                # Just after a result, a task may come with its doorbell held
                # back (see _LateBells): look again by then anyway. (The time
                # is read before the look: a task whose bell was held back
                # too early for this wait to outlast is in the inbox by then.)
                left = self._postedAt + 2 * LATE_BELLS_LIMIT - clock()
                if not (vip or inbox):
                    if left > 0:
                        try:
                            ring(True, left)
                        except Empty:
                            pass
                    else:
                        ring()
                self._idle = False
                continue
            if kind == _TASK:
                # The task runs inline (no helper call: this is the thread's
                # hot path). A task without keywords is called without **.
                t0 = clock()
                payload.startedAt = payload._clock()  # (Task.started, inlined)
                f, args, kw = payload.callTuple
                try:
                    result = f(*args, **kw) if kw else f(*args)
                except BaseException:
                    status, result = ERROR, Failure()
                else:
                    status = RESULT
                    if result is not None:
                        raw = self.raw if payload.raw is None else payload.raw
                        if not raw and isIterator(result):
                            status = ITERATOR
                done = clock()
                item = (_TASK, payload, status, result, done - t0)
                result = None
                with lock:
                    if self._generation != generation:
                        return  # abandoned while running: the result is dropped
                    self._current = None
                    if status is ITERATOR:
                        self._firstBatches += 1
                    outbox.append(item)
                    self._postedAt = done
                    if len(outbox) == 1:
                        self._post()
                # Drop the task and its result now (the reactor drops its
                # own references as it delivers): held until the next task,
                # a big result would be freed then, delaying that task.
                item = payload = f = args = kw = None
            else:
                f, args, kw, d = payload
                try:
                    item = (_CALL, d, True, f(*args, **kw), 0.0)
                except BaseException:
                    item = (_CALL, d, False, Failure(), 0.0)
                with lock:
                    if self._generation != generation:
                        return
                    outbox.append(item)
                    if len(outbox) == 1:
                        self._post()
                item = payload = None


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

    As in the original, an iterator result comes as a `Deferator` whose items
    are pulled in that thread, unless ``raw=True``; with ``consumer=`` an
    IConsumer, its items are written to it instead and the Deferred fires
    with the consumer. (``doNext`` is accepted: these calls never wait behind
    queued tasks anyway.)
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
    raw = kw.pop("raw", False)
    consumer = kw.pop("consumer", None)
    kw.pop("doNext", None)
    worker = _sharedWorker
    d = worker.deferToThread(f, *args, **kw)
    if not raw:

        def wrapIterator(result: Any) -> Any:
            if not isIterator(result):
                return result
            from .._iter._deferator import threadDeferator

            return threadDeferator(result, worker.deferToThread)

        d.addCallback(wrapIterator)
    if consumer is not None:
        from .._iter._producers import consumeInto

        d.addCallback(consumeInto, consumer)
    return d

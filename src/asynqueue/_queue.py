"""
`TaskQueue`: the queue, its dispatcher and its result policy.

Data flow::

    call(f, *a, **kw) ──► _Call ──► Scheduler ──► _dispatch ──► worker.run(Task)
        │                   ▲  (pure order)       (idle worker,    │
        │                   │                      best task)      ▼
        ▼                   └── retry (t, d) ◄── _attemptDone ◄── task.callback((status, result))
    caller's Deferred ◄────────────── taskDone (policy) ◄──┘

- A `_Call` is what the caller asked for; it lives until it fires: it *is*
  the Deferred that ``call`` returns (one object per waiting call, not two:
  thousands of queued calls are that many fewer objects for the garbage
  collector to scan again and again).
- Each time the dispatcher hands the call to a worker it makes a fresh `Task`
  (one *attempt*). Results of an attempt the queue has given up on (after a
  timeout, or a detach) are ignored, so a late result never wins over a retry.
- Workers are *ready* when the Deferred from their last ``run`` has fired. The
  dispatcher gives each ready worker the best task it is qualified for, the
  least loaded worker first.
- A timeout counts from when a worker takes the task (or, for workers that
  report it, from when it really starts). A task is retried once after a
  timeout and re-run once after its worker was lost (status ``d``); the second
  time it fails with `errors.TimeoutError` or `errors.WorkerLost`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Collection, Hashable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.python.failure import Failure

from . import errors
from ._scheduler import Entry, Scheduler, checkNiceness
from ._task import DO_LAST_PRIORITY, DO_NEXT_PRIORITY, Task, nextCallID, plainTask
from ._util import whenFired
from .interfaces import IWorker

__all__ = ["TaskQueue"]

log = logging.getLogger("asynqueue")

# Keywords that TaskQueue.call consumes; they never reach the callable.
QUEUE_KEYWORDS = frozenset(
    {
        "niceness",
        "series",
        "doNext",
        "doLast",
        "timeout",
        "consumer",
        "returnFailure",
        "raw",
    }
)

# How long a worker that refused a task on the spot (status d from within
# ``run``) rests before it is offered another: long enough not to spin.
REFUSAL_PAUSE = 0.005

# A pipelining worker whose running task started longer ago than this gets
# no more tasks until that one is done (see TaskQueue._stalled).
PIPELINE_PATIENCE = 0.005

# How many times a call may be charged with a timeout / a lost worker.
MAX_TIMEOUTS = 2
MAX_LOSSES = 2


def describeCall(f: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> str:
    """A one-line ``name(arg, k=v)`` description of a call, for messages and logs."""
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    module = getattr(f, "__module__", None)
    if module and module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kw.items()]
    return f"{name}({', '.join(parts)})"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tracebackText(failure: Failure) -> str:
    """The traceback text of *failure*, including a worker's remote traceback."""
    remote = getattr(failure.value, "remoteTraceback", "")
    if remote:
        return str(remote)
    try:
        return failure.getTraceback()
    except Exception:  # a Failure rebuilt from a remote report may lack frames
        return f"{failure.type.__name__}: {failure.value}"


def toFailure(result: Any, errorType: type[errors.WorkerError] = errors.WorkerError) -> Failure:
    """Turn what a worker reported with status ``e`` into a Failure."""
    if isinstance(result, Failure):
        return result
    if isinstance(result, BaseException):
        return Failure(result)
    text = result.decode("utf-8", "replace") if isinstance(result, bytes) else str(result)
    return Failure(errorType(text, remoteTraceback=text))


class _Call(Deferred[Any], Entry):
    """
    One ``call`` from its submission until it has fired: the caller's
    Deferred, carrying the record of the call, and its own scheduler `Entry`
    while it is queued (``series`` and ``seq`` are the entry's fields).
    """

    # Class-level defaults: most calls set none of the options, and an
    # instance only stores what differs (cheaper than setting every field).
    attempt: Task | None = None
    slot: _Slot | None = None
    entry: Any = None
    timer: Any = None
    done = False
    timeouts = 0
    losses = 0
    callID = 0
    niceness = 0
    doNext = False
    doLast = False
    timeout: float | None = None
    consumer: Any = None
    returnFailure = False
    raw: bool | None = None
    # False once any queue keyword was given: its attempts need the full Task.
    plain = True

    def __init__(self, f: Any, args: tuple[Any, ...], kw: dict[str, Any] | None) -> None:
        Deferred.__init__(self)
        self.series: Hashable = None
        self.f = f
        self.args = args
        # None for no keywords: a waiting call then holds no empty dict (one
        # object fewer per queued call for the garbage collector to count).
        self._kw = kw

    @property
    def kw(self) -> dict[str, Any]:
        """The keywords for *f*; a fresh empty dict when there are none."""
        return {} if self._kw is None else self._kw

    def describe(self) -> str:
        return describeCall(self.f, self.args, self.kw)


class _Slot:
    """An attached worker, as the dispatcher sees it."""

    __slots__ = (
        "ID",
        "attached",
        "bounced",
        "inflight",
        "qualified",
        "ready",
        "reportsStart",
        "rest",
        "stopping",
        "worker",
    )

    def __init__(self, worker: Any, ID: int) -> None:
        self.worker = worker
        self.ID = ID
        self.qualified: frozenset[Hashable] = frozenset()
        self.inflight: dict[Task, _Call] = {}
        self.ready = False
        self.attached = True
        self.stopping = False
        self.bounced = False
        self.rest: Any = None  # the delayed call that ends a refusal pause
        self.reportsStart = bool(getattr(worker, "reportsStart", False))

    def refreshQualifications(self) -> None:
        self.qualified = frozenset([None, *self.worker.cQualified, *self.worker.iQualified])


class TaskQueue:
    """
    A task queue for dispatching arbitrary callables to one or more workers.

    Construct it with workers, or attach them later with `attachWorker`.

    Args:
        timeout: seconds to let a worker stop gracefully (on ``detachWorker``
            and ``shutdown``) before it is crashed. None waits.
        warn: on a task error, log it on the ``asynqueue`` logger at ERROR
            level and fire the call's Deferred with the traceback text,
            instead of stopping the reactor.
        verbose: describe the call in error messages.
        spew: log every call and its result at INFO level (implies verbose).
        returnFailure: errback the call's Deferred with a Failure of the
            task's original exception when a task raises. Without it (and
            without ``warn``), a task error prints the error on stderr, shuts
            the queue down and stops the reactor.
        reactor: the reactor (or a ``task.Clock``-like object for tests) to
            use; the global reactor by default.
    """

    def __init__(
        self,
        *workers: Any,
        timeout: float | None = None,
        warn: bool = False,
        verbose: bool = False,
        spew: bool = False,
        returnFailure: bool = False,
        reactor: Any = None,
        **kw: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self.timeout = timeout
        self.warn = warn
        self.spew = spew
        self.verbose = verbose or spew
        self.returnFailure = returnFailure
        self._scheduler = Scheduler()
        self._slots: dict[int, _Slot] = {}
        self._slotList: list[_Slot] = []  # the same slots, for quick scans
        self._nextID = 1
        self._pending: set[_Call] = set()
        self._updates: list[tuple[Any, tuple[Any, ...], dict[str, Any], Hashable]] = []
        self._running = True
        self._shutdownD: Deferred[None] | None = None
        self._drainWaiters: list[Deferred[None]] = []
        self._dispatching = False
        self._redispatch = False
        self._stoppingReactor = False
        # series -> {worker ID: tasks of that series in flight on it}
        self._seriesRunning: dict[Hashable, dict[int, int]] = {}
        # A subclass's taskDone sees every result; ours is inlined for plain ones.
        self._ownTaskDone = type(self).taskDone is TaskQueue.taskDone
        # Every attempt reports here: one bound method, not one per task.
        self._reporter = self._onReport
        if spew:
            _ensureLogOutput()
        for worker in workers:
            self.attachWorker(worker)

    # ------------------------------------------------------------ state

    def __len__(self) -> int:
        """The number of workers attached."""
        return len(self._slots)

    def __bool__(self) -> bool:
        """True if I am running and have at least one worker."""
        return self._running and bool(self._slots)

    def isRunning(self) -> bool:
        """True until ``shutdown`` has been called."""
        return self._running

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} workers={len(self._slots)}"
            f" queued={len(self._scheduler)} pending={len(self._pending)}"
            f"{'' if self._running else ' shut down'}>"
        )

    def counts(self) -> dict[str, int]:
        """Counts of attached workers, queued calls and unfinished calls."""
        running = sum(len(s.inflight) for s in self._slots.values())
        return {
            "workers": len(self._slots),
            "queued": len(self._scheduler),
            "running": running,
            "pending": len(self._pending),
        }

    # ------------------------------------------------------------ workers

    def attachWorker(self, worker: Any) -> Deferred[int]:
        """
        Register a new provider of `IWorker`.

        Returns a Deferred firing with an int ID unique within this queue.
        Remembered updates run on the worker before it gets queued tasks.
        """
        if not IWorker.providedBy(worker):
            raise errors.ImplementationError(f"{worker!r} does not provide IWorker")
        IWorker.validateInvariants(worker)
        for slot in self._slots.values():
            if slot.worker is worker:
                return succeed(slot.ID)
        ID = self._nextID
        self._nextID += 1
        slot = _Slot(worker, ID)
        slot.refreshQualifications()
        self._slots[ID] = slot
        self._slotList.append(slot)
        worker.ID = ID
        worker.hired = True
        worker.setResignator(lambda *_: self._resigned(ID))
        self._refreshRestricted()
        d = self._replayUpdates(slot)
        d.addCallback(lambda _: self._workerReady(slot))
        return succeed(ID)

    def _resigned(self, ID: int) -> Deferred[list[Task]]:
        return self.detachWorker(ID, reassign=True, crash=True)

    def _getWorkerID(self, workerOrID: Any) -> int | None:
        if isinstance(workerOrID, int) and workerOrID in self._slots:
            return workerOrID
        for ID, slot in self._slots.items():
            if slot.worker is workerOrID:
                return ID
        return None

    def detachWorker(
        self, workerOrID: Any, reassign: bool = False, crash: bool = False
    ) -> Deferred[list[Task]]:
        """
        Detach and stop a worker (the object or its ID).

        Returns a Deferred firing with the list of tasks it left unfinished.
        With ``reassign``, those calls go back to the queue (at the front) and
        the list is empty; without it, their Deferreds fail with
        `errors.TaskCancelled`. A graceful stop (no ``crash``) lets the worker
        finish the tasks in hand; after the queue's ``timeout`` it is crashed.
        """
        ID = self._getWorkerID(workerOrID)
        if ID is None:
            return succeed([])
        slot = self._slots.pop(ID)
        self._slotList.remove(slot)
        slot.attached = False
        slot.ready = False
        if slot.rest is not None and slot.rest.active():
            slot.rest.cancel()
        slot.rest = None
        slot.worker.hired = False
        self._refreshRestricted()
        if crash:
            d: Deferred[list[Task]] = succeed(self._crashSlot(slot))
        else:
            d = self._stopSlot(slot)
        d.addCallback(self._handleUnfinished, reassign)
        d.addCallback(self._afterDetach)
        return d

    def _afterDetach(self, result: list[Task]) -> list[Task]:
        self._dispatch()
        self._checkDrained()
        return result

    def _crashSlot(self, slot: _Slot) -> list[Task]:
        try:
            slot.worker.crash()
        except Exception:
            log.exception("Worker %r failed to crash", slot.worker)
        # Whatever the worker says, every attempt still in flight on it is
        # unfinished as far as the queue is concerned.
        return self._clearInflight(slot)

    def _stopSlot(self, slot: _Slot) -> Deferred[list[Task]]:
        slot.stopping = True
        result: Deferred[list[Task]] = Deferred()
        timer = None

        def stopped(_: Any) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            if not result.called:
                # Attempts the worker never reported are unfinished.
                result.callback(self._clearInflight(slot))

        def tooSlow() -> None:
            if not result.called:
                unfinished = self._crashSlot(slot)  # may fire the stop Deferred
                if not result.called:
                    result.callback(unfinished)

        try:
            stopD = slot.worker.stop()
        except Exception:
            log.exception("Worker %r failed to stop", slot.worker)
            stopD = succeed(None)
        if self.timeout is not None:
            timer = self._reactor.callLater(self.timeout, tooSlow)
        stopD.addBoth(stopped)
        return result

    def _handleUnfinished(self, unfinished: list[Task], reassign: bool) -> list[Task]:
        calls = []
        for task in unfinished:
            call = self._callForAttempt(task)
            if call is not None:
                calls.append(call)
        for call in calls:
            self._closeAttempt(call)
            if reassign:
                self._requeue(call)
            else:
                self._finish(
                    call,
                    Failure(
                        errors.TaskCancelled(
                            f"{call.describe()}: its worker was detached before it finished"
                        )
                    ),
                )
        return [] if reassign else unfinished

    def _callForAttempt(self, task: Task) -> _Call | None:
        for call in self._pending:
            if call.attempt is task:
                return call
        return None

    def qualifyWorker(self, worker: Any, series: Hashable) -> None:
        """Add *series* to the qualifications of an attached *worker*."""
        if series not in worker.iQualified:
            worker.iQualified.append(series)
        ID = self._getWorkerID(worker)
        if ID is not None:
            self._slots[ID].refreshQualifications()
            self._refreshRestricted()
            self._dispatch()

    def workers(self, ID: int | None = None) -> Any:
        """The worker with *ID* (None if not attached), or a list of all workers."""
        if ID is None:
            return [slot.worker for slot in self._slots.values()]
        slot = self._slots.get(ID)
        return None if slot is None else slot.worker

    def _refreshRestricted(self) -> None:
        restricted: set[Hashable] = set()
        for slot in self._slots.values():
            restricted.update(slot.qualified)
        self._scheduler.setRestricted(restricted)

    # ------------------------------------------------------------ calls

    def newTask(self, func: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> _Call:
        """Make the record of a queued call from a func-args-kw combo."""
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        own = dict(kw) if kw else None
        call = _Call(func, tuple(args), own)
        if self.returnFailure:
            call.returnFailure = True
        if own and not QUEUE_KEYWORDS.isdisjoint(own):
            self._queueOptions(call, own)
        return call

    def _queueOptions(self, call: _Call, kw: dict[str, Any]) -> None:
        """Take the queue's keywords out of *kw* (the call's own), validating each."""
        call.plain = False
        call.niceness = checkNiceness(kw.pop("niceness", 0))
        call.series = kw.pop("series", None)
        if call.series is not None:
            hash(call.series)  # TypeError at the call site for an unhashable series
        call.doNext = bool(kw.pop("doNext", False))
        call.doLast = bool(kw.pop("doLast", False))
        timeout = kw.pop("timeout", None)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
            if timeout <= 0:
                raise ValueError(f"timeout must be positive, not {timeout!r}")
        call.timeout = timeout
        call.consumer = kw.pop("consumer", None)
        if call.consumer is not None and not callable(getattr(call.consumer, "write", None)):
            raise TypeError(f"consumer {call.consumer!r} does not provide IConsumer")
        call.returnFailure = bool(kw.pop("returnFailure", self.returnFailure))
        raw = kw.pop("raw", None)
        call.raw = None if raw is None else bool(raw)

    def call(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """
        Queue a call of ``func(*args, **kw)``; returns a Deferred of its result.

        Keywords for the queue (never passed to *func*):

        - ``niceness``: int from -20 to 20 (default 0); a series at N+10 runs
          at half the rate of one at N.
        - ``series``: hashable; tasks of a series start in submission order,
          and run only on workers qualified for it if any is attached.
        - ``doNext`` / ``doLast``: run before / after everything else.
        - ``timeout``: seconds from when a worker takes the task; retried
          once, then fails with `errors.TimeoutError`.
        - ``consumer``: an IConsumer to receive the items of an iterator
          result; the Deferred then fires with the consumer.
        - ``returnFailure``: errback with the task's exception (overrides the
          queue's setting).
        - ``raw``: return iterator results as-is (overrides the worker).

        Raises:
            QueueRunError: the queue has been shut down.
            TypeError, ValueError: bad *func* or queue keyword.
        """
        if not self._running:
            raise errors.QueueRunError(
                f"Cannot call {describeCall(func, args, kw)}: the queue is shut down"
            )
        call = self.newTask(func, args, kw)
        call.callID = nextCallID()
        self._pending.add(call)
        scheduler = self._scheduler
        if (
            call.series is None
            and not scheduler.count
            and not self._dispatching
            and scheduler.vacant()
            and not (call.doNext or call.doLast)
        ):
            # Fast path: nothing is queued, so this call is what the scheduler
            # would pop next; hand it to the least loaded ready worker without
            # a push, a pop and a dispatch pass (~9 µs of reactor time per call).
            slot = self._leastLoadedReady()
            if slot is not None:
                call.seq = scheduler.ticket()
                self._dispatching = True
                try:
                    self._runOn(slot, call)
                finally:
                    self._dispatching = False
                if self._redispatch and scheduler.count:
                    self._dispatch()  # something was queued meanwhile (a retry)
                return call
        # The call is its own entry (push sets its seq).
        call.entry = scheduler.push(call, call.series, call.niceness, call.doNext, call.doLast)
        self._dispatch()
        return call

    def _leastLoadedReady(self) -> _Slot | None:
        best = None
        for slot in self._slotList:
            if (
                slot.ready
                and slot.attached
                and (best is None or len(slot.inflight) < len(best.inflight))
            ):
                best = slot
        if (
            best is not None
            and best.inflight
            and best.reportsStart
            and self._stalled(best, self._reactor.seconds())
        ):
            return None  # every ready worker is stuck in a long task: queue it
        return best

    @staticmethod
    def _stalled(slot: _Slot, now: float) -> bool:
        """
        True if *slot*'s running task has taken longer than `PIPELINE_PATIENCE`.

        A pipelining worker gets more tasks while it works, to hide the
        hand-off. Behind a long task that only delays them, and commits them
        to that worker before the scheduler's later choices (niceness, new
        series) can apply: so such a worker gets no more until it is done.
        """
        started = next(iter(slot.inflight)).startedAt
        return started is not None and now - started > PIPELINE_PATIENCE

    def _requeue(self, call: _Call) -> None:
        """Put *call* back at the front, in its original place among retries."""
        call.entry = self._scheduler.pushFront(call, call.series, call.seq)

    # ------------------------------------------------------------ dispatch

    def _dispatch(self) -> None:
        """Give every ready worker the best task it may run."""
        if self._dispatching:
            self._redispatch = True
            return
        scheduler = self._scheduler
        if not scheduler.count:
            return
        for slot in self._slotList:
            if slot.ready:
                break
        else:
            return  # no worker can take anything now
        self._dispatching = True
        try:
            # Passes: each ready worker, least loaded first, gets one task;
            # again while a worker stays ready after taking one (pipelining)
            # or something asked for a dispatch meanwhile (_redispatch).
            while scheduler.count:
                self._redispatch = False
                ready = [s for s in self._slotList if s.ready]
                if not ready:
                    break
                again = False
                if len(ready) > 1:
                    ready.sort(key=_load)
                for slot in ready:
                    if self._offer(slot):
                        if len(ready) == 1:
                            self._feed(slot)
                        again = again or slot.ready
                if not (again or self._redispatch):
                    break
        finally:
            self._dispatching = False

    def _offer(self, slot: _Slot) -> bool:
        """Give *slot* the best task it may run now, if any; True if it got one."""
        if not slot.ready or not slot.attached:
            return False
        if slot.inflight and slot.reportsStart and self._stalled(slot, self._reactor.seconds()):
            return False
        call = self._scheduler.pop(slot.qualified, self._busySeries(slot))
        if call is None:
            return False
        self._runOn(slot, call)
        return True

    def _feed(self, slot: _Slot) -> None:
        """
        The express path of `_dispatch` when *slot* is the only ready worker:
        the passes would each give it one task until it is full, it stalls or
        nothing is left for it; this loop does the same without rebuilding
        the list of ready workers each time. Anything else that happens
        meanwhile (another worker ready, a retry) sets ``_redispatch`` and
        hands back to the passes.
        """
        scheduler = self._scheduler
        seconds = self._reactor.seconds
        while slot.ready and scheduler.count and not self._redispatch and slot.attached:
            inflight = slot.inflight
            if inflight and slot.reportsStart:
                started = next(iter(inflight)).startedAt
                if started is not None and seconds() - started > PIPELINE_PATIENCE:
                    return  # stalled (see _stalled)
            busy = self._busySeries(slot) if self._seriesRunning else ()
            call = scheduler.pop(slot.qualified, busy)
            if call is None:
                return
            self._runOn(slot, call)

    def _busySeries(self, slot: _Slot) -> Collection[Hashable]:
        """
        Series that *slot* may not take now: a task of series S goes to a
        worker that already holds other tasks only if no *other* worker holds
        S tasks. The worker runs its tasks in order, so S tasks still start
        in submission order, even when workers pipeline several tasks.
        """
        if not slot.inflight or not self._seriesRunning:
            return ()
        return [
            series
            for series, holders in self._seriesRunning.items()
            if len(holders) > 1 or slot.ID not in holders
        ]

    def _track(self, slot: _Slot, call: _Call) -> None:
        holders = self._seriesRunning.setdefault(call.series, {})
        holders[slot.ID] = holders.get(slot.ID, 0) + 1

    def _untrack(self, slot: _Slot, call: _Call) -> None:
        holders = self._seriesRunning.get(call.series)
        if holders is None or slot.ID not in holders:
            return
        holders[slot.ID] -= 1
        if not holders[slot.ID]:
            del holders[slot.ID]
            if not holders:
                del self._seriesRunning[call.series]

    def _clearInflight(self, slot: _Slot) -> list[Task]:
        """Forget every attempt in flight on *slot*; returns them."""
        for call in slot.inflight.values():
            if call.series is not None:
                self._untrack(slot, call)
        unfinished = list(slot.inflight)
        slot.inflight.clear()
        return unfinished

    def _runOn(self, slot: _Slot, call: _Call) -> None:
        """
        Hand *call* to *slot*'s worker as a new attempt. Leaves ``slot.ready``
        True if the worker can take another task at once.
        """
        slot.ready = False
        call.entry = None
        if call.plain and not (call.timeouts or call.losses):
            callTuple = (call.f, call.args, call._kw or {})  # (call.kw, minus a Python call)
            task = plainTask(callTuple, call.callID, self._reactor.seconds)
        else:
            task = Task(
                call.f,
                call.args,
                call.kw,
                DO_NEXT_PRIORITY
                if call.doNext
                else DO_LAST_PRIORITY
                if call.doLast
                else call.niceness,
                call.series,
                call.timeout,
                niceness=call.niceness,
                doNext=call.doNext,
                doLast=call.doLast,
                raw=call.raw,
                consumer=call.consumer,
                callID=call.callID,
                attempt=call.timeouts + call.losses + 1,
                clock=self._reactor.seconds,
            )
        call.attempt = task
        call.slot = slot
        task.owner = call
        slot.inflight[task] = call
        if call.series is not None:
            self._track(slot, call)
        task.onReport = self._reporter
        if call.timeout is not None:
            if not getattr(slot.worker, "reportsStart", False):
                task.startedAt = self._reactor.seconds()
            call.timer = self._reactor.callLater(call.timeout, self._timerFired, task, call)
        slot.bounced = False
        try:
            readyD = slot.worker.run(task)
        except Exception:
            task.callback(("e", Failure()))
            readyD = succeed(None)
        if slot.bounced and (readyD is None or readyD.called):
            # The worker refused the task on the spot (status d): rest a moment
            # before offering it more, or a worker that refuses everything
            # would spin this loop forever.
            if readyD is not None:
                readyD.addErrback(lambda _: None)
            if slot.attached:  # (the report may have led to its detachment)
                slot.rest = self._reactor.callLater(REFUSAL_PAUSE, self._rested, slot)
            return
        if readyD is None or (readyD.called and not isinstance(readyD.result, Failure)):
            # Ready at once (a pipelining worker with room): no callback round.
            if slot.attached and not slot.stopping:
                slot.ready = True
            return
        readyD.addCallbacks(self._onReady, self._onReadyFailed, (slot,), None, (slot,))

    def _rested(self, slot: _Slot) -> None:
        slot.rest = None
        self._workerReady(slot)

    def _onReady(self, _: Any, slot: _Slot) -> None:
        self._workerReady(slot)

    def _onReadyFailed(self, failure: Failure, slot: _Slot) -> None:
        log.error("Worker %r failed while running a task: %s", slot.worker, failure.value)
        if slot.attached:
            self.detachWorker(slot.ID, reassign=True, crash=True)

    def _workerReady(self, slot: _Slot) -> None:
        if slot.attached and not slot.stopping:
            slot.ready = True
            self._dispatch()

    # ------------------------------------------------------------ results

    def _closeAttempt(self, call: _Call) -> Task | None:
        """Stop waiting for the current attempt of *call*; returns it."""
        task = call.attempt
        call.attempt = None
        if call.timer is not None:
            if call.timer.active():
                call.timer.cancel()
            call.timer = None
        slot = call.slot
        if slot is not None:
            call.slot = None
            if slot.inflight.pop(task, None) is not None and call.series is not None:  # type: ignore[arg-type]
                self._untrack(slot, call)
        return task

    def _onReport(self, task: Task, statusResult: Any) -> None:
        call = task.owner
        if (
            statusResult.__class__ is tuple
            and len(statusResult) == 2
            and statusResult[0] == "r"
            and self._ownTaskDone
            and not self.spew
        ):
            # The hot path: what _attemptDone, taskDone and _finish do with a
            # plain result of the current attempt, inlined.
            if call.attempt is not task or call.done:
                return  # a late result of an attempt the queue gave up on
            slot = call.slot
            if call.timer is None and call.series is None and slot is not None:
                call.attempt = call.slot = None
                slot.inflight.pop(task, None)
            else:
                self._closeAttempt(call)
            call.done = True
            self._pending.discard(call)
            if call.entry is not None:
                self._scheduler.remove(call.entry)
                call.entry = None
            result = statusResult[1]
            # isinstance(result, Deferred) by the MRO: Deferred is an ABC
            # (Awaitable), whose isinstance costs a Python-level call.
            if Deferred in result.__class__.__mro__:
                result.chainDeferred(call)
            else:
                call.callback(result)
            if self._scheduler.count:
                self._dispatch()
            if self._drainWaiters:
                self._checkDrained()
            return
        self._attemptDone(statusResult, task, call)

    def _attemptDone(self, statusResult: Any, task: Task, call: _Call) -> None:
        if call.attempt is not task or call.done:
            return  # a late result of an attempt the queue gave up on
        slot = call.slot
        self._closeAttempt(call)
        status, result = _unpackStatus(statusResult)
        if status == "t":
            self._timedOut(call, task, slot, notifyWorker=False)
        elif status == "d":
            if slot is not None:
                slot.bounced = True
            if task.innocent:
                self._requeue(call)
            else:
                self._lost(call, result)
        else:
            try:
                outcome = self.taskDone((status, result), task, call=call)
            except Exception:
                outcome = Failure()
            self._finish(call, outcome)
            if not self._drainWaiters and not self._scheduler:
                return  # nothing queued, nobody waiting for the drain
        self._dispatch()
        self._checkDrained()

    def _timerFired(self, task: Task, call: _Call) -> None:
        call.timer = None
        if call.attempt is not task or call.done:
            return
        now = self._reactor.seconds()
        assert call.timeout is not None
        started = task.startedAt
        if started is None:
            # Still waiting in the worker's own pipeline: not started yet.
            call.timer = self._reactor.callLater(call.timeout, self._timerFired, task, call)
            return
        remaining = started + call.timeout - now
        if remaining > 1e-6:
            call.timer = self._reactor.callLater(remaining, self._timerFired, task, call)
            return
        slot = call.slot
        self._closeAttempt(call)
        self._timedOut(call, task, slot, notifyWorker=True)
        self._dispatch()
        self._checkDrained()

    def _timedOut(self, call: _Call, task: Task, slot: _Slot | None, notifyWorker: bool) -> None:
        call.timeouts += 1
        if notifyWorker and slot is not None:
            hook = getattr(slot.worker, "timedOut", None)
            if hook is not None:
                try:
                    hook(task)
                except Exception:
                    log.exception("Worker %r failed to handle a timeout", slot.worker)
        if call.timeouts >= MAX_TIMEOUTS:
            self._finish(
                call,
                Failure(
                    errors.TimeoutError(
                        f"{call.describe()} timed out after {call.timeout} seconds,"
                        f" {call.timeouts} times"
                    )
                ),
            )
        else:
            self._requeue(call)

    def _lost(self, call: _Call, reason: Any) -> None:
        call.losses += 1
        if call.losses >= MAX_LOSSES:
            text = str(reason.value if isinstance(reason, Failure) else reason or "")
            self._finish(
                call,
                Failure(
                    errors.WorkerLost(
                        f"{call.describe()}: its worker was lost {call.losses} times"
                        + (f" ({text})" if text else ""),
                        reason=text,
                    )
                ),
            )
        else:
            self._requeue(call)

    def taskDone(self, statusResult: Any, task: Task, **kw: Any) -> Any:
        """
        Turn a worker's ``(status, result)`` into what the caller gets.

        - ``e``: the task raised; see the error policy in the class docstring.
        - ``r``: the result. ``n``: None.
        - ``i``: an iterator result: a `Deferator` (or the raw iterator, or
          ``[]`` if it was empty); with a consumer, a Deferred that fires with
          the consumer once every item has been written to it.
        - ``c``: a Deferred (or value) of a result sent in chunks.
        - ``t`` and ``d`` are retried by the queue and never reach here
          through it; passed directly they give the matching error.
        """
        call: _Call | None = kw.get("call")
        status, result = _unpackStatus(statusResult)
        if not self.spew and (status == "r" or status == "n"):
            return result if status == "r" else None  # the hot paths
        description = call.describe() if call is not None else repr(task)
        if self.spew:
            log.info("%s -> %r", description, result)
        if status == "r":
            return result
        if status == "n":
            return None
        if status == "c":
            return result
        if status == "i":
            consumer = call.consumer if call is not None else kw.get("consumer")
            if consumer is None:
                return result
            from ._producers import consumeInto

            return consumeInto(result, consumer)
        if status == "e":
            failure = toFailure(result)
            returnFailure = (
                call.returnFailure
                if call is not None
                else kw.get("returnFailure", self.returnFailure)
            )
            return self._taskError(failure, description, returnFailure)
        if status == "t":
            return Failure(errors.TimeoutError(f"{description} timed out"))
        if status == "d":
            return Failure(errors.WorkerLost(f"{description} did not run"))
        return Failure(errors.WorkerError(f"Unknown status {status!r} for {description}"))

    def _taskError(self, failure: Failure, description: str, returnFailure: bool) -> Any:
        text = tracebackText(failure)
        prefix = description if self.verbose else "TASK"
        if self.warn or self.spew:
            log.error("%s: %s", prefix, text)
        if returnFailure:
            return failure
        if not self.warn:
            self._stopOnError(prefix, text)
        return text

    def _stopOnError(self, prefix: str, text: str) -> None:
        """The default error policy: say what went wrong, then stop cleanly."""
        sys.stderr.write(f"ERROR: {prefix}: {text.rstrip()}\n")
        if self._stoppingReactor:
            return
        self._stoppingReactor = True
        sys.stderr.write("Shutting down the queue and stopping the reactor.\n")
        sys.stderr.flush()

        def stopReactor(_: Any) -> None:
            if getattr(self._reactor, "running", False):
                self._reactor.stop()

        self._reactor.callLater(0, lambda: self.shutdown().addBoth(stopReactor))

    def _finish(self, call: _Call, outcome: Any) -> None:
        """Fire the caller's Deferred, exactly once."""
        if call.done:
            return
        call.done = True
        self._pending.discard(call)
        if call.entry is not None:
            self._scheduler.remove(call.entry)
            call.entry = None
        if isinstance(outcome, Deferred):
            # Chunked results and consumer runs finish later.
            outcome.chainDeferred(call)
        else:
            call.callback(outcome)

    # ------------------------------------------------------------ update

    def update(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[list[Any]]:
        """
        Run ``func(*args, **kw)`` directly on every attached worker, and
        remember it for workers attached later (unless ``ephemeral=True``).

        Returns a Deferred firing with the list of results on the current
        workers. Wait for it before queueing calls that need the update.
        """
        if not self._running:
            raise errors.QueueRunError("Cannot update: the queue is shut down")
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        ephemeral = bool(kw.pop("ephemeral", False))
        kw.pop("sequential", None)
        if kw.get("consumer") is not None:
            raise ValueError("update() does not take a consumer")
        call = self.newTask(func, args, kw)
        call.returnFailure = True
        if not ephemeral:
            self._updates.append((func, call.args, call.kw, call.series))
        ds = [
            self._runUpdate(
                slot,
                func,
                call.args,
                call.kw,
                "ephemeral" if ephemeral else "persistent",
            )
            for slot in list(self._slots.values())
            if call.series is None or call.series in slot.qualified
        ]
        return DeferredList(ds, consumeErrors=True).addCallback(
            lambda results: [value for _, value in results]
        )

    def _runUpdate(
        self,
        slot: _Slot,
        func: Any,
        args: tuple[Any, ...],
        kw: dict[str, Any],
        kind: str,
    ) -> Deferred[Any]:
        task = Task(
            func,
            args,
            dict(kw),
            doNext=True,
            update=kind,
            priority=DO_NEXT_PRIORITY,
            clock=self._reactor.seconds,
        )
        try:
            readyD = slot.worker.run(task)
        except Exception:
            task.callback(("e", Failure()))
            readyD = succeed(None)
        result: Deferred[Any] = Deferred()

        def done(statusResult: Any) -> None:
            status, value = _unpackStatus(statusResult)
            if status == "e":
                failure = toFailure(value)
                log.error(
                    "Update %s failed on worker %r: %s",
                    describeCall(func, args, kw),
                    slot.worker,
                    failure.value,
                )
                result.callback(failure)
            elif status in ("t", "d"):
                result.callback(Failure(errors.WorkerError(f"update did not run ({status})")))
            elif isinstance(value, Deferred):
                value.chainDeferred(result)  # e.g. an iterator result still arriving
            else:
                result.callback(None if status == "n" else value)

        task.d.addCallback(done)
        result.readyD = readyD  # type: ignore[attr-defined]
        return result

    def _replayUpdates(self, slot: _Slot) -> Deferred[None]:
        """Run remembered updates on a new worker, waiting until it takes each."""
        d: Deferred[None] = succeed(None)
        for func, args, kw, series in self._updates:
            if series is not None and series not in slot.qualified:
                continue

            def runOne(_: Any, func: Any = func, args: Any = args, kw: Any = kw) -> Any:
                if not slot.attached:
                    return None
                return self._runUpdate(slot, func, args, kw, "persistent").readyD  # type: ignore[attr-defined]

            d.addCallback(runOne)
        d.addErrback(lambda f: log.error("Replaying updates failed: %s", f.value))
        return d

    # ------------------------------------------------------------ shutdown

    def _checkDrained(self) -> None:
        if self._drainWaiters and (not self._pending or not self._slots):
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                d.callback(None)

    def _drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._drainWaiters.append(d)
        self._checkDrained()
        return d

    def shutdown(self) -> Deferred[None]:
        """
        Shut down; wait for the returned Deferred before dropping the queue.

        1. Refuse new calls (they raise `errors.QueueRunError`).
        2. Let queued and running tasks finish, while any worker is attached.
        3. Stop every worker; crash those still busy after ``timeout``.
        4. Fail every call still unfinished with `errors.QueueRunError`.

        Calling it again returns a Deferred of the same shutdown.
        """
        if self._shutdownD is None:
            self._running = False
            self._shutdownD = self._doShutdown()
        return whenFired(self._shutdownD)

    def _doShutdown(self) -> Deferred[None]:
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def steps() -> Any:
            yield self._drained()
            stops = [self.detachWorker(ID) for ID in list(self._slots)]
            results = yield DeferredList(stops, consumeErrors=True)
            for ok, value in results:
                if not ok:
                    log.error("Stopping a worker failed: %s", value.value)
            leftovers = self._scheduler.drain()
            for call in leftovers:
                call.entry = None
            for call in list(self._pending):
                self._closeAttempt(call)
                self._finish(
                    call,
                    Failure(
                        errors.QueueRunError(
                            f"{call.describe()} never ran: the queue was shut down"
                        )
                    ),
                )

        return steps()


def _load(slot: _Slot) -> int:
    """How many attempts *slot* has in flight (the dispatcher's sort key)."""
    return len(slot.inflight)


def _unpackStatus(statusResult: Any) -> tuple[str, Any]:
    try:
        status, result = statusResult
    except (TypeError, ValueError):
        return "?", statusResult
    if isinstance(status, bytes):
        status = status.decode("ascii", "replace")
    return status, result


def _ensureLogOutput() -> None:
    """Make ``spew`` visible even when the application configured no logging."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)

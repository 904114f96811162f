"""
`Dispatcher`: how `TaskQueue` hands calls to workers and takes back reports.

- Workers are *ready* when the Deferred from their last ``run`` has fired. The
  dispatcher gives each ready worker the best task it is qualified for, the
  least loaded worker first (`_Slot` is a worker as the dispatcher sees it).
- A series runs in sequence: while one of its tasks is in flight on a worker,
  the scheduler *holds* the series (``Scheduler.hold``), and no other worker gets its
  next task. The worker holding it may, if it ``runsInOrder`` (see
  `IWorker`), take the next ones to run right behind it (see `_offer`). The
  series is released when its last task in flight reports.
- A timeout counts from when a worker takes the task (or, for workers that
  report it, from when it really starts). A task is retried once after a
  timeout and re-run once after its worker was lost (status ``d``); the second
  time it fails with `errors.TimeoutError` or `errors.WorkerLost`.

Groups
------

A backlog of small calls costs the queue more per call (a task, a hand-out,
a report, the worker's framing) than the calls themselves. So a worker
that says how many it takes at once (``groupLimit``: process and thread
workers, about 2 ms of calls by their measured time, at most 32, see
`asynqueue._core._window.groupSizeFor`) gets the plain calls of
a backlog (no options but ``returnFailure`` and ``series``, never retried)
that the scheduler would hand out next, in order, as one task: a *group*
(`_Group`; `Scheduler.popIf` takes each, stopping at the first that may
not join). Each call keeps its own Deferred and gets the outcome it would
have had alone (its result, its error with its traceback, an iterator it
streams: the worker's ``groupOutcome``); its calls come back to the queue's
front if the group stops early (``Batch.giveBack``: a long call in it, see
`_checkStalls`; or a call whose outcome is the task's own). A group that
fails as a whole (it could not be sent, say) has each call run alone; one
whose worker was lost charges the loss to the call it was running, and
the others go back unrun. A cancelled call of a group is dropped from it
and the group stopped (``stopGroup``), so that it does not run if it had
not started. A series still runs in sequence: the calls of a series in a
group run in order there, and no other call of it is handed out until
they have left the group (see `_runGroup`). A queue whose results go
through a ``taskDone`` of its own (or ``spew``) forms no groups.

The hot path is two methods: `Dispatcher._offer` gives a slot a task (a new
call on the fast path of ``submit``, or the scheduler's pick in a dispatch
pass), and `Dispatcher._onReport` takes every report of an attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from .. import errors
from .._support._batch import Batch, isBatch
from .._support._status import NONE, NOT_RUN, RESULT, STATUS_BY_CODE, TIMEOUT, Status
from ..interfaces import IWorker
from . import _gcpause
from ._calls import _Call, _Slot, _unpackStatus
from ._scheduler import Scheduler
from ._task import DO_LAST_PRIORITY, DO_NEXT_PRIORITY, Report, Task, nextCallID

_newTask = object.__new__

log = logging.getLogger("asynqueue")

# How long a worker that refused a task on the spot (status d from within
# ``run``) rests before it is offered another: long enough not to spin.
REFUSAL_PAUSE = 0.005

# A pipelining worker whose running task started longer ago than this gets
# no more tasks until that one is done (the stall rule, see Dispatcher._offer).
PIPELINE_PATIENCE = 0.005

# Tasks waiting in a worker behind a running one that has taken longer than
# this are handed back to the queue (the worker's optional ``handBack``), if
# another worker could run them: see Dispatcher._checkStalls.
HANDBACK_PATIENCE = 0.02

# How many times a call may be charged with a timeout / a lost worker.
MAX_TIMEOUTS = 2
MAX_LOSSES = 2


class TaskDone(Protocol):
    """The queue's result policy: what the caller gets for a finished attempt."""

    def __call__(self, statusResult: Report, task: Task, *, call: _Call) -> Any: ...


class Dispatcher:
    """
    The attached workers, the unfinished calls and how the two meet.

    `TaskQueue` holds one and keeps the public API; this object owns the
    scheduler, the slots (`_Slot`, a worker as the dispatcher sees it), the
    pending calls and which series run where, hands queued calls to ready
    workers and turns every report of an attempt into a retry or the
    caller's result.

    Args:
        reactor: the clock for timeouts and pauses (a ``Clock`` in tests).
        taskDone: the queue's result policy, ``taskDone(statusResult, task,
            call=call)``: what the caller gets for a finished attempt.
    """

    def __init__(self, reactor: IReactorTime, taskDone: TaskDone) -> None:
        self._reactor = reactor
        self._seconds = reactor.seconds  # bound once: every attempt's clock
        self.taskDone = taskDone
        # True: a plain result (status r or n) goes to the caller as it is,
        # without a call of taskDone (the queue's own policy, no spew).
        self.plainResults = False
        self.scheduler: Scheduler[_Call] = Scheduler()
        self.slots: dict[int, _Slot] = {}
        self._slotList: list[_Slot] = []  # the same slots, for quick scans
        self._nextID = 1
        self.pending: set[_Call] = set()
        self._drainWaiters: list[Deferred[None]] = []
        self._dispatching = False
        self._redispatch = False
        # Every attempt reports here: one bound method, not one per task.
        self._reporter = self._onReport
        # Every call's canceller, bound once.
        self.canceller = self.cancel
        # The token of this dispatcher's hold on full garbage collections
        # while its backlog is large (see `_gcpause`), or None.
        self._gcHold: object | None = None
        # The delayed call of _checkStalls, while tasks wait behind others in
        # a worker that can hand them back.
        self._stallTimer: IDelayedCall | None = None
        # Why the queue has no worker: its last one gave up (see _resigned);
        # None once a worker is attached.
        self._orphaned: str | None = None

    def running(self) -> int:
        """How many attempts are in flight."""
        return sum(len(slot.inflight) for slot in self._slotList)

    # ------------------------------------------------------------ workers

    def attach(self, worker: IWorker) -> _Slot:
        """A new slot for *worker* (not ready yet: see `workerReady`)."""
        ID = self._nextID
        self._nextID += 1
        slot = _Slot(worker, ID)
        slot.refreshQualifications()
        self.slots[ID] = slot
        self._slotList.append(slot)
        # (Not in IWorker: the original's queue set both on its workers.)
        worker.ID = ID  # type: ignore[attr-defined]
        worker.hired = True  # type: ignore[attr-defined]
        worker.setResignator(lambda *_: self._resigned(slot))
        self._orphaned = None
        self._refreshRestricted()
        return slot

    def _resigned(self, slot: _Slot) -> Deferred[list[Task]]:
        """
        *slot*'s worker quit on its own: detach it, its unfinished calls back
        in the queue. If it gave up (its ``gaveUp`` says why: a server gone,
        children that die at start) and it was the last worker, no call can
        run: the queued ones fail, and so do new ones until a worker is
        attached, rather than wait for ever.
        """
        why = getattr(slot.worker, "gaveUp", None) if slot.attached else None
        d = self.detach(slot, reassign=True, crash=True)
        if why and not self._slotList:
            self._orphaned = f"was not run: the queue's last worker gave up ({why})"
            self.abandon(
                self._orphaned,
                errors.WorkerError,
                retried=f"was not run again: the queue's last worker gave up ({why})",
            )
        return d

    def requalify(self, slot: _Slot) -> None:
        """*slot*'s worker is qualified for other series now."""
        slot.refreshQualifications()
        self._refreshRestricted()
        self._dispatch()

    def _refreshRestricted(self) -> None:
        restricted: set[Hashable] = set()
        for slot in self._slotList:
            restricted.update(slot.qualified)
        self.scheduler.setRestricted(restricted)

    def detach(
        self,
        slot: _Slot,
        reassign: bool = False,
        crash: bool = False,
        timeout: float | None = None,
    ) -> Deferred[list[Task]]:
        """
        Detach and stop *slot*'s worker; see `TaskQueue.detachWorker`.
        *timeout*: seconds a graceful stop may take before the worker is
        crashed (None waits).
        """
        if self.slots.pop(slot.ID, None) is None:
            return succeed([])
        self._slotList.remove(slot)
        slot.attached = False
        slot.ready = False
        if slot.rest is not None and slot.rest.active():
            slot.rest.cancel()
        slot.rest = None
        slot.worker.hired = False  # type: ignore[attr-defined]
        self._refreshRestricted()
        if crash:
            d: Deferred[list[Task]] = succeed(self._crashSlot(slot))
        else:
            d = self._stopSlot(slot, timeout)
        d.addCallback(self._handleUnfinished, reassign)
        d.addCallback(self._afterDetach)
        return d

    def _afterDetach(self, result: list[Task]) -> list[Task]:
        self._dispatch()
        self.checkDrained()
        return result

    def _crashSlot(self, slot: _Slot) -> list[Task]:
        try:
            slot.worker.crash()
        except Exception:
            log.exception("Worker %r failed to crash", slot.worker)
        # Whatever the worker says, every attempt still in flight on it is
        # unfinished as far as the queue is concerned.
        return self._clearInflight(slot)

    def _stopSlot(self, slot: _Slot, timeout: float | None) -> Deferred[list[Task]]:
        slot.stopping = True
        result: Deferred[list[Task]] = Deferred()
        timer = None

        def stopped(_: object) -> None:
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
        if timeout is not None:
            timer = self._reactor.callLater(timeout, tooSlow)
        stopD.addBoth(stopped)
        return result

    def _handleUnfinished(self, unfinished: list[Task], reassign: bool) -> list[Task]:
        calls = []
        tasks: list[Task] = []  # (what the caller gets: a task for each call of a group)
        for task in unfinished:
            group = getattr(task, "owner", None)
            if group.__class__ is _Group:
                members = self._closeGroup(group)
                calls.extend(members)
                tasks.extend(Task(c.f, c.args, c.kw, callID=c.callID) for c in members)
                continue
            tasks.append(task)
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
        return [] if reassign else tasks

    def _callForAttempt(self, task: Task) -> _Call | None:
        for call in self.pending:
            if call.attempt is task:
                return call
        return None

    # ------------------------------------------------------------ calls

    def submit(self, call: _Call) -> _Call:
        """Queue *call*, or hand it to a worker at once."""
        call.callID = nextCallID()
        self.pending.add(call)
        scheduler = self.scheduler
        if (
            not scheduler.count
            and not self._dispatching
            and scheduler.vacant()
            and not (call.doNext or call.doLast)
        ):
            # Fast path: nothing is queued, so this call is what the scheduler
            # would pop next; offer it to the least loaded ready worker without
            # a push, a pop and a dispatch pass.
            best = None
            for slot in self._slotList:
                if slot.ready:
                    if not slot.inflight:
                        best = slot  # idle: none is less loaded
                        break
                    if best is None or len(slot.inflight) < len(best.inflight):
                        best = slot
            if best is not None:
                self._dispatching = True
                try:
                    if best.inflight or call.series is not None or not best.attached:
                        taken = self._offer(best, call)
                    else:
                        # (What _offer does with a call without a series for
                        # an idle worker, inlined: once per call that finds
                        # a worker idle, as each of a sequence of calls does.)
                        call.seq = scheduler.ticket()
                        self._runOn(best, call)
                        taken = True
                finally:
                    self._dispatching = False
                if taken:
                    if self._redispatch and scheduler.count:
                        self._dispatch()  # something was queued meanwhile (a retry)
                    return call
        if self._orphaned is not None and not self._slotList:
            self._finish(call, Failure(errors.WorkerError(f"{call.describe()} {self._orphaned}")))
            return call
        # The call is its own entry (push sets its seq).
        call.entry = scheduler.push(call, call.series, call.niceness, call.doNext, call.doLast)
        if scheduler.count > _gcpause.BURST and self._gcHold is None:
            self._gcHold = _gcpause.hold(self._progress)
        if self._dispatching:
            self._redispatch = True
        else:
            # A burst queues most calls while every worker is full: then no
            # dispatch pass (what _dispatch would find, without its call).
            for slot in self._slotList:
                if slot.ready:
                    self._dispatch()
                    break
        return call

    def withdraw(self, call: _Call) -> bool:
        """
        Take back *call* if no worker has taken it: it fails with
        `errors.TaskCancelled`. False if it is no longer queued.
        """
        if call.done or call.entry is None:
            return False
        self._finish(
            call,
            Failure(errors.TaskCancelled(f"{call.describe()}: withdrawn before it started")),
        )
        if self._gcHold is not None:
            self._checkBacklog()
        self.checkDrained()
        return True

    def checkDrained(self) -> None:
        """Fire the `drained` waiters if no call is unfinished, or no worker left."""
        if self._drainWaiters and (not self.pending or not self.slots):
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                d.callback(None)

    def drained(self) -> Deferred[None]:
        """Fires once every call has finished, or no worker is left to run them."""
        d: Deferred[None] = Deferred()
        self._drainWaiters.append(d)
        self.checkDrained()
        return d

    def abandon(
        self,
        why: str,
        error: type[Exception] = errors.QueueRunError,
        retried: str | None = None,
    ) -> None:
        """
        Fail every unfinished call with *error* (`errors.QueueRunError`): it
        *why*; with *retried*, a call that an earlier attempt ran (it timed
        out, or its worker was lost) says *retried* instead.
        """
        if self._stallTimer is not None:
            if self._stallTimer.active():
                self._stallTimer.cancel()
            self._stallTimer = None
        for call in self.scheduler.drain():
            call.entry = None
        if self._gcHold is not None:
            self._checkBacklog()
        for call in list(self.pending):
            self._closeAttempt(call)
            text = retried if retried is not None and (call.timeouts or call.losses) else why
            self._finish(call, Failure(error(f"{call.describe()} {text}")))

    # ------------------------------------------------------------ dispatch

    def _checkBacklog(self) -> None:
        """While holding full collections off: let go once the backlog is small."""
        if self.scheduler.count <= _gcpause.LOW:
            token, self._gcHold = self._gcHold, None
            if token is not None:
                _gcpause.release(token)

    def _progress(self) -> tuple[int, int]:
        """What moves while this queue makes progress (`_gcpause` polls it)."""
        scheduler = self.scheduler
        return scheduler.virtualTime, scheduler.count

    def _requeue(self, call: _Call) -> None:
        """Put *call* back at the front, in its original place among retries."""
        call.entry = self.scheduler.pushFront(call, call.series, call.seq)

    def _dispatch(self) -> None:
        """Give every ready worker the best task it may run."""
        if self._dispatching:
            self._redispatch = True
            return
        scheduler = self.scheduler
        if self._gcHold is not None and scheduler.count <= _gcpause.LOW:
            self._checkBacklog()
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
                            # The only ready worker: fill it (until it is
                            # full, it stalls or nothing is left for it)
                            # without a pass for each task. Anything else
                            # meanwhile (another worker ready, a retry) sets
                            # _redispatch and hands back to the passes.
                            while (
                                slot.ready
                                and scheduler.count
                                and not self._redispatch
                                and self._offer(slot)
                            ):
                                pass
                        again = again or slot.ready
                if not (again or self._redispatch):
                    break
        finally:
            self._dispatching = False
            if self._gcHold is not None and scheduler.count <= _gcpause.LOW:
                self._checkBacklog()

    def _offer(self, slot: _Slot, call: _Call | None = None) -> bool:
        """
        Give *slot* a task if it may take one now: *call*, a new call that
        nothing queued goes before (if its series lets *slot* run it), else
        the best queued task for *slot*. True if it took one.
        """
        if not slot.ready or not slot.attached:
            return False
        inflight = slot.inflight
        if inflight and slot.reportsStart:
            # The stall rule: a pipelining worker gets more tasks while it
            # works, to hide the hand-off. Behind a long task that only delays
            # them, and commits them to that worker before the scheduler's
            # later choices (niceness, new series) can apply: so a worker whose
            # running task started more than PIPELINE_PATIENCE ago gets no more.
            started = next(iter(inflight)).startedAt
            if started is not None and self._seconds() - started > PIPELINE_PATIENCE:
                return False
            if self._stallTimer is None and slot.handBack is not None:
                # (The task handed out now waits behind another there.)
                self._stallTimer = self._reactor.callLater(HANDBACK_PATIENCE, self._checkStalls)
        scheduler = self.scheduler
        # The held series whose next task this slot may take: those it holds,
        # if its worker runs its tasks one at a time in the order given.
        held = slot.held
        mine: Collection[Hashable] = ()
        if held:
            inOrder = slot.inOrder
            if inOrder is None:  # (a property of the worker's: asked each time)
                inOrder = getattr(slot.worker, "runsInOrder", False)
            if inOrder:
                mine = held
        # A series runs in sequence: one slot at most has tasks of it in
        # flight, and its count there (slot.held) says when it is held.
        if call is None:
            call = scheduler.pop(slot.qualified, (), mine, held)  # (and holds its series)
            if call is None:
                return False
            if (
                slot.groupLimit is not None
                and scheduler.count
                and self.plainResults
                and _groupable(call)
                and self._runGroup(slot, call)
            ):
                return True
        else:
            series = call.series
            if series is not None:
                if not (
                    scheduler.mayRun(series, slot.qualified)
                    and (not scheduler.isHeld(series) or series in mine)
                ):
                    return False  # not on this worker, or not yet: queue it
                if call.inSequence:
                    scheduler.hold(series, held)
            call.seq = scheduler.ticket()
        self._runOn(slot, call)
        return True

    def _checkStalls(self) -> None:
        """
        Tasks wait in a worker behind a running one: once that has run longer
        than `HANDBACK_PATIENCE`, the worker hands them back (if the queue has
        another), and the first worker free takes them, as from one shared
        queue. Without this, a task lined up behind one that waits for it (a
        thread pool's task that submits to its own pool and waits) would wait
        for ever while other workers idle. The calls a running batch task has
        not started (`asynqueue._support._batch`) come back alike, if its
        worker can stop it.
        """
        self._stallTimer = None
        now = self._seconds()
        stalled: list[_Slot] = []
        soonest: float | None = None
        for slot in self._slotList:
            inflight = slot.inflight
            if not inflight or slot.handBack is None:
                continue
            head = next(iter(inflight))
            if len(inflight) < 2 and not isBatch(head.callTuple[1]):
                continue  # (nothing waits behind it, and nothing in it)
            started = head.startedAt
            if started is not None and now - started > HANDBACK_PATIENCE:
                stalled.append(slot)
                continue
            # Waiting behind one that may stall yet: look again then.
            due = HANDBACK_PATIENCE if started is None else started + HANDBACK_PATIENCE - now
            soonest = due if soonest is None else min(soonest, due)
        if stalled and len(self._slotList) > 1:
            for slot in stalled:
                if slot.attached and slot.handBack is not None:
                    try:
                        slot.handBack()
                    except Exception:
                        log.exception(
                            "Worker %r failed to hand back its waiting tasks", slot.worker
                        )
        elif stalled:
            soonest = HANDBACK_PATIENCE  # the only worker: again later (one may be attached)
        if soonest is not None and self._stallTimer is None:
            self._stallTimer = self._reactor.callLater(max(soonest, 0.001), self._checkStalls)

    def _clearInflight(self, slot: _Slot) -> list[Task]:
        """Forget every attempt in flight on *slot*; returns them."""
        release = self.scheduler.release
        for call in slot.inflight.values():
            if call.series is not None:
                release(call.series, slot.held)
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
        series = call.series
        if call.plain and not (call.timeouts or call.losses):
            # Task(f, args, kw, callID=..., clock=...) minus its checks and
            # the defaults its class provides (a third of the cost). series
            # is set even when None: every task's attributes then come in one
            # order, and its instance dict keeps the shared, compact layout.
            # (A plain call has no timeout.)
            task = _newTask(Task)
            task.callTuple = (call.f, call.args, call._kw or {})  # (call.kw, minus a call)
            task.callID = call.callID
            task._clock = self._seconds
            task.series = series
            if call.raw is not None:
                task.raw = call.raw
            task.owner = call
            task.onReport = self._reporter
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
                series,
                call.timeout,
                niceness=call.niceness,
                doNext=call.doNext,
                doLast=call.doLast,
                raw=call.raw,
                consumer=call.consumer,
                callID=call.callID,
                attempt=call.timeouts + call.losses + 1,
                clock=self._seconds,
            )
            task.owner = call
            task.onReport = self._reporter
            if call.timeout is not None:
                if not getattr(slot.worker, "reportsStart", False):
                    task.startedAt = self._seconds()
                call.timer = self._reactor.callLater(call.timeout, self._timerFired, task, call)
        call.attempt = task
        call.slot = slot
        slot.inflight[task] = call
        self._hand(slot, task)

    def _hand(self, slot: _Slot, task: Task) -> None:
        """Give *task*, in *slot*'s inflight already, to its worker (see `_runOn`)."""
        if self._stallTimer is None and slot.handBack is not None:
            args = task.callTuple[1]
            if args and type(args[0]) is Batch:  # (`isBatch`, inlined: once per task)
                # Its calls not started yet can come back: see `_checkStalls`.
                self._stallTimer = self._reactor.callLater(HANDBACK_PATIENCE, self._checkStalls)
        slot.bounced = False
        try:
            readyD = slot.worker.run(task)
        except Exception:
            task.callback((Status.ERROR, Failure()))
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
        self.workerReady(slot)

    def _onReady(self, _: object, slot: _Slot) -> None:
        self.workerReady(slot)

    def _onReadyFailed(self, failure: Failure, slot: _Slot) -> None:
        log.error("Worker %r failed while running a task: %s", slot.worker, failure.value)
        if slot.attached:
            self.detach(slot, reassign=True, crash=True)

    def workerReady(self, slot: _Slot) -> None:
        """*slot*'s worker may take a task: give it one if any is queued."""
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
                # (its next task may start anywhere after the last one)
                self.scheduler.release(call.series, slot.held)
        return task

    def _onReport(self, task: Task, statusResult: Report) -> None:
        """
        A worker reported on *task*, an attempt at a call: the call's result,
        or a retry after a timeout (``t``) or a task not run (``d``).
        Every attempt reports here, once (see `Task.callback`).
        """
        call: _Call = task.owner  # type: ignore[assignment]  # (set by _runOn)
        status: Status | str
        try:
            code, result = statusResult
            # (A member's hash is a Python-level call: the usual one first.)
            status = RESULT if code is RESULT else STATUS_BY_CODE[code]
        except (TypeError, ValueError, KeyError):  # not a pair, or not a status
            status, result = _unpackStatus(statusResult)
        if call.__class__ is _Group:
            self._groupReport(task, status, result)
            return
        if call.attempt is not task or call.done:
            _dropLate(result)  # an attempt the queue gave up on
            return
        slot = call.slot
        if (status is RESULT or status is NONE) and self.plainResults and call.timer is None:
            # The hot path: what _closeAttempt and _finish would do for a
            # call without a timeout whose result taskDone would pass as it
            # is (inlined: once per call).
            call.attempt = None
            if slot is not None:
                call.slot = None
                if slot.inflight.pop(task, None) is not None and call.series is not None:
                    self.scheduler.release(call.series, slot.held)
            call.done = True
            self.pending.discard(call)
            if call.entry is not None:
                self.scheduler.remove(call.entry)
                call.entry = None
            if status is NONE:
                call.callback(None)
            elif Deferred in result.__class__.__mro__:  # (see _finish)
                call.chained = result
                result.chainDeferred(call)
            else:
                call.callback(result)
            if self.scheduler.count:
                # (`_dispatch`, unless no worker is ready: the usual case in
                # a burst, which refills the workers once per batch of reports)
                for ready in self._slotList:
                    if ready.ready:
                        self._dispatch()
                        break
                else:
                    if self._gcHold is not None:
                        self._checkBacklog()  # (as `_dispatch` would)
            if self._drainWaiters:
                self.checkDrained()
            return
        self._closeAttempt(call)
        if (status is RESULT or status is NONE) and self.plainResults:
            self._finish(call, result if status is RESULT else None)
        elif status is TIMEOUT:
            self._timedOut(call, task, slot, notifyWorker=False)
        elif status is NOT_RUN:
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
        if self.scheduler.count:
            self._dispatch()
        if self._drainWaiters:
            self.checkDrained()

    # ------------------------------------------------------------ groups

    def _runGroup(self, slot: _Slot, first: _Call) -> bool:
        """
        Give *slot* *first*, just popped, and the plain calls that the
        scheduler would hand out next, as one task (a group, see the module
        docstring). False, changing nothing, if no other call goes with
        *first* now.

        The series of the calls after *first* are held for the group alone
        (``group.held``, not the slot's): no other call of theirs is handed
        out until the group's calls of that series have left it, so those
        that come back (the group stopped early) go before any later one.
        *first*'s series is the slot's (it may have come as the slot's next
        call of it), and the group counts as a task of that series: not
        handed back, as a series' task is not (see `IWorker`).
        """
        scheduler = self.scheduler
        limit = min(slot.groupLimit(), 1 + scheduler.count // len(self._slotList))  # type: ignore[misc]
        if limit < 2:
            return False
        members = [first]
        popIf = scheduler.popIf
        held: dict[Hashable, int] = {}  # (the group's hold on its calls' series)
        while len(members) < limit:
            # (One call per series at most: with none held as "mine", a
            # series taken is held, so its next call is not at hand.)
            call = popIf(_groupable, (), held)  # (and holds its series)
            if call is None:
                break
            members.append(call)
        if len(members) < 2:
            return False
        slot.ready = False
        group = _Group(members, slot, held)
        calls = Batch([(c.f, c.args, c._kw or _NO_KEYWORDS) for c in members])
        calls.giveBack = lambda start, done, own=False: self._groupGiveBack(group, start, done, own)
        task = _newTask(Task)
        task.callTuple = (slot.worker.groupRunner, (calls,), {})  # type: ignore[attr-defined]
        task.callID = nextCallID()
        task._clock = self._seconds
        task.series = first.series
        task.owner = group
        task.onReport = self._reporter
        group.task = task
        for call in members:
            call.entry = None
            call.group = group
        slot.inflight[task] = group  # type: ignore[assignment]
        self._hand(slot, task)
        return True

    def _groupReport(self, task: Task, status: Status | str, result: Any) -> None:
        """The report of a group's task: each call's outcome, or why none came."""
        group: _Group = task.owner  # type: ignore[assignment]
        slot = group.slot
        if group.closed:
            _dropLate(result)  # (its worker was detached meanwhile)
            return
        if group.own is not None:
            # It ended after this call, whose outcome is the task's own.
            self._memberReport(group, group.members[group.own], status, result)
            self._noOutcome(self._closeGroup(group))
        elif status is RESULT and _isOutcomes(result):
            outcomes, seconds = result
            ran = group.base + len(outcomes)
            for outcome in outcomes:
                if group.base >= group.end:
                    break
                self._memberReport(group, group.members[group.base], *group.decode(outcome))
                group.base += 1
            self._noOutcome(self._closeGroup(group))
            groupRan = getattr(slot.worker if slot is not None else None, "groupRan", None)
            if groupRan is not None:
                groupRan(ran, seconds)
        elif status is NOT_RUN:
            if slot is not None:
                slot.bounced = True
            for i, call in enumerate(self._closeGroup(group)):
                if i or task.innocent:
                    self._requeue(call)  # (not run)
                else:
                    self._lost(call, result)  # (the call it was running, if any)
        else:
            # The group failed as a whole (it could not be sent, say): each
            # of its calls runs alone, to meet its own fate.
            _dropLate(result)
            for call in self._closeGroup(group):
                call.alone = True
                self._requeue(call)
        if self.scheduler.count:
            self._dispatch()
        if self._drainWaiters:
            self.checkDrained()

    def _groupGiveBack(self, group: _Group, start: int, done: list[Any], own: bool) -> None:
        """
        (The group's `Batch.giveBack`) Its calls from *start* on will not run
        where it went: back to the front of the queue. *done*: the outcomes
        of its calls run so far and not yet settled. *own*: the call before
        *start* ran, and its outcome is the task's own.
        """
        if group.closed:
            return
        members = group.members
        for outcome in done:
            if group.base >= group.end:
                break
            self._memberReport(group, members[group.base], *group.decode(outcome))
            group.base += 1
        if start < group.end:
            back = members[start : group.end]
            group.end = start
            for call in back:
                if call.group is group:
                    self._leaveGroup(group, call)
                    if not call.done:
                        self._requeue(call)
        if own and 0 < start <= len(members):
            group.own = start - 1  # (its outcomes before may still be on their way)
        if self.scheduler.count:
            self._dispatch()
        if self._drainWaiters:
            self.checkDrained()

    def _closeGroup(self, group: _Group) -> list[_Call]:
        """Forget *group*'s task; returns its calls not settled, none in it any more."""
        group.closed = True
        slot = group.slot
        if slot is not None:
            group.slot = None
            slot.inflight.pop(group.task, None)  # type: ignore[arg-type]
        unsettled = []
        for call in group.members[group.base : group.end]:
            if call.group is group:
                self._leaveGroup(group, call)
                if not call.done:
                    unsettled.append(call)
        # No cycle left to outlive it (task, batch, its giveBack, me): a
        # burst's groups, and the calls in them, go as soon as they are done,
        # not at a full collection (which a burst holds off).
        task = group.task
        if task is not None:
            group.task = None
            task.callTuple[1][0].giveBack = None
        group.members = []
        return unsettled

    def _noOutcome(self, calls: list[_Call]) -> None:
        """Calls of a group that ended with no outcome for them (a bug): they fail, not hang."""
        for call in calls:
            self._finish(call, Failure(errors.WorkerError(f"{call.describe()}: no outcome came")))

    def _leaveGroup(self, group: _Group, call: _Call) -> None:
        """*call* is no longer in *group*: its series (if any) is not held for it there."""
        call.group = None
        if call.series is not None:
            holder = group.slotHeld if call is group.members[0] else group.held
            self.scheduler.release(call.series, holder)

    def _memberReport(self, group: _Group, call: _Call, status: Status | str, result: Any) -> None:
        """A call of *group* ran: its outcome, as if it had run alone."""
        if call.done or call.group is not group:
            _dropLate(result)  # (cancelled meanwhile)
            return
        self._leaveGroup(group, call)
        if status is NOT_RUN or status is TIMEOUT:  # (not from a call: none gives these)
            self._lost(call, result)
            return
        if (status is RESULT or status is NONE) and self.plainResults:
            outcome = result if status is RESULT else None
        else:
            try:
                outcome = self.taskDone((status, result), group.task, call=call)
            except Exception:
                outcome = Failure()
        self._finish(call, outcome)

    def _timerFired(self, task: Task, call: _Call) -> None:
        call.timer = None
        if call.attempt is not task or call.done:
            return
        now = self._seconds()
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
        self.checkDrained()

    def _timedOut(self, call: _Call, task: Task, slot: _Slot | None, notifyWorker: bool) -> None:
        call.timeouts += 1
        final = call.timeouts >= MAX_TIMEOUTS
        if not final:
            # Requeued before the worker hears of it: the tasks of its series
            # that the worker hands back now must not overtake the retry.
            self._requeue(call)
        if notifyWorker and slot is not None:
            self._tellWorker(slot, "timedOut", task)
        if final:
            # After the worker has freed itself: the caller may use it at once.
            self._finish(
                call,
                Failure(
                    errors.TimeoutError(
                        f"{call.describe()} timed out after {call.timeout} seconds,"
                        f" {call.timeouts} times"
                    )
                ),
            )

    def cancel(self, call: _Call) -> None:
        """
        The canceller of a call's Deferred. A queued call is withdrawn (it
        never runs, and its series moves on); a running one is given up on
        and its worker told to stop it (``cancelled``, else ``timedOut``);
        a result still arriving (a consumer being fed) is cancelled. The
        Deferred fails with ``CancelledError``, as Deferred.cancel would.
        """
        if call.done:
            chained = call.chained
            if chained is not None:
                chained.cancel()
            return
        group = call.group
        if group is not None:
            # In a group: out of it (its outcome, if it comes, is dropped),
            # and the group stops, if its worker can, so that it does not run.
            self._leaveGroup(group, call)
            self._finish(call, Failure(CancelledError()))
            slot = group.slot
            stopGroup = getattr(slot.worker, "stopGroup", None) if slot is not None else None
            # (Not one whose first call has a series: see _runGroup.)
            if stopGroup is not None and not group.closed and group.members[0].series is None:
                try:
                    stopGroup(group.task)
                except Exception:
                    log.exception("Worker %r failed to stop a group", slot.worker)
            self.checkDrained()
            return
        slot = call.slot
        task = self._closeAttempt(call)
        if task is not None and slot is not None:  # (a worker being detached stops it too)
            name = "cancelled" if hasattr(slot.worker, "cancelled") else "timedOut"
            self._tellWorker(slot, name, task)
        self._finish(call, Failure(CancelledError()))
        if self.scheduler.count:
            self._dispatch()  # (which checks the backlog, if held)
        elif self._gcHold is not None:
            self._checkBacklog()
        self.checkDrained()

    @staticmethod
    def _tellWorker(slot: _Slot, hookName: str, task: Task) -> None:
        """Call the worker's optional hook *hookName* (``timedOut``, ``cancelled``) with *task*."""
        hook = getattr(slot.worker, hookName, None)
        if hook is not None:
            try:
                hook(task)
            except Exception:
                log.exception("Worker %r failed in %s(%r)", slot.worker, hookName, task)

    def _lost(self, call: _Call, reason: object) -> None:
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

    def _finish(self, call: _Call, outcome: Any) -> None:
        """Fire the caller's Deferred, exactly once."""
        if call.done:
            return
        call.done = True  # no longer pending, nor queued
        self.pending.discard(call)
        if call.entry is not None:
            self.scheduler.remove(call.entry)
            call.entry = None
        # isinstance(outcome, Deferred) by the MRO: Deferred is an ABC
        # (Awaitable), whose isinstance costs a Python-level call.
        if Deferred in outcome.__class__.__mro__:
            # Chunked results and consumer runs finish later.
            call.chained = outcome
            outcome.chainDeferred(call)
        else:
            call.callback(outcome)


# A group's calls with no keywords of their own share this (never changed).
_NO_KEYWORDS: dict[str, Any] = {}


def _groupable(call: _Call) -> bool:
    """Whether *call* may run in a group: plain (a series or not), never retried."""
    if not call.plain or call.raw is not None:
        return False
    if call.timeouts or call.losses or call.alone:
        return False
    args = call.args
    return not (args and type(args[0]) is Batch)  # (a batch of its own: see _support._batch)


def _isOutcomes(result: Any) -> bool:
    """Whether a group task's result is its outcomes and seconds (`runCalls`)."""
    return type(result) is tuple and len(result) == 2 and type(result[0]) is list


class _Group:
    """
    Plain calls of a backlog that run as one task on one worker (see
    `Dispatcher`, *Groups*): ``members[base:end]`` are those whose outcomes
    are still to come there; ``own``, the index of the one whose outcome is
    the task's own (its batch ended after it).
    """

    __slots__ = (
        "base",
        "closed",
        "decode",
        "end",
        "held",
        "members",
        "own",
        "slot",
        "slotHeld",
        "task",
    )

    # (Read as a call's where a slot's tasks in flight are: a group has none.)
    series = None

    def __init__(self, members: list[_Call], slot: _Slot, held: dict[Hashable, int]) -> None:
        self.members = members
        self.slot: _Slot | None = slot
        # Who holds its calls' series: the slot the first's, the group the others'.
        self.slotHeld = slot.held
        self.held = held
        self.base = 0
        self.end = len(members)
        self.own: int | None = None
        self.closed = False
        self.decode: Any = slot.worker.groupOutcome  # type: ignore[attr-defined]
        self.task: Task | None = None


def _dropLate(result: object) -> None:
    """
    Drop the result of an attempt the queue gave up on. A Deferred one (an
    iterator's first batch, say, failing because its worker was crashed)
    must not log its failure as unhandled: nobody waits for it.
    """
    if isinstance(result, Deferred):
        result.addErrback(lambda _: None)


def _load(slot: _Slot) -> int:
    """How many attempts *slot* has in flight (the dispatcher's sort key)."""
    return len(slot.inflight)

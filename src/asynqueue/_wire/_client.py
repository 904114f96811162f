"""
The asking side of the wire protocol, for one connection: `WireClient`.

A process worker talks to its child, and a remote worker to its server, with
the same messages (`asynqueue._wire._codec`): CALLS out, RESULTS back;
NEXT out, ITEMS back for iterator results; CLOSE for iterators given up on.
`WireClient` is that conversation, without the transport or the life cycle
of what is at the other end:

- `submit` queues a call. A call after a pause goes out at once; calls
  that follow it closely (a burst) wait for the end of the reactor turn and
  go out together as one CALLS message (`flush`).
- RESULTS report each task (``task.callback``) with the result unpickled,
  or kept pickled for a call submitted with a *relay* (a server running a
  call it received sends the result on as it is); those of one read of
  the channel together, after telling the worker once that it has room
  (`WireClient.holdSends`). An iterator result waits
  for its first ITEMS batch and becomes a `Deferator` over a
  `_RemoteSource`, which asks for more with NEXT.
- A Deferator dropped unfinished has its iterator closed on the other side
  (a finalizer sends CLOSE).

A subclass provides the channel (an object with ``send(buffers)`` and
``connected``) and these hooks: ``settle()`` (after results or items were
handled), ``retireRequested()`` (the other side asked to be retired), and
``location()`` (text for reprs). Its worker (``self.worker``) provides
``_taskIDs``, ``batchItems``, ``_noteRuns(runs, now)`` and
``_checkReady()``.
"""

from __future__ import annotations

import logging
import pickle
import weakref
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from .. import errors
from .._core._task import Task
from .._iter._deferator import Deferator
from .._support._batch import isBatch
from .._support._status import ERROR, ITERATOR, NONE, NOT_RUN, RESULT, Status
from ._codec import (
    CALLS,
    CLOSE,
    ITEMS,
    NEXT,
    PLACED,
    REST,
    RESULTS,
    STARTED,
    STATUS_OF_MEMBER,
    dumpsError,
    dumpsSmall,
    loads,
    loadsError,
)
from ._framing import Message, encode
from ._relay import PickledError, PickledResult

__all__ = ["BURST_GAP", "BurstSender", "WireClient", "remoteFailure", "statusResult"]

log = logging.getLogger("asynqueue")

#: Seconds: a message sent less than this long after the previous one waits
#: for the end of the reactor turn, to go out with the others of its burst.
BURST_GAP = 50e-6


def remoteFailure(
    payload: list[Any], errorType: type[errors.WorkerError] = errors.WorkerError
) -> Failure:
    """A Failure of the exception the other side reported (see ``dumpsError``)."""
    try:
        error = loadsError(payload)
    except Exception as e:
        return Failure(errorType(f"the error report was unreadable: {e!r}"))
    exc = error.exception
    if exc is not None:
        try:
            exc.remoteTraceback = error.traceback  # type: ignore[union-attr]
        except Exception:
            exc = None
    if exc is None:
        exc = errorType(
            f"{error.typeName}: {error.message}",
            remoteTraceback=error.traceback,
            typeName=error.typeName,
        )
    return Failure(exc)


class _Members(list):  # type: ignore[type-arg]
    """A report: outcomes of calls of a group task (see `settleMembers`), in turn with others."""

    __slots__ = ()


class _Rest:
    """A report: a running batch stopped early (REST), for its owner (`Batch.giveBack`)."""

    __slots__ = ("done", "own", "start")

    def __init__(self, start: int, done: list[Any], own: bool) -> None:
        self.start, self.done, self.own = start, done, own

    def giveBack(self, task: Task) -> None:
        giveBack = task.callTuple[1][0].giveBack
        if giveBack is None:
            return  # (its owner is done with it meanwhile)
        if self.own:
            # (Its last call's outcome is the task's own result, to come.)
            giveBack(self.start, self.done, own=True)
        else:
            giveBack(self.start, self.done)


def settleMembers(task: Task, outcomes: list[Any]) -> None:
    """Hand the outcomes of calls of group task *task* to its owner (`Batch.giveBack`)."""
    args = task.callTuple[1]
    giveBack = args[0].giveBack if isBatch(args) else None
    if giveBack is None:
        log.error("Outcomes came for calls of task %r, which runs no group", task)
        return
    try:
        giveBack(len(args[0]), outcomes)
    except Exception:
        log.exception("Settling the calls of a group failed")


def statusResult(
    status: str,
    payload: list[Any],
    errorType: type[errors.WorkerError] = errors.WorkerError,
    relay: bool = False,
    filling: Any = None,
) -> tuple[Status, Any]:
    """
    ``(status, result)`` for a task, from a RESULTS entry. With *relay*, a
    result or error stays pickled (`PickledResult`, `PickledError`); a
    relayed result may still be arriving (its *filling*).
    """
    if status == RESULT:
        if relay:
            return RESULT, PickledResult(payload, filling)
        try:
            return RESULT, loads(payload)
        except Exception as e:
            return ERROR, Failure(
                errorType(f"could not unpickle the result: {type(e).__name__}: {e}")
            )
    if status == NONE:
        return NONE, None
    if status == ERROR:
        if relay:
            return ERROR, Failure(PickledError(payload))
        return ERROR, remoteFailure(payload, errorType)
    return ERROR, Failure(errorType(f"unknown status {status!r} from the other side"))


# The report of a call that returned None (a tuple: reported as it is).
_NONE_REPORT = (NONE, None)
_HANDED_BACK = (NOT_RUN, "handed back unrun from behind a long call")


class _Attempt:
    """
    A task sent to the other side (``task`` is None for a replayed update),
    and the *relay* it was submitted with, if any (see `WireClient.submit`).
    """

    __slots__ = ("relay", "sentAt", "started", "task", "taskID")

    def __init__(self, task: Task | None, taskID: int, sentAt: float, relay: Any) -> None:
        self.task = task
        self.taskID = taskID
        self.sentAt = sentAt
        self.relay = relay
        self.started = False

    def markStarted(self) -> None:
        if not self.started:
            self.started = True
            task = self.task
            if task is not None:
                task.started()
                relay = self.relay
                if relay is not None and relay.onStart is not None:
                    relay.onStart(task)


class _RemoteSource:
    """A `Deferator` source over an iterator that the other side holds."""

    def __init__(self, client: WireClient, iterID: int, maxItems: int) -> None:
        self.client = client
        self.iterID = iterID
        self.maxItems = maxItems
        # Ask for the next batch while one is still in hand: double buffering.
        self.lowWater = maxItems
        self.closed = False

    def fetch(self) -> Deferred[Any]:
        return self.client.requestItems(self.iterID, self.maxItems)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.closeIterator(self.iterID)


def _forgetIterator(clientRef: weakref.ref[WireClient], iterID: int) -> None:
    """Finalizer of an abandoned Deferator: have the other side drop the iterator."""
    client = clientRef()
    if client is not None:
        client.closingIDs.append(iterID)  # an append is safe from a finalizer
        try:
            client.reactor.callFromThread(client.processClosing)
        except Exception:
            pass


class BurstSender:
    """
    Mixin: what is queued goes out at once after a pause, and the rest of a
    burst (what comes within `BURST_GAP` of the last send) together at the
    end of the reactor turn, as one message; what is queued while the
    channel reads goes out, as one message, when that read ends
    (`holdSends`). The class provides ``reactor``.
    """

    reactor: Any
    _sendCall: Any = None
    _lastSent = 0.0
    _holding = False
    _held: Callable[[], None] | None = None

    def holdSends(self, hold: bool) -> None:
        """
        The channel reads (True) or has read what there was (False): what
        handling those messages queues goes out after them, in one message
        (the answers to a batch of results, one call each, in one CALLS).
        """
        if hold:
            self._holding = True
            return
        self._holding = False
        send, self._held = self._held, None
        if send is not None:
            self._lastSent = perf_counter()
            send()

    def sendSoon(self, send: Callable[[], None]) -> None:
        """Call *send()* now after a pause, else once at the end of this reactor turn."""
        if self._sendCall is None:
            if self._holding:
                self._held = send
                return
            now = perf_counter()
            if now - self._lastSent > BURST_GAP:
                self._lastSent = now
                send()
            else:
                self._sendCall = self.reactor.callLater(0, send)

    def unscheduleSend(self) -> None:
        """Forget a send scheduled by `sendSoon` (it is being done now, or not at all)."""
        self._held = None
        call, self._sendCall = self._sendCall, None
        if call is not None and call.active():
            call.cancel()


class WireClient(BurstSender):
    """
    One connection's calls and iterators in flight (see the module docstring).

    Attributes:
        errorType: the exception for errors of this side's own making (an
            unreadable result, a lost iterator), and for remote exceptions
            that cannot be rebuilt.
        orderedStart: the other side runs calls one at a time, in order, so
            the oldest call in flight is the one running (a child process).
            Otherwise a call counts as started when a STARTED message says so.
    """

    errorType: type[errors.WorkerError] = errors.WorkerError
    orderedStart = False

    def __init__(self, worker: Any, reactor: Any) -> None:
        self.worker = worker
        self.reactor = reactor
        # Tasks sent and not yet answered, in the order they were sent.
        self.inflight: dict[int, _Attempt] = {}
        self.outbox: list[tuple[int, list[Any], int]] = []
        # Iterator results waiting for their first batch.
        self.firstBatch: dict[int, tuple[_Attempt, _RemoteSource]] = {}
        self.sources: dict[int, _RemoteSource] = {}
        self.itemWaiters: dict[int, deque[Deferred[Any]]] = {}
        self.closingIDs: list[int] = []
        # Results read and not yet reported (while the channel reads).
        self._reports: list[tuple[Task, Any]] = []
        self._reportsDue = False
        self.sent = 0
        self.helloed = False
        self.channel: Any = None

    def holdSends(self, hold: bool) -> None:
        """
        As `BurstSender.holdSends`; besides, the results of one read are
        reported together when it ends (in the order they came): the worker
        is told once that it has room, then their callbacks run, and what
        they led to goes out in one message. After a lone result, the refill
        goes out before its callbacks, which are no longer held: a call they
        make goes out at once after a pause (a lone round trip does not wait
        for the rest of their work).
        """
        if hold:
            self._holding = True
        elif self._reportsDue:
            # A lone result: its callbacks run after the refill went out, no
            # longer held. Several: held until they ran, like the refill
            # (the dispatcher may give the worker tasks only as their
            # callbacks run: see ``PIPELINE_PATIENCE``).
            try:
                self._reportHeld(release=len(self._reports) == 1)
            finally:
                BurstSender.holdSends(self, False)  # (never left holding)
        else:
            BurstSender.holdSends(self, False)

    # ------------------------------------------------------------ hooks

    def settle(self) -> None:
        """Results or items were handled: the worker may have room, or be done."""
        self.worker._checkReady()

    def retireRequested(self) -> None:
        """The other side asked to be replaced (a child over its memory limit)."""

    def location(self) -> str:
        """Where the calls run, for reprs: ``"in process 123"``."""
        return ""

    def placedParts(self, payload: list[Any], where: Any) -> tuple[list[Any], Any]:
        """
        A result's parts with those that the other side places in shared
        memory filled in, and their `Filling` (PLACED messages advance it).
        """
        raise errors.WireError("the other side placed a result where this side cannot read it")

    def placedProgress(self, filled: int) -> None:
        """A PLACED message: the shared memory is written up to *filled*."""

    def forgottenAnswered(self, taskID: int, status: str, extra: Any) -> None:
        """
        A result came for a task given up on (`forget`): an iterator it
        made is closed at once on the other side.
        """
        if status == ITERATOR and self.channel is not None and self.channel.connected:
            self.channel.send(encode(CLOSE, [dumpsSmall([extra])]))

    # ------------------------------------------------------------ messages

    def handleMessage(self, message: Message) -> bool:
        """Handle RESULTS, ITEMS and STARTED; False for any other kind."""
        kind = message.kind
        if kind == RESULTS:
            self._results(message.parts, message.filling)
            return True
        if self._reportsDue:
            self._reportHeld()  # results reported in the order they came
        if kind == ITEMS:
            self._items(message.parts)
        elif kind == PLACED:
            self.placedProgress(pickle.loads(message.parts[0]))
        elif kind == STARTED:
            for taskID in pickle.loads(message.parts[0]):
                attempt = self.inflight.get(taskID)
                if attempt is not None:
                    attempt.markStarted()
        elif kind == REST:
            self._batchRest(message.parts)
        else:
            return False
        return True

    def _batchRest(self, parts: list[Any]) -> None:
        """
        A running batch stopped early (REST): tell its owner which of its
        calls will not run there, with the outcomes of those done.
        """
        taskID, start, own = pickle.loads(parts[0])
        done = []
        for part in parts[1:]:
            try:
                done.append(pickle.loads(part))
            except Exception as e:  # (the child loaded it: a module missing here?)
                text = f"The outcome could not be unpickled: {type(e).__name__}: {e}"
                done.append((False, errors.WorkerError(text), ""))
        attempt = self.inflight.get(taskID)
        task = attempt.task if attempt is not None else None
        if task is None or not isBatch(task.callTuple[1]):
            return
        if task.callTuple[1][0].giveBack is None:
            # (Never asked for: see `_Child.handBack`.)
            log.error("Batch task %d ran no call from %d on; nobody to tell", taskID, start)
            return
        # In turn with the reports of this read (the outcomes of calls of a
        # group before it, say: see `_Members`).
        report = (task, _Rest(start, done, own))
        if self._holding:
            self._reports.append(report)
            self._reportsDue = True
        else:
            self._report([report])

    def wantsEarly(self, message: Message) -> bool:
        """
        A large RESULTS message whose head is in: take it now, before the
        rest arrives, if every result in it is to be relayed as it comes
        (its relay is ``early``: see `submit`).
        """
        if message.kind != RESULTS:
            return False
        try:
            entries, _ = pickle.loads(message.parts[0])
            for taskID, status, n, _, _ in entries:
                attempt = self.inflight.get(taskID)
                if attempt is None:
                    continue  # given up on: skipped either way
                relay = attempt.relay
                if relay is None or not relay.early or (n and status != RESULT):
                    return False
        except Exception:
            return False
        return True

    # ------------------------------------------------------------ tasks

    def submit(
        self, task: Task | None, parts: list[Any], flags: int, relay: Any = None
    ) -> _Attempt:
        """
        Send a call (batched with others until the end of this reactor turn).

        With a *relay* (a server's `asynqueue._wire._relay.PickledCall`),
        the result is to be sent on as it came: it is reported pickled
        (`PickledResult`, `PickledError`), and if ``relay.early``, as soon as
        its head is in, its parts (and those placed in shared memory) still
        arriving. ``relay.onStart(task)``, if set, is called when the call
        starts. What the flags ask of the other side is the caller's business.
        """
        attempt = _Attempt(task, next(self.worker._taskIDs), self.reactor.seconds(), relay)
        idle = not self.inflight
        self.inflight[attempt.taskID] = attempt
        if task is not None:
            self.sent += 1
        if idle and self.helloed and self.orderedStart:
            attempt.markStarted()
        self.outbox.append((attempt.taskID, parts, flags))
        if self._sendCall is None and self._held is None:  # (else a flush is due)
            self.sendSoon(self.flush)
        return attempt

    def flush(self) -> None:
        """Send the calls submitted so far, as one CALLS message."""
        self.unscheduleSend()
        if not self.outbox or self.channel is None or not self.channel.connected:
            return  # (what was not sent stays in the outbox: see `abandon`)
        outbox, self.outbox = self.outbox, []
        envelope = [(taskID, len(parts), flags) for taskID, parts, flags in outbox]
        allParts = [dumpsSmall(envelope)]
        for _, parts, _ in outbox:
            allParts.extend(parts)
        self.channel.send(encode(CALLS, allParts))

    def _startHead(self) -> None:
        if self.helloed:
            for attempt in self.inflight.values():
                attempt.markStarted()
                break

    def _results(self, parts: list[Any], filling: Any = None) -> None:
        worker = self.worker
        entries, retire = pickle.loads(parts[0])
        if retire:
            # Before the results' callbacks, which may send new tasks.
            self.retireRequested()
        pos = 1
        now = self.reactor.seconds()
        ordered = self.orderedStart
        errorType = self.errorType
        inflight = self.inflight
        # The results are reported together (those of a whole read, see
        # `holdSends`), after the worker was told once that it has room again.
        reports: list[tuple[Task, Any]] = []
        runs: list[tuple[float, float]] = []  # (dt, sentAt) of each call run
        for taskID, status, n, dt, extra in entries:
            payload = parts[pos : pos + n] if n else []
            pos += n
            if status in STATUS_OF_MEMBER:
                # A call of a group task, held as it ran (see `_group`): its
                # outcome goes to the group's owner, in turn with the reports.
                attempt = inflight.get(taskID)
                if attempt is not None and attempt.task is not None:
                    outcome = (STATUS_OF_MEMBER[status], payload)
                    last = reports[-1] if reports else None
                    if last is not None and last[0] is attempt.task and type(last[1]) is _Members:
                        last[1].append(outcome)
                    else:
                        reports.append((attempt.task, _Members([outcome])))
                continue
            placed = None
            if status == RESULT and extra is not None:
                # Parts placed in shared memory, still being written (given up
                # on or not: dropping them frees the memory).
                try:
                    payload, placed = self.placedParts(payload, extra)
                except Exception as e:
                    status = ERROR
                    payload = dumpsError(errorType(f"a result could not be read: {e}"))
            attempt = inflight.pop(taskID, None)
            if attempt is None:
                # Given up on (crash, kill, timeout or cancel).
                self.forgottenAnswered(taskID, status, extra)
                continue
            if ordered and inflight and self.helloed:
                # (`_startHead`, inlined) the next call has started
                for head in inflight.values():
                    if not head.started:
                        if head.relay is None and head.task is not None:
                            # (`markStarted`, inlined for the usual attempt)
                            head.started = True
                            head.task.startedAt = head.task._clock()
                        else:
                            head.markStarted()
                    break
            task = attempt.task
            if task is None:
                if status == ERROR:
                    failure = remoteFailure(payload, errorType)
                    log.error("Replaying an update in %r failed: %s", self, failure.value)
                continue
            if status == NOT_RUN:
                # Handed back unrun (a process child's answer to HANDBACK):
                # the queue gives it to the first worker free.
                task.innocent = True
                reports.append((task, _HANDED_BACK))
                continue
            runs.append((dt, attempt.sentAt))
            if status == ITERATOR:
                source = _RemoteSource(self, extra, worker.batchItems)
                self.sources[extra] = source
                self.firstBatch[extra] = (attempt, source)
                continue
            relay = attempt.relay is not None
            if placed is not None:
                if not relay:
                    error = errorType("a result came in shared memory for a call not relayed")
                    reports.append((task, (ERROR, Failure(error))))
                    continue
                filling = placed
            if status == NONE:
                reports.append((task, _NONE_REPORT))
            else:
                reports.append((task, statusResult(status, payload, errorType, relay, filling)))
        if runs:
            worker._noteRuns(runs, now)
        if self._holding:
            # With the rest of this read's (`holdSends`); settled then too,
            # even if none of these was a task's (replayed updates).
            self._reports.extend(reports)
            self._reportsDue = True
        else:
            self._report(reports)

    def _report(self, reports: list[tuple[Task, Any]], release: bool = False) -> None:
        """
        Report *reports*, after telling the worker once that it has room
        again; with *release*, let the held sends go between the two.
        """
        if reports:
            self.worker._checkReady()  # the next tasks go out before these callbacks
        if release:
            BurstSender.holdSends(self, False)
        for task, report in reports:
            try:
                kind = type(report)
                if kind is _Members:
                    settleMembers(task, report)
                elif kind is _Rest:
                    report.giveBack(task)
                else:
                    task.callback(report)
            except Exception:  # (not to lose the reports after it)
                log.exception("Reporting a result in %r failed", self)
        self.settle()

    def _reportHeld(self, release: bool = False) -> None:
        """Report the results held during a read (see `holdSends`)."""
        reports, self._reports = self._reports, []
        self._reportsDue = False
        self._report(reports, release)

    def forget(self, taskID: int) -> _Attempt | None:
        """Stop waiting for one task (e.g. it timed out); returns its attempt."""
        attempt = self.inflight.pop(taskID, None)
        if attempt is not None:
            return attempt
        for iterID, (attempt, _) in list(self.firstBatch.items()):
            if attempt.taskID == taskID:
                del self.firstBatch[iterID]
                self.closeIterator(iterID)
                return attempt
        return None

    def abandon(self) -> list[_Attempt]:
        """Give up on every task in hand; returns them, first-sent first."""
        attempts = [attempt for attempt, _ in self.firstBatch.values()]
        attempts.extend(self.inflight.values())
        self.inflight.clear()
        self.firstBatch.clear()
        self.outbox = []
        return attempts

    # ------------------------------------------------------------ iterators

    def requestItems(self, iterID: int, maxItems: int) -> Deferred[Any]:
        if self.channel is None or not self.channel.connected or iterID not in self.sources:
            return fail(self.errorType(f"iterator {iterID} of {self!r} is gone"))
        d: Deferred[Any] = Deferred()
        self.itemWaiters.setdefault(iterID, deque()).append(d)
        self.processClosing(settle=False)
        self.channel.send(encode(NEXT, [dumpsSmall((iterID, maxItems))]))
        return d

    def closeIterator(self, iterID: int) -> None:
        self.closingIDs.append(iterID)
        self.processClosing()

    def processClosing(self, settle: bool = True) -> None:
        """Send CLOSE for the iterators given up on (`closeIterator`, finalizers)."""
        ids, self.closingIDs = self.closingIDs, []
        ids = [i for i in ids if self.sources.pop(i, None) is not None]
        if ids and self.channel is not None and self.channel.connected:
            self.channel.send(encode(CLOSE, [dumpsSmall(ids)]))
        if ids and settle:
            self.settle()

    def _items(self, parts: list[Any]) -> None:
        iterID, nItems, more, nError = pickle.loads(parts[0])
        errorType = self.errorType
        failure = (
            remoteFailure(parts[1 + nItems : 1 + nItems + nError], errorType) if nError else None
        )
        try:
            items = loads(parts[1 : 1 + nItems])
        except Exception as e:
            if more:
                self.closeIterator(iterID)
            items, more = [], False
            failure = Failure(errorType(f"could not unpickle items of an iterator: {e!r}"))
        if not more:
            source = self.sources.pop(iterID, None)
            if source is not None:
                source.closed = True
        batch = (items, more, failure)
        first = self.firstBatch.pop(iterID, None)
        if first is not None:
            attempt, source = first
            self._deliverIterator(attempt, source, batch)
        else:
            waiters = self.itemWaiters.get(iterID)
            if waiters:
                d = waiters.popleft()
                if not waiters:
                    del self.itemWaiters[iterID]
                d.callback(batch)
        self.settle()

    def _deliverIterator(self, attempt: _Attempt, source: _RemoteSource, batch: Any) -> None:
        task = attempt.task
        assert task is not None
        items, more, failure = batch
        if not items and not more and failure is None:
            task.callback((ITERATOR, []))
            return
        f = task.callTuple[0]
        name = getattr(f, "__qualname__", None) or repr(f)
        dr = Deferator._fromSource(source, batch, f"{name}(...) {self.location()}".rstrip())
        if more:
            weakref.finalize(dr, _forgetIterator, weakref.ref(self), source.iterID).atexit = False
        task.callback((ITERATOR, dr))

    def failIterators(self, why: str) -> None:
        """Fail every pending item request and forget every iterator."""
        ids = list(self.sources)
        for source in self.sources.values():
            source.closed = True
        self.sources.clear()
        if ids and self.channel is not None and self.channel.connected:
            self.channel.send(encode(CLOSE, [dumpsSmall(ids)]))
        waiters, self.itemWaiters = self.itemWaiters, {}
        errorType = self.errorType
        for queue in waiters.values():
            for d in queue:
                d.errback(Failure(errorType(why)))

"""
`DaskWorker`: submits the tasks it is given to a Dask cluster, at most
``slots`` at a time, and reports their outcomes in the reactor.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import distributed
from distributed import Client
from distributed.client import ClosedClientError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import errors
from .._core._task import Task
from .._support._status import ERROR, ITERATOR, RESULT, Status
from .._support._util import dropTrigger, whenFired
from ..interfaces import IWorker
from ._cluster import _applyUpdate, _closeAll, _connect, _onLoop, _totalThreads
from ._daskside import _Chunk, _closeParked, _funcName, _nextChunk, _Submitted
from ._futures import _asFailure, _errorResult, _outcomes
from ._iterators import _RemoteIterator

log = logging.getLogger("asynqueue")

# Items of an iterator result sent per chunk, at most...
ITER_CHUNK = 1024
# ... and a chunk stops filling after this long (once it has an item), so a
# slow generator still delivers its first items promptly.
ITER_SECONDS = 0.05

# Submit options a series may map to (see DaskWorker's ``restrictions``).
RESTRICTION_KEYS = frozenset({"workers", "resources", "allow_other_workers"})

# How often (seconds) a worker checks its client and, with automatic slots,
# the cluster's thread count.
REFRESH_INTERVAL = 1.0

# Automatic slots: tasks in flight per cluster thread, at most (see
# `DaskWorker.slots`)...
PER_THREAD_MAX = 16
# ... and the weight of each new sample in the averages of run time and round
# trip it follows.
SMOOTHING = 0.2


class _Pending:
    """A future we wait for: a task's, or a chunk fetch's (then ``d``)."""

    __slots__ = ("d", "future", "submitted", "task")

    def __init__(self, task: Task | None = None, d: Deferred[Any] | None = None) -> None:
        self.task = task
        self.d = d
        self.future: Any = None
        # When a task was submitted while a cluster thread was free for it
        # (then its wait for the outcome is a round-trip sample), else None.
        self.submitted: float | None = None


@implementer(IWorker)
class DaskWorker:
    """
    A worker that runs tasks on a Dask distributed cluster.

    Args:
        address: where the cluster is: a scheduler address
            (``"tcp://host:8786"``), a connected synchronous
            ``distributed.Client`` (left open on ``stop``), a Dask cluster
            object (anything with ``scheduler_address``), or None to start an
            embedded ``LocalCluster`` on this machine (closed on ``stop``).
        slots: how many tasks to have in flight on the cluster at most.
            None (default): automatic, per cluster thread as many as make
            about one Dask round trip of work, at least one, at most
            `PER_THREAD_MAX` (see the ``slots`` property). The thread count
            is checked every second, so an adaptive cluster's growth is used.
        series: series this worker is qualified for, besides ``cQualified``.
        raw: give iterator results as plain (local) iterators instead of
            Deferators. The iterator is materialised on the cluster first.
        restrictions: ``{series: options}``; tasks of that series are
            submitted with these Dask options: ``workers`` (addresses or
            names), ``resources`` (e.g. ``{"GPU": 1}``),
            ``allow_other_workers``. The worker becomes qualified for each of
            those series, so the queue sends them only to DaskWorkers that
            know the mapping.
        priorities: pass ``-niceness`` (doNext: first, doLast: last) to
            Dask as ``priority=``. Best effort: Dask only ever holds a small
            backlog of ours (about one round trip of work per thread).
        allowedFailures: set the scheduler's ``allowed_failures`` (how many
            times Dask itself re-runs a task whose worker died). An embedded
            cluster gets 0, so a lost worker is reported to the queue, which
            re-runs the task once. Setting it on an existing cluster affects
            every client of that scheduler; None leaves it alone.
        clusterOptions: keywords for the embedded ``LocalCluster``
            (``n_workers``, ``threads_per_worker``, ``processes``, ...).
        iterChunk: items sent per chunk of an iterator result.
        connectTimeout: seconds to wait for the scheduler (Dask's default
            if None).
        closeTimeout: seconds that closing the client and the embedded
            cluster may take.
        reactor: the reactor to report to (the global one by default).
    """

    cQualified = ["dask"]

    def __init__(
        self,
        address: Any = None,
        slots: int | None = None,
        series: Iterable[Hashable] = (),
        raw: bool = False,
        *,
        restrictions: Mapping[Hashable, Mapping[str, Any]] | None = None,
        priorities: bool = True,
        allowedFailures: int | None = None,
        clusterOptions: Mapping[str, Any] | None = None,
        iterChunk: int = ITER_CHUNK,
        connectTimeout: float | None = None,
        closeTimeout: float = 20.0,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        if slots is not None and (isinstance(slots, bool) or slots < 1):
            raise ValueError(f"slots must be a positive int or None, not {slots!r}")
        if isinstance(address, Client) and address.asynchronous:
            raise TypeError(
                "DaskWorker needs a synchronous distributed.Client"
                " (asynchronous=False); it runs its own loop thread"
            )
        if iterChunk < 1:
            raise ValueError(f"iterChunk must be positive, not {iterChunk!r}")
        self._restrictions = _checkRestrictions(restrictions or {})
        self.iQualified = list(series)
        for s in self._restrictions:
            if s not in self.iQualified:
                self.iQualified.append(s)
        self.raw = raw
        self.priorities = priorities
        self.iterChunk = iterChunk
        self.closeTimeout = closeTimeout
        self._fixedSlots = slots
        self._threads = 1  # the cluster's worker threads, as last checked
        # Exponential averages (seconds) of how long a task keeps a Dask
        # thread busy, and of the rest of a round trip (submit to outcome).
        self._avgRun: float | None = None
        self._avgTrip: float | None = None

        self.client: Client | None = None
        self.cluster: Any = None
        self._ownClient = False
        self._connectFailure: Failure | None = None
        self._readyWaiters: list[Deferred[DaskWorker]] = []

        self._buffer: list[Task] = []  # tasks run before the connection is up
        self._running: dict[str, _Pending] = {}
        self._keyOf: dict[Task, str] = {}
        self._inflight = 0  # tasks in _buffer or _running
        self._updates = 0  # updates in progress
        self._readyWaiter: Deferred[None] | None = None
        self._resignator: Callable[[], Any] | None = None
        self._plugins: list[str] = []
        self._remoteIterators: weakref.WeakSet[_RemoteIterator] = weakref.WeakSet()

        # Unique keys, cheaply: one uuid per worker, then a counter.
        self._keyPrefix = uuid.uuid4().hex[:16]
        self._keyCount = itertools.count()
        self._doneLock = threading.Lock()
        self._doneBatch: list[Any] = []

        self._stopping = False
        self._crashed = False
        self._stopD: Deferred[None] | None = None
        self._closeD: Deferred[None] | None = None
        self._tickCall: Any = None
        self._refreshing = False
        self._trigger: Any = None

        self._connectD = deferToThreadPool(
            reactor,
            reactor.getThreadPool(),
            _connect,
            address,
            dict(clusterOptions or {}),
            allowedFailures,
            connectTimeout,
        )
        self._connectD.addCallbacks(self._connected, self._connectFailed)

    def __repr__(self) -> str:
        where = getattr(self.client, "scheduler", None)
        address = getattr(where, "address", None) if where is not None else None
        return (
            f"<DaskWorker ID={getattr(self, 'ID', None)} {address or 'connecting'}"
            f" inflight={self._inflight}/{self.slots}>"
        )

    # ---------------------------------------------------------------- state

    @property
    def slots(self) -> int:
        """
        How many tasks may be in flight on the cluster now.

        Automatic (``slots=None``): ``threads * trip / run``, at least
        ``threads``, at most ``threads * PER_THREAD_MAX``, where *threads* is
        the cluster's worker threads, *run* the average time a task keeps a
        Dask thread busy (timed on the Dask side) and *trip* the average
        rest of a round trip (submit to outcome, less the run, of tasks
        submitted while a thread was free). So every thread has about one
        round trip of work queued: long tasks go one per thread, trivial ones
        many. Before anything is measured: one per thread.
        """
        if self._fixedSlots is not None:
            return self._fixedSlots
        threads, run, trip = self._threads, self._avgRun, self._avgTrip
        if run is None or trip is None:
            return threads
        perThread = trip / max(run, 1e-6)
        return max(threads, min(threads * PER_THREAD_MAX, int(threads * perThread)))

    def whenReady(self) -> Deferred[DaskWorker]:
        """A Deferred firing with me once connected (or failing if that failed)."""
        if self.client is not None:
            return succeed(self)
        if self._connectFailure is not None:
            return fail(self._connectFailure)
        d: Deferred[DaskWorker] = Deferred()
        self._readyWaiters.append(d)
        return d

    def _connected(self, result: tuple[Any, Any, bool, int]) -> None:
        client, cluster, own, threads = result
        self.client, self.cluster, self._ownClient = client, cluster, own
        self._threads = max(1, threads)
        if own or cluster is not None:
            # Close what we opened even if nobody stops us.
            self._trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self._close)
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(self)
        if self._crashed:
            self._close()
            return
        buffered, self._buffer = self._buffer, []
        for task in buffered:
            self._submitTask(task)
        self._scheduleTick()
        self._maybeReady()
        self._checkStopped()

    def _connectFailed(self, failure: Failure) -> None:
        self._connectFailure = failure
        log.error("DaskWorker could not connect to Dask: %s", failure.value)
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.errback(failure)
        buffered, self._buffer = self._buffer, []
        self._inflight -= len(buffered)
        for task in buffered:
            task.callback((Status.NOT_RUN, f"no Dask cluster: {failure.value}"))
        self._maybeReady()
        self._checkStopped()

    # ---------------------------------------------------------------- IWorker

    def setResignator(self, callableObject: Callable[[], Any]) -> None:
        self._resignator = callableObject

    def run(self, task: Task) -> Deferred[None]:
        """Submit *task*; the Deferred fires while fewer than ``slots`` are in flight."""
        if self._stopping or self._crashed:
            task.callback((Status.NOT_RUN, "the Dask worker is stopped"))
            return succeed(None)
        if task.update is not None:
            return self._runUpdate(task)
        if self._connectFailure is not None:
            task.callback((Status.NOT_RUN, f"no Dask cluster: {self._connectFailure.value}"))
            return succeed(None)
        self._inflight += 1
        if self.client is None:
            self._buffer.append(task)
        else:
            self._submitTask(task)
        if self.client is not None and self._inflight < self.slots:
            return succeed(None)
        self._readyWaiter = Deferred()
        return self._readyWaiter

    def timedOut(self, task: Task) -> None:
        """Cancel the timed-out task's future (its thread runs on regardless)."""
        self._dropTask(task, "timed out")

    def cancelled(self, task: Task) -> None:
        """The caller cancelled *task*: cancel its future (or drop it unsubmitted)."""
        self._dropTask(task, "cancelled by the caller")

    def _dropTask(self, task: Task, reason: str) -> None:
        key = self._keyOf.pop(task, None)
        if key is None:
            if task in self._buffer:
                self._buffer.remove(task)
                self._inflight -= 1
                self._maybeReady()
            return
        pending = self._running.pop(key, None)
        if pending is None:
            return
        self._inflight -= 1
        if pending.future is not None:
            self._cancel([pending.future], reason)
        self._maybeReady()
        self._checkStopped()

    def stop(self) -> Deferred[None]:
        """Finish the tasks in hand, then close what I opened."""
        if self._stopD is None:
            self._stopping = True
            self._stopD = Deferred()
            self._checkStopped()
        return whenFired(self._stopD)

    def crash(self) -> list[Task]:
        """Stop now: cancel every future, close in the background, return unfinished tasks."""
        self._crashed = True
        self._stopping = True
        unfinished = list(self._buffer)
        futures = []
        fetches = []
        for pending in self._running.values():
            if pending.task is not None:
                unfinished.append(pending.task)
            elif pending.d is not None:
                fetches.append(pending.d)
            if pending.future is not None:
                futures.append(pending.future)
        self._buffer.clear()
        self._running.clear()
        self._keyOf.clear()
        self._inflight = 0
        if futures:
            self._cancel(futures, "the worker crashed")
        for d in fetches:
            d.errback(Failure(errors.WorkerLost("the Dask worker crashed")))
        if self.client is not None or self._connectFailure is not None:
            self._close()
        # else: _connected closes what it opened.
        if self._stopD is not None and not self._stopD.called:
            self._closeDeferred().addBoth(self._fireStopped)
        return unfinished

    # ---------------------------------------------------------------- tasks

    def _submitTask(self, task: Task) -> None:
        f, args, kw = task.callTuple
        raw = self.raw if task.raw is None else task.raw
        call = _Submitted(f, args, kw, 0 if raw else self.iterChunk, ITER_SECONDS)
        options: dict[str, Any] = {}
        if task.series is not None and task.series in self._restrictions:
            options.update(self._restrictions[task.series])
        if self.priorities:
            options["priority"] = -task.priority
        key = f"{_funcName(f)}-{self._keyPrefix}{next(self._keyCount)}"
        pending = _Pending(task)
        if self._fixedSlots is None and len(self._keyOf) < self._threads:
            pending.submitted = time.perf_counter()
        self._keyOf[task] = key
        self._running[key] = pending
        self._submit(key, pending, call, (), options)

    def _submit(
        self,
        key: str,
        pending: _Pending,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        options: dict[str, Any],
    ) -> None:
        client = self.client
        assert client is not None
        if client.status != "running":
            self._deliver([(key, Status.NOT_RUN, f"the Dask client is {client.status}")])
            return
        try:
            future = client.submit(func, *args, key=key, retries=0, pure=False, **options)
        except Exception as e:
            if isinstance(e, ClosedClientError):
                self._deliver([(key, Status.NOT_RUN, f"the Dask client is closed: {e}")])
            else:
                # Typically a call that does not pickle: the task's own error.
                self._deliver([(key, ERROR, (Failure(), None))])
            return
        pending.future = future
        future.add_done_callback(self._futureDone)

    def _futureDone(self, future: Any) -> None:
        """In Dask's callback thread: batch the future for collection."""
        with self._doneLock:
            self._doneBatch.append(future)
            first = len(self._doneBatch) == 1
        if first:
            try:
                future.client.loop.add_callback(self._collect)
            except Exception:  # the loop is gone: the client closed
                with self._doneLock:
                    self._doneBatch.clear()

    async def _collect(self) -> None:
        """On the client's loop: gather a batch of finished futures, then report."""
        with self._doneLock:
            batch, self._doneBatch = self._doneBatch, []
        if not batch:
            return
        self._reactor.callFromThread(self._deliver, await _outcomes(batch))

    def _deliver(self, outcomes: list[tuple[str, Status, Any]]) -> None:
        """In the reactor: report a batch of outcomes."""
        lost = []
        now = time.perf_counter()
        for key, status, value in outcomes:
            pending = self._running.pop(key, None)
            if pending is None:
                continue  # timed out or crashed meanwhile: nobody waits
            if status == Status.NOT_RUN and pending.future is not None:
                lost.append(pending.future)  # keep Dask from re-running it
            if pending.task is not None:
                if status == RESULT:
                    value, seconds = value  # see _Submitted
                    if self._fixedSlots is None:
                        self._noteRun(seconds, pending.submitted, now)
                self._keyOf.pop(pending.task, None)
                self._inflight -= 1
                pending.task.callback(self._statusResult(status, value))
            elif pending.d is not None:
                if status == RESULT:
                    pending.d.callback(value)
                else:
                    pending.d.errback(_asFailure(self._statusResult(status, value)))
        if lost:
            self._cancel(lost, "lost")
        self._maybeReady()
        self._checkStopped()

    def _noteRun(self, seconds: float, submitted: float | None, now: float) -> None:
        """Average in a task's run time and, if it had a free thread, its round trip."""
        avg = self._avgRun
        self._avgRun = seconds if avg is None else avg + SMOOTHING * (seconds - avg)
        if submitted is not None:
            trip = max(0.0, now - submitted - seconds)
            avg = self._avgTrip
            self._avgTrip = trip if avg is None else avg + SMOOTHING * (trip - avg)

    def _statusResult(self, status: Status, value: Any) -> tuple[Status, Any]:
        if status == RESULT:
            if isinstance(value, _Chunk):
                return self._iterResult(value)
            return RESULT, value
        if status == ERROR:
            exc, tb = value
            return _errorResult(exc, tb)
        return status, value

    def _iterResult(self, chunk: _Chunk) -> tuple[Status, Any]:
        if not chunk.items and not chunk.more and chunk.error is None:
            return ITERATOR, []
        from .._iter._deferator import Deferator

        remote = _RemoteIterator(self, chunk)
        return ITERATOR, Deferator("iterator on Dask", remote.getNext)

    # ---------------------------------------------------------------- iterators

    def _fetchChunk(self, token: str | None, where: str | None) -> Deferred[_Chunk]:
        """A Deferred of the next chunk of a parked iterator."""
        if self._crashed or self.client is None or token is None:
            return fail(errors.WorkerLost("the Dask worker is stopped"))
        key = f"asynqueue-next-chunk-{uuid.uuid4().hex}"
        d: Deferred[_Chunk] = Deferred()
        pending = _Pending(d=d)
        self._running[key] = pending
        options: dict[str, Any] = {"priority": 10**9}
        if where:
            # Loose: elsewhere only if that worker is gone (and then fails).
            options.update(workers=[where], allow_other_workers=True)
        self._submit(
            key,
            pending,
            _nextChunk,
            (token, self.iterChunk, ITER_SECONDS),
            options,
        )
        return d

    def _closeRemoteSoon(self, token: str | None, where: str | None) -> None:
        """Close a parked iterator (may be called from any thread, by the GC)."""
        self._reactor.callFromThread(self._closeRemote, token, where)

    def _closeRemote(self, token: str | None, where: str | None) -> None:
        client = self.client
        if token is None or client is None or client.status != "running":
            return
        options: dict[str, Any] = {"priority": 10**9}
        if where:
            options.update(workers=[where], allow_other_workers=True)
        try:
            future = client.submit(
                _closeParked,
                token,
                key=f"asynqueue-close-{uuid.uuid4().hex}",
                retries=0,
                pure=False,
                **options,
            )
            distributed.fire_and_forget(future)
        except Exception:
            log.debug("Could not close a remote iterator", exc_info=True)

    # ---------------------------------------------------------------- updates

    def _runUpdate(self, task: Task) -> Deferred[None]:
        """Run an update on every Dask worker (and, if persistent, on joiners)."""
        ready: Deferred[None] = Deferred()
        self._updates += 1

        def go(_: Any) -> Deferred[Any]:
            name = f"asynqueue-update-{task.callID}-{uuid.uuid4().hex[:8]}"
            f, args, kw = task.callTuple
            return deferToThreadPool(
                self._reactor,
                self._reactor.getThreadPool(),
                _applyUpdate,
                self.client,
                f,
                args,
                kw,
                name if task.update == "persistent" else None,
            ).addCallback(lambda results: (name, results))

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                if self.client is None:
                    task.callback((Status.NOT_RUN, f"no Dask cluster: {result.value}"))
                else:
                    task.callback((ERROR, result))
            else:
                name, results = result
                if task.update == "persistent":
                    self._plugins.append(name)
                task.callback((RESULT, results))
            self._updates -= 1
            ready.callback(None)
            self._checkStopped()

        self.whenReady().addCallback(go).addBoth(done)
        return ready

    # ---------------------------------------------------------------- helpers

    def _cancel(self, futures: list[Any], reason: str) -> None:
        """Cancel *futures* on the client's loop (``Client.cancel`` blocks)."""
        client = self.client
        if client is None or client.status != "running":
            return

        async def cancel() -> None:
            try:
                await client.cancel(futures, asynchronous=True, reason=f"asynqueue: {reason}")
            except Exception:
                log.debug("Cancelling Dask futures failed", exc_info=True)

        try:
            client.loop.add_callback(cancel)
        except Exception:
            pass

    def _maybeReady(self) -> None:
        waiter = self._readyWaiter
        if waiter is None:
            return
        if (
            self._stopping
            or self._connectFailure is not None
            or (self.client is not None and self._inflight < self.slots)
        ):
            self._readyWaiter = None
            waiter.callback(None)

    def _scheduleTick(self) -> None:
        if not self._stopping and self._tickCall is None:
            self._tickCall = self._reactor.callLater(REFRESH_INTERVAL, self._tick)

    def _tick(self) -> None:
        """Every second: notice a closed client; follow the cluster's size."""
        self._tickCall = None
        client = self.client
        if client is None or self._crashed or self._closeD is not None:
            return
        if client.status in ("closing", "closed") and self._running:
            self._deliver(
                [
                    (key, Status.NOT_RUN, f"the Dask client is {client.status}")
                    for key in list(self._running)
                ]
            )
        elif self._fixedSlots is None and client.status == "running" and not self._refreshing:
            self._refreshing = True
            _onLoop(self._reactor, client, _totalThreads, client).addBoth(self._refreshed)
        self._scheduleTick()

    def _refreshed(self, result: Any) -> None:
        self._refreshing = False
        if isinstance(result, int) and result > 0:
            self._threads = result
            self._maybeReady()

    def _checkStopped(self) -> None:
        if (
            self._stopD is None
            or self._stopD.called
            or self._inflight
            or self._updates
            or self._running
        ):
            return
        if self.client is None and self._connectFailure is None:
            return  # still connecting: _connected calls back here
        self._close()
        self._closeDeferred().addBoth(self._fireStopped)

    def _fireStopped(self, _: Any) -> None:
        if self._stopD is not None and not self._stopD.called:
            self._stopD.callback(None)
        self._maybeReady()

    def _closeDeferred(self) -> Deferred[None]:
        return succeed(None) if self._closeD is None else whenFired(self._closeD)

    def _close(self) -> Deferred[None]:
        """Close the client and cluster we opened (in a thread); once."""
        if self._closeD is not None:
            return self._closeDeferred()
        self._stopping = True
        if self._tickCall is not None and self._tickCall.active():
            self._tickCall.cancel()
        self._tickCall = None
        self._trigger = dropTrigger(self._reactor, self._trigger)
        for remote in list(self._remoteIterators):
            remote.close()
        self._closeD = deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            _closeAll,
            self.client,
            self.cluster,
            self._ownClient,
            list(self._plugins),
            self.closeTimeout,
        )
        self._closeD.addErrback(lambda f: log.error("Closing Dask failed: %s", f.value))
        self._maybeReady()
        return self._closeDeferred()


def _checkRestrictions(
    restrictions: Mapping[Hashable, Mapping[str, Any]],
) -> dict[Hashable, dict[str, Any]]:
    checked: dict[Hashable, dict[str, Any]] = {}
    for series, options in restrictions.items():
        if series is None:
            raise ValueError("restrictions apply to a series; None is not one")
        unknown = set(options) - RESTRICTION_KEYS
        if unknown:
            raise ValueError(
                f"unknown Dask option(s) {sorted(unknown)} for series {series!r};"
                f" use {sorted(RESTRICTION_KEYS)}"
            )
        options = dict(options)
        if isinstance(options.get("workers"), str):
            options["workers"] = [options["workers"]]
        checked[series] = options
    return checked

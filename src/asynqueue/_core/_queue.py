"""
`TaskQueue`: the queue, its workers, updates, shutdown and result policy.

Data flow::

    call(f, *a, **kw) ──► _Call ──► Scheduler ──► _dispatch ──► worker.run(Task)
        │                   ▲  (pure order)       (idle worker,    │
        │                   │                      best task)      ▼
        ▼                   └── retry (t, d) ◄── _onReport ◄──── task.callback((status, result))
    caller's Deferred ◄────────────── taskDone (policy) ◄──┘

- A `_Call` is what the caller asked for; it lives until it fires: it *is*
  the Deferred that ``call`` returns (one object per waiting call, not two:
  thousands of queued calls are that many fewer objects for the garbage
  collector to scan again and again).
- Each time the dispatcher hands the call to a worker it makes a fresh `Task`
  (one *attempt*). Results of an attempt the queue has given up on (after a
  timeout, or a detach) are ignored, so a late result never wins over a retry.

The pieces live in their own modules: `_calls` holds the call record and the
helpers that describe calls and read results; `_dispatch` holds the
`Dispatcher` that the queue holds: the workers' slots, the unfinished calls,
worker readiness, pipelining, timeouts and retries. The queue keeps the public
API, the result policy (`TaskQueue.taskDone`), updates and shutdown.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Callable, Generator, Hashable, Iterable
from typing import TYPE_CHECKING, Any, cast, overload

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python import threadable
from twisted.python.failure import Failure

from .. import errors
from .._support._status import Status
from .._support._util import whenFired
from ..interfaces import IWorker
from ._calls import (
    QUEUE_KEYWORDS,
    _Call,
    _Slot,
    _unpackStatus,
    describeCall,
    errorText,
    takeQueueOptions,
    toFailure,
)
from ._dispatch import Dispatcher
from ._named import UniverseMethod
from ._task import DO_NEXT_PRIORITY, Report, Task

if TYPE_CHECKING:
    from .._iter._deferator import Deferator

_threadID = threading.get_ident


def _warnIgnored(queueName: str, kw: dict[str, Any]) -> None:
    """
    Warn, at the caller's line, of keywords a queue does not know: the
    original ignored them silently, so code written for it may pass some,
    and a misspelt ``timeout=`` must not pass unnoticed either.
    """
    # The first frame outside this package: the line that made the queue.
    depth = 1
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("asynqueue."):
        frame = frame.f_back
        depth += 1
    names = ", ".join(f"{k}=" for k in sorted(kw))
    warnings.warn(
        f"{queueName} ignores the unknown keyword(s) {names}", UserWarning, stacklevel=depth + 1
    )


# An update remembered for workers attached later: (func, args, kw, series).
_Update = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Hashable]

__all__ = ["TaskQueue"]

log = logging.getLogger("asynqueue")


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
        *workers: IWorker,
        timeout: float | None = None,
        warn: bool = False,
        verbose: bool = False,
        spew: bool = False,
        returnFailure: bool = False,
        reactor: IReactorTime | None = None,
        **kw: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = cast(IReactorTime, globalReactor)
        self._reactor = reactor
        # Calls must come from the reactor's thread (see _refuseOtherThread). Known
        # for the global reactor only: Twisted notes the thread that runs it.
        self._checksThread = reactor is sys.modules.get("twisted.internet.reactor")
        # The thread known to be the reactor's: calls from it skip the check.
        self._home: int | None = None if self._checksThread else _threadID()
        self.timeout = timeout
        self.warn = warn
        self.verbose = verbose or spew
        self.returnFailure = returnFailure
        self._dispatcher = Dispatcher(reactor, self.taskDone)
        # call() makes a plain call's record itself unless newTask is overridden.
        self._plainNewTask = type(self).newTask is TaskQueue.newTask
        self.spew = spew
        self._updates: list[_Update] = []
        self._running = True
        self._shutdownD: Deferred[None] | None = None
        # Until a shutdown has let the queued calls finish (see `_callAgain`).
        self._draining = True
        self._stoppingReactor = False
        if kw:
            _warnIgnored(type(self).__name__, kw)
        if spew:
            _ensureLogOutput()
        for worker in workers:
            self.attachWorker(worker)

    @property
    def spew(self) -> bool:
        """Log every call and its result (see the class docstring)."""
        return self._spew

    @spew.setter
    def spew(self, value: bool) -> None:
        self._spew = value
        # A subclass's taskDone sees every result, and so does spew; ours
        # is skipped for plain ones.
        self._dispatcher.plainResults = not value and type(self).taskDone is TaskQueue.taskDone

    # ------------------------------------------------------------ state

    def __len__(self) -> int:
        """The number of workers attached."""
        return len(self._dispatcher.slots)

    def __bool__(self) -> bool:
        """True if I am running and have at least one worker."""
        return self._running and bool(self._dispatcher.slots)

    def isRunning(self) -> bool:
        """True until ``shutdown`` has been called."""
        return self._running

    def __repr__(self) -> str:
        dispatcher = self._dispatcher
        return (
            f"<{type(self).__name__} workers={len(dispatcher.slots)}"
            f" queued={len(dispatcher.scheduler)} pending={len(dispatcher.pending)}"
            f"{'' if self._running else ' shut down'}>"
        )

    def counts(self) -> dict[str, int]:
        """Counts of attached workers, queued calls and unfinished calls."""
        dispatcher = self._dispatcher
        return {
            "workers": len(dispatcher.slots),
            "queued": len(dispatcher.scheduler),
            "running": dispatcher.running(),
            "pending": len(dispatcher.pending),
        }

    # ------------------------------------------------------------ workers

    def attachWorker(self, worker: IWorker) -> Deferred[int]:
        """
        Register a new provider of `IWorker`.

        Returns a Deferred firing with an int ID unique within this queue.
        Remembered updates run on the worker before it gets queued tasks.
        """
        self._refuseOtherThread(lambda: f"attach {worker!r}")
        if not IWorker.providedBy(worker):
            raise errors.ImplementationError(f"{worker!r} does not provide IWorker")
        IWorker.validateInvariants(worker)
        for slot in self._dispatcher.slots.values():
            if slot.worker is worker:
                return succeed(slot.ID)
        slot = self._dispatcher.attach(worker)
        d = self._replayUpdates(slot)
        d.addCallback(lambda _: self._dispatcher.workerReady(slot))
        return succeed(slot.ID)

    def _getSlot(self, workerOrID: IWorker | int) -> _Slot | None:
        """The slot of an attached worker, given the worker or its ID."""
        slots = self._dispatcher.slots
        if isinstance(workerOrID, int) and workerOrID in slots:
            return slots[workerOrID]
        for slot in slots.values():
            if slot.worker is workerOrID:
                return slot
        return None

    def detachWorker(
        self, workerOrID: IWorker | int, reassign: bool = False, crash: bool = False
    ) -> Deferred[list[Task]]:
        """
        Detach and stop a worker (the object or its ID).

        Returns a Deferred firing with the list of tasks it left unfinished.
        With ``reassign``, those calls go back to the queue (at the front) and
        the list is empty; without it, their Deferreds fail with
        `errors.TaskCancelled`. A graceful stop (no ``crash``) lets the worker
        finish the tasks in hand; after the queue's ``timeout`` it is crashed.
        """
        self._refuseOtherThread(lambda: f"detach worker {workerOrID!r}")
        slot = self._getSlot(workerOrID)
        if slot is None:
            return succeed([])
        return self._dispatcher.detach(slot, reassign, crash, self.timeout)

    def qualifyWorker(self, worker: IWorker, series: Hashable) -> None:
        """Add *series* to the qualifications of an attached *worker*."""
        self._refuseOtherThread(lambda: f"qualify {worker!r} for {series!r}")
        if series not in worker.iQualified:
            worker.iQualified.append(series)
        slot = self._getSlot(worker)
        if slot is not None:
            self._dispatcher.requalify(slot)

    @overload
    def workers(self) -> list[IWorker]: ...

    @overload
    def workers(self, ID: int) -> IWorker | None: ...

    def workers(self, ID: int | None = None) -> list[IWorker] | IWorker | None:
        """The worker with *ID* (None if not attached), or a list of all workers."""
        slots = self._dispatcher.slots
        if ID is None:
            return [slot.worker for slot in slots.values()]
        slot = slots.get(ID)
        return None if slot is None else slot.worker

    # ------------------------------------------------------------ calls

    def newTask(
        self, func: Callable[..., Any] | str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> _Call:
        """Make the record of a queued call from a func-args-kw combo."""
        if isinstance(func, str):
            # As in the original: a name is a method of a wire server's universe.
            func = UniverseMethod(func)
        elif not callable(func):
            raise TypeError(f"{func!r} is not callable")
        own = dict(kw) if kw else None
        call = _Call(func, tuple(args), own, self._dispatcher.canceller)
        if self.returnFailure:
            call.returnFailure = True
        if own and not QUEUE_KEYWORDS.isdisjoint(own):
            takeQueueOptions(call, own, self.returnFailure)
        return call

    def call(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """
        Queue a call of ``func(*args, **kw)``; returns a Deferred of its result.

        Keywords for the queue (never passed to *func*):

        - ``niceness``: int from -20 to 20 (default 0); a series at N+10 runs
          at half the rate of one at N.
        - ``series``: hashable; the tasks of a series run in sequence, in
          submission order: one starts only after the one before it has
          finished. They run only on workers qualified for the series if any
          is attached.
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
        if _threadID() != self._home:
            self._refuseOtherThread(lambda: f"call {describeCall(func, args, kw)}")
        if not self._plainNewTask or not callable(func):
            return self._dispatcher.submit(self.newTask(func, args, kw))
        # What newTask makes of a callable without keywords, or with only a
        # series (inlined: once per call; a subclass's own newTask is always
        # called).
        if kw:
            if len(kw) != 1 or "series" not in kw:
                return self._dispatcher.submit(self.newTask(func, args, kw))
            series = kw["series"]
            call = _Call(func, args, None, self._dispatcher.canceller)
            if series is not None:
                hash(series)  # TypeError at the call site for an unhashable series
                call.series = series
        else:
            call = _Call(func, args, None, self._dispatcher.canceller)
        if self.returnFailure:
            call.returnFailure = True
        return self._dispatcher.submit(call)

    def _refuseOtherThread(self, what: Callable[[], str]) -> None:
        """
        Refuse to be used from a thread other than the reactor's: a call,
        map, update, shutdown or change of workers there would race the
        reactor's own changes to the queue (a call lost, or run twice, or a
        queue that stops dispatching). Before the reactor runs, any thread
        may (nothing races yet). *what* says what was refused.
        """
        if _threadID() == self._home or not self._checksThread:
            return
        ioThread = threadable.ioThread
        if ioThread is None:
            return
        if ioThread == _threadID():
            self._home = ioThread
            return
        raise errors.WrongThreadError(
            f"Cannot {what()} from thread"
            f" {threading.current_thread().name!r}: a queue belongs to its reactor's"
            " thread. Use reactor.callFromThread(queue.call, ...) (or"
            " twisted.internet.threads.blockingCallFromThread for the result), or an"
            " executor of asynqueue.futures."
        )

    def _callAgain(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """
        Like `call`, for work that calls already queued hand back unfinished
        (the calls of a batch its worker did not start): accepted also while
        a shutdown lets queued calls finish, which they are part of.
        """
        if not self._running and not self._draining:
            raise errors.QueueRunError(
                f"Cannot call {describeCall(func, args, kw)}: the queue is shut down"
            )
        return self._dispatcher.submit(self.newTask(func, args, kw))

    def _callInFlow(
        self, flow: Hashable, func: Callable[..., Any], *args: Any, **kw: Any
    ) -> Deferred[Any]:
        """
        Like `call` with ``series=flow``, except that the tasks of *flow* do
        not run in sequence: the flow only shares the workers fairly with
        other series (the worker server's flow per client connection).
        """
        if not self._running:
            raise errors.QueueRunError(
                f"Cannot call {describeCall(func, args, kw)}: the queue is shut down"
            )
        call = self.newTask(func, args, kw)
        call.series = flow
        call.inSequence = False
        return self._dispatcher.submit(call)

    def taskDone(self, statusResult: Report, task: Task, **kw: Any) -> Any:
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
        if not self.spew and (status is Status.RESULT or status is Status.NONE):
            return result if status is Status.RESULT else None  # the hot paths
        description = call.describe() if call is not None else repr(task)
        if self.spew:
            log.info("%s -> %r", description, result)
        if status is Status.RESULT or status is Status.CHUNKED:
            return result
        if status is Status.NONE:
            return None
        if status is Status.ITERATOR:
            consumer = call.consumer if call is not None else kw.get("consumer")
            if consumer is None:
                return result
            from .._iter._producers import consumeInto

            return consumeInto(result, consumer)
        if status is Status.ERROR:
            failure = toFailure(result)
            returnFailure = (
                call.returnFailure
                if call is not None
                else kw.get("returnFailure", self.returnFailure)
            )
            return self._taskError(failure, description, returnFailure)
        if status is Status.TIMEOUT:
            return Failure(errors.TimeoutError(f"{description} timed out"))
        if status is Status.NOT_RUN:
            return Failure(errors.WorkerLost(f"{description} did not run"))
        return Failure(errors.WorkerError(f"Unknown status {status!r} for {description}"))

    def _taskError(self, failure: Failure, description: str, returnFailure: bool) -> Failure | str:
        text = errorText(failure, description)
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

        def stopReactor(_: object) -> None:
            if getattr(self._reactor, "running", False):
                cast(IReactorCore, self._reactor).stop()

        self._reactor.callLater(0, lambda: self.shutdown().addBoth(stopReactor))

    # ------------------------------------------------------------ update

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        ordered: bool = True,
        **callKeywords: Any,
    ) -> Deferator:
        """
        ``func`` applied to every input, in parallel: a `Deferator` of the results.

        Inputs are zipped from *iterables* like the builtin ``map`` and pulled
        lazily, a few batches ahead of the reader (so an endless generator
        works, in constant memory). Work starts at once. Each batch is one
        call of a plain helper on a worker, with its results in one message.

        Args:
            chunksize: inputs per batch. None adapts: one input per call while
                calls are long, bigger batches while they are short (a few ms
                of work each, measured as it goes).
            ordered: results in input order; False: as batches complete.
            callKeywords: queue keywords (``niceness``, ``series``,
                ``doNext``, ``doLast``, ``timeout``) for every batch;
                ``timeout`` is per input (see `asynqueue._core._map`).

        An input whose call raised makes the iteration raise that exception
        (its original type) when it gets there, after the results before it;
        the iteration then ends. Stopping early (``stop()``, leaving
        ``async for``) withdraws the batches no worker has started.

        Raises:
            QueueRunError: the queue has been shut down.
            TypeError, ValueError: bad *func*, iterable, chunksize or keyword.
        """
        from ._map import MapRun, feedOf, lengthHint, mapDeferator

        self._refuseOtherThread(lambda: f"map {func!r}")
        if not self._running:
            raise errors.QueueRunError(f"Cannot map {func!r}: the queue is shut down")
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        if not iterables:
            raise TypeError("map() needs at least one iterable of inputs")
        if chunksize is not None and (
            isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
        ):
            raise ValueError(f"chunksize must be a positive int or None, not {chunksize!r}")
        unknown = set(callKeywords) - (QUEUE_KEYWORDS - {"consumer", "raw", "returnFailure"})
        if unknown:
            raise TypeError(
                f"map() got keywords it does not take: {', '.join(sorted(unknown))}"
                " (map passes no keywords to func; use functools.partial)"
            )
        self.newTask(func, (), dict(callKeywords))  # validates the queue keywords
        iterators = [iter(it) for it in iterables]  # TypeError here, not later
        hint = lengthHint(iterables)
        star = len(iterators) > 1
        feed = feedOf(iterables, iterators)
        run = MapRun(
            self,
            func,
            feed,
            star=star,
            chunksize=chunksize,
            ordered=ordered,
            callKeywords=callKeywords,
            lengthHint=hint,
        )
        return mapDeferator(run, f"map({describeCall(func, (), {})[:-2]}, ...)")

    def _withdraw(self, call: Deferred[Any]) -> bool:
        """
        Take back *call* (a Deferred from `call`) if no worker has taken it:
        it fails with `errors.TaskCancelled`. False if it is no longer queued.
        """
        return isinstance(call, _Call) and self._dispatcher.withdraw(call)

    def update(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[list[Any]]:
        """
        Run ``func(*args, **kw)`` directly on every attached worker, and
        remember it for workers attached later (unless ``ephemeral=True``).

        Returns a Deferred firing with the list of results on the current
        workers. Wait for it before queueing calls that need the update.
        """
        self._refuseOtherThread(lambda: f"update with {func!r}")
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
            )[0]
            for slot in list(self._dispatcher.slots.values())
            if call.series is None or call.series in slot.qualified
        ]
        return DeferredList(ds, consumeErrors=True).addCallback(
            lambda results: [value for _, value in results]
        )

    def _runUpdate(
        self,
        slot: _Slot,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any],
        kind: str,
    ) -> tuple[Deferred[Any], Deferred[None] | None]:
        """
        Run an update on *slot*'s worker: a Deferred of its result, and the
        worker's ready Deferred (None: ready at once).
        """
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
            task.callback((Status.ERROR, Failure()))
            readyD = succeed(None)
        result: Deferred[Any] = Deferred()

        def done(statusResult: Report) -> None:
            status, value = _unpackStatus(statusResult)
            if status is Status.ERROR:
                failure = toFailure(value)
                log.error(
                    "Update %s failed on worker %r: %s",
                    describeCall(func, args, kw),
                    slot.worker,
                    failure.value,
                )
                result.callback(failure)
            elif status is Status.TIMEOUT or status is Status.NOT_RUN:
                result.callback(Failure(errors.WorkerError(f"update did not run ({status})")))
            elif isinstance(value, Deferred):
                value.chainDeferred(result)  # e.g. an iterator result still arriving
            else:
                result.callback(None if status is Status.NONE else value)

        task.d.addCallback(done)
        return result, readyD

    def _replayUpdates(self, slot: _Slot) -> Deferred[None]:
        """Run remembered updates on a new worker, waiting until it takes each."""
        d: Deferred[None] = succeed(None)
        for func, args, kw, series in self._updates:
            if series is not None and series not in slot.qualified:
                continue

            def runOne(
                _: object,
                func: Callable[..., Any] = func,
                args: tuple[Any, ...] = args,
                kw: dict[str, Any] = kw,
            ) -> Deferred[None] | None:
                if not slot.attached:
                    return None
                return self._runUpdate(slot, func, args, kw, "persistent")[1]

            d.addCallback(runOne)
        d.addErrback(lambda f: log.error("Replaying updates failed: %s", f.value))
        return d

    # ------------------------------------------------------------ shutdown

    def shutdown(self, timeout: float | None = None) -> Deferred[None]:
        """
        Shut down; wait for the returned Deferred before dropping the queue.

        1. Refuse new calls (they raise `errors.QueueRunError`).
        2. Let queued and running tasks finish, while any worker is attached:
           for at most *timeout* seconds, if given (None: as long as they
           take; each call's own ``timeout`` still applies).
        3. Stop every worker; crash those still busy after ``timeout`` (the
           queue's), or at once once the shutdown's *timeout* ran out.
        4. Fail every call still unfinished with `errors.QueueRunError`.

        Calling it again returns a Deferred of the same shutdown (its first
        *timeout* holds).
        """
        self._refuseOtherThread(lambda: "shut down")
        if self._shutdownD is None:
            self._running = False
            self._shutdownD = self._doShutdown(timeout)
        return whenFired(self._shutdownD)

    def _doShutdown(self, timeout: float | None) -> Deferred[None]:
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def steps() -> Generator[Deferred[Any], Any, None]:
            drained = self._dispatcher.drained()
            late = False
            if timeout is None:
                yield drained
            else:
                late = yield _ranOutFirst(timeout, drained, self._reactor)
            self._draining = False
            if late:
                # Every unfinished call fails first (so none goes to another
                # worker meanwhile), then the workers are crashed.
                self._dispatcher.abandon(
                    f"was not done when the shutdown's timeout ({timeout:g} s) ran out"
                )
            stops = [self.detachWorker(ID, crash=late) for ID in list(self._dispatcher.slots)]
            results = yield DeferredList(stops, consumeErrors=True)
            for ok, value in results:
                if not ok:
                    log.error("Stopping a worker failed: %s", value.value)
            self._dispatcher.abandon(
                "never ran: the queue was shut down",
                retried="was not run again: the queue was shut down",
            )

        return steps()


def _ranOutFirst(seconds: float, d: Deferred[Any], reactor: Any) -> Deferred[bool]:
    """A Deferred of whether *seconds* ran out before *d* fired (then sooner)."""
    outcome: Deferred[bool] = Deferred()

    def ranOut() -> None:
        if not outcome.called:
            outcome.callback(True)

    timer = reactor.callLater(seconds, ranOut)

    def fired(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if not outcome.called:
            outcome.callback(False)
        return result

    d.addBoth(fired)
    return outcome


def _ensureLogOutput() -> None:
    """Make ``spew`` visible even when the application configured no logging."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)

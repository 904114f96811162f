"""
The executors of `asynqueue.futures`: ``concurrent.futures`` on our queues.

Data flow::

    caller thread                            reactor thread
    submit(f, *a) ─► _Future, appended to ──► _drain: queue.call(f, *a) ─► worker
                     the inbox; one wake-up    (a batch per wake-up)          │
                     per batch                                                ▼
    future.result() ◄──────────────── _settle: set_result / set_exception ◄─ Deferred

- Crossing threads costs a ``callFromThread`` per *batch*: ``submit`` only
  wakes the reactor when the inbox was empty, and the reactor takes the whole
  inbox at once (20,000 submits at once cross in a handful of wake-ups).
- A task per call would cost the reactor more than small calls themselves:
  plain calls (no options) of a batch travel in *groups* (`runGroup`, an
  outcome per call). A group whose worker died is re-run call by call, so
  that only the call that kills its worker fails. The calls of a group not
  started while one of it runs long go back to the front of the queue for
  other workers (threads: `_checkGroups`; processes: the child stops the
  group, see `asynqueue._support._batch`), as a standard pool's idle
  workers would take them, before the calls submitted after them.
- ``map`` is the queue's own batching ``map`` (`TaskQueue.map`: adaptive
  batches even with the default ``chunksize=1``, each item's result or
  exception as if alone, a failed batch re-run item by item). Its results
  cross to the caller a batch at a time (`_MapFuture`), not item by item.
- Results cross back by ``Future.set_result`` in the reactor thread (thread
  workers call it themselves, `_runInto`, one hop less), so done callbacks
  run there (as the standard pools run them in their own threads): they
  must not block.
- A future stays *pending* until it is done: ``running()`` is always False.
  The documentation of ``Future.running`` and ``Future.cancel`` speaks of a
  call that is running "and cannot be cancelled"; ours can be, by cancelling
  the call's Deferred: the queue withdraws a queued call and, where the queue
  and its workers can, stops a running one (else its result is dropped).
- When no reactor runs, `theReactor` runs Twisted's global reactor in a daemon
  thread (no signal handlers) and stops it at interpreter exit, after every
  executor still open has shut down (its running calls finish, as with the
  standard pools, and its child processes end).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import threadable
from twisted.python.failure import Failure

from .. import errors
from .._core._calls import QUEUE_KEYWORDS
from .._core._dispatch import HANDBACK_PATIENCE
from .._core._scheduler import checkNiceness
from .._support._batch import Batch
from ._work import applyKeywords, runGroup

__all__ = ["ProcessPoolExecutor", "QueueExecutor", "ThreadPoolExecutor", "theReactor"]

log = logging.getLogger("asynqueue")

# Plain calls (no options) submitted in a burst travel in groups of up to
# MAX_GROUP calls per task, at least GROUPS_PER_WORKER groups per worker: a
# task per call costs the reactor more than the calls themselves when they
# are small. A lone call travels alone.
MAX_GROUP = 32
GROUPS_PER_WORKER = 4
# (Thread pools) The calls of a group still waiting behind one that has run
# this long (seconds) go back to the queue for the other threads: the
# patience after which a thread worker hands back the tasks behind its own.
GROUP_PATIENCE = HANDBACK_PATIENCE

# The queue options that `Executor.options` accepts (the others, such as a
# consumer or raw results, make no sense for a Future).
OPTIONS = frozenset({"niceness", "series", "timeout", "doNext", "doLast"})

# ------------------------------------------------------------------ the reactor

_startLock = threading.Lock()
_reactorThread: threading.Thread | None = None
_exiting = False
_executors: weakref.WeakSet[_QueueExecutorBase] = weakref.WeakSet()
# How long the exit handler waits for the reactor thread to end once stopped.
EXIT_JOIN = 10.0


def theReactor() -> Any:
    """
    Twisted's global reactor, running: started in a daemon thread if it is not
    running yet (and stopped at interpreter exit), else the running one.
    """
    global _reactorThread
    from twisted.internet import reactor

    if reactor.running:
        return reactor
    with _startLock:
        if reactor.running:
            return reactor
        if _reactorThread is not None:
            raise RuntimeError("the reactor asynqueue.futures started has stopped")
        if threadable.ioThread is not None and threadable.isInIOThread():
            # This thread ran the reactor before and presumably will again
            # (trial between tests, reactor.crash): running it elsewhere now
            # would make two threads run one reactor.
            raise RuntimeError(
                "the reactor is not running, and this thread is the one that runs it:"
                " make executors while it runs"
            )
        started = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                reactor.callWhenRunning(started.set)
                reactor.run(installSignalHandlers=False)
            except BaseException as e:  # e.g. ReactorNotRestartable
                failed.append(e)
            finally:
                started.set()

        thread = threading.Thread(target=run, name="asynqueue-reactor", daemon=True)
        thread.start()
        started.wait()
        if failed:
            raise RuntimeError(f"cannot run the reactor: {failed[0]!r}") from failed[0]
        _reactorThread = thread
        atexit.register(_atExit)
    return reactor


def _atExit() -> None:
    """Shut every open executor down, then stop the reactor we started."""
    global _exiting
    _exiting = True
    from twisted.internet import reactor

    for executor in list(_executors):
        try:
            executor.shutdown(wait=True)
        except Exception:
            pass
    thread = _reactorThread
    if thread is not None and reactor.running:
        reactor.callFromThread(reactor.stop)
        thread.join(EXIT_JOIN)


def inReactor(reactor: Any, f: Callable[..., Any], *args: Any, **kw: Any) -> Future[Any]:
    """
    Run ``f(*args, **kw)`` in the reactor thread (at once if this is it); a
    Future of its result (of the result of a Deferred it returns).
    """
    out: Future[Any] = Future()

    def run() -> None:
        try:
            result = f(*args, **kw)
        except BaseException as e:
            out.set_exception(e)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(out.set_result, lambda failure: out.set_exception(failure.value))
        else:
            out.set_result(result)

    if threadable.isInIOThread():
        run()
    else:
        reactor.callFromThread(run)
    return out


def _refuseInReactor(what: str) -> None:
    if threadable.isInIOThread():
        raise RuntimeError(
            f"{what} from the reactor thread would deadlock: the reactor must run to"
            " deliver the result. Use the queue's Deferreds there (or add_done_callback)."
        )


# ------------------------------------------------------------------ futures


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as the ``__cause__`` of its exception."""

    def __str__(self) -> str:
        return str(self.args[0])


# Future states in which result() does not wait.
_DONE_STATES = frozenset({FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED})


class _Future(Future[Any]):
    """
    A ``concurrent.futures.Future`` whose ``cancel`` reaches the queue, and
    whose ``result`` refuses to block the reactor thread.
    """

    _aqDeferred: Deferred[Any] | None = None  # the queue's Deferred, once queued
    _aqCancelled = False
    _aqReactor: Any = None  # the global reactor, once an executor runs

    def cancel(self) -> bool:
        """
        Cancel the call unless it is done: True if it is (now) cancelled.

        A queued call is withdrawn; a running one is stopped where its queue
        and worker can stop it, else its result is dropped.
        """
        if self.cancelled():
            return True
        if not super().cancel():
            return False
        self._aqCancelled = True
        try:
            # What an executor does for a cancelled future: wakes up wait()
            # and as_completed(), which count it done only after this.
            self.set_running_or_notify_cancel()
        except RuntimeError:
            pass  # another thread's cancel() got there first
        reactor = self._aqReactor
        if reactor is not None:
            if threadable.isInIOThread():
                self._withdraw()
            else:
                reactor.callFromThread(self._withdraw)
        return True

    def _withdraw(self) -> None:
        d = self._aqDeferred
        if d is not None and not d.called:
            d.cancel()

    def result(self, timeout: float | None = None) -> Any:
        # The state, read without the lock (a hot path): a stale "not done"
        # only costs the check of the thread.
        if self._state not in _DONE_STATES:  # type: ignore[attr-defined]
            _refuseInReactor("Waiting for a Future's result")
        return Future.result(self, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state not in _DONE_STATES:  # type: ignore[attr-defined]
            _refuseInReactor("Waiting for a Future's exception")
        return Future.exception(self, timeout)


# What `_runInto` returns: it has settled the Future itself.
_SETTLED = "settled by the worker"


def _runInto(future: _Future, fn: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> str:
    """
    (A worker thread) Run ``fn(*args, **kwargs)`` and settle *future* with its
    outcome right here: the caller wakes up without waiting for the reactor,
    which only learns that the call is done.
    """
    try:
        result = fn(*args, **kwargs) if kwargs else fn(*args)
    except BaseException as e:
        try:
            future.set_exception(e)
        except InvalidStateError:
            pass  # cancelled, or timed out meanwhile
        return _SETTLED
    try:
        future.set_result(result)
    except InvalidStateError:
        pass
    return _SETTLED


class _Group:
    """
    (Thread pools) The calls of a group, which a worker thread runs one by
    one (`_runGroupHere`); the ones it has not started yet can be taken back
    (`takeRest`) while it is stuck in a long one, for other threads to run.
    """

    __slots__ = ("calls", "end", "lock", "next", "startedAt")

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls  # (future, fn, args, kwargs) each
        self.next = 0  # the next call to run
        self.end = len(calls)  # calls from here on were taken back
        self.lock = threading.Lock()
        self.startedAt: float | None = None  # when the running call started

    def takeRest(self) -> int:
        """Take back the calls not started yet; returns where they begin."""
        with self.lock:
            start = self.end = self.next
        return start


def _runGroupHere(group: _Group) -> str:
    """(A worker thread) `_runInto` for each call of *group* not cancelled or taken back."""
    lock = group.lock
    calls = group.calls
    clock = time.monotonic
    while True:
        with lock:
            i = group.next
            if i >= group.end:
                break
            group.next = i + 1
            group.startedAt = clock()
        future, fn, args, kwargs = calls[i]
        if not future._aqCancelled:
            _runInto(future, fn, args, kwargs)
    return _SETTLED


def _exceptionOf(failure: Failure) -> BaseException:
    """The exception a caller gets, with a worker's traceback as its cause."""
    exc = failure.value
    if not isinstance(exc, BaseException):
        return RuntimeError(str(exc))
    remote = getattr(exc, "remoteTraceback", "")
    if remote and exc.__cause__ is None:
        exc.__cause__ = _RemoteTraceback(f'\n"""\n{str(remote).rstrip()}\n"""')
    return exc


class _MapFuture(_Future):
    """
    One ``map`` call: done when the queue's ``map`` has ended (with the
    exception of the item that raised, if one did), meanwhile a hand-over of
    results: the reactor thread appends each batch as it lands (see
    `_QueueExecutorBase._startMap`) and `_mapResults` takes them, both under
    the Future's own condition, so a batch costs one wake-up of the caller.
    Cancelling it stops the map: batches no worker has taken are withdrawn.
    """

    def __init__(self, fn: Callable[..., Any], columns: tuple[Any, ...], options: Any) -> None:
        super().__init__()
        self._aqMap: tuple[Any, ...] | None = (fn, columns, options)  # until it starts
        self._aqItems: list[Any] = []  # results not taken yet (under _condition)
        self._aqRun: Any = None  # the queue's Deferator while it runs (reactor thread)

    def _withdraw(self) -> None:
        run = self._aqRun
        if run is not None:
            run.stop()  # (which ends the map: see `Deferator._readInBatches`)


def _mapResults(future: _MapFuture, end: float | None) -> Iterator[Any]:
    """
    The results of a map, in order, then its exception if an item raised;
    ``TimeoutError`` if one is not there by *end*. Leaving early (or a
    timeout) cancels the rest.
    """
    condition = future._condition  # type: ignore[attr-defined]
    try:
        while True:
            with condition:
                while not future._aqItems and future._state not in _DONE_STATES:  # type: ignore[attr-defined]
                    _refuseInReactor("Waiting for a map's results")
                    wait = None if end is None else end - time.monotonic()
                    if wait is not None and wait <= 0:
                        raise TimeoutError("the map's next result did not come in time")
                    condition.wait(wait)
                items, future._aqItems = future._aqItems, []
            if not items:
                future.result()  # raises the item's exception (or CancelledError)
                return
            # Reversed and popped, so that I hold no result already yielded.
            items.reverse()
            while items:
                yield items.pop()
    finally:
        future.cancel()  # (nothing if the map is done)


def checkOptions(options: dict[str, Any]) -> dict[str, Any]:
    """*options* validated: the queue keywords that ``options`` accepts."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(sorted(unknown))}; options are"
            f" {', '.join(sorted(OPTIONS))}"
        )
    if "niceness" in options:
        checkNiceness(options["niceness"])
    series = options.get("series")
    if series is not None and not isinstance(series, Hashable):
        raise TypeError(f"series must be hashable, not {series!r}")
    timeout = options.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
    return {k: v for k, v in options.items() if v is not None}


# ------------------------------------------------------------------ executors


class _Submitting:
    """``submit``, ``map`` and ``options`` of an executor and of its views."""

    _keywords: dict[str, Any] | None  # queue keywords added to every call

    @property
    def _executor(self) -> _QueueExecutorBase:
        return self  # type: ignore[return-value]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """
        Schedule ``fn(*args, **kwargs)``; a Future of its result.

        Every keyword goes to *fn*; queue options come through `options`.
        """
        return self._executor._submit(fn, args, kwargs, self._keywords)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """
        Like ``map(fn, *iterables)``, the calls made at once and concurrently.

        The iterator raises ``TimeoutError`` if a result is not there
        *timeout* seconds after this call, and the first exception of a call
        where its result would be. It runs on the queue's own ``map``
        (`asynqueue.base.TaskQueue.map`): each task runs a batch of
        *chunksize* calls; with the default 1, batches sized as it goes to
        make the map quick. Either way the results are those of one call per
        item, and a worker that dies fails only the item that killed it.
        Leaving the iterator early cancels the batches not yet started.
        """
        return self._executor._map(fn, iterables, timeout, chunksize, self._keywords)

    def options(self, **options: Any) -> _Options:
        """
        A view of me whose ``submit`` and ``map`` pass queue *options*:
        ``niceness`` (-20 to 20), ``series`` (hashable), ``timeout`` (seconds
        from when a worker takes the call; retried once, then
        `asynqueue.errors.TimeoutError`), ``doNext``, ``doLast``. A view's
        own ``options`` adds to its options.
        """
        return _Options(self._executor, {**(self._keywords or {}), **checkOptions(options)})


class _Options(_Submitting):
    """An executor's view that adds queue options to each call (see `options`)."""

    def __init__(self, executor: _QueueExecutorBase, keywords: dict[str, Any]) -> None:
        self._target = executor
        self._keywords = keywords or None

    @property
    def _executor(self) -> _QueueExecutorBase:
        return self._target

    def __repr__(self) -> str:
        return f"<options {self._keywords or {}} of {self._target!r}>"


class _QueueExecutorBase(_Submitting, Executor):
    """
    The machinery every executor here shares: submissions in batches to a
    queue that lives in the reactor thread, results back as Futures.

    Subclasses call `_start` with a queue factory (run in the reactor thread).
    """

    _brokenType: type[Exception] = RuntimeError
    _ownsQueue = True
    # The workers run in this process: they settle each Future themselves
    # (see `_runInto`), a hop through the reactor less per result.
    _inProcess = False

    def _start(
        self,
        factory: Callable[[], Any],
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        keywords: dict[str, Any] | None = None,
    ) -> None:
        """Make the queue (in the reactor thread); run *initializer* on each worker."""
        self._lock = threading.Lock()
        self._inbox: list[tuple[_Future, Callable[..., Any], tuple[Any, ...], Any]] = []
        self._ready = False
        self._shutdown = False
        self._broken: str | None = None
        self._finished: Future[Any] | None = None
        # Queue keywords added to every call (None: none).
        self._keywords = keywords or None
        self._unfinished: set[_Future] = set()  # reactor thread only
        # (Thread pools) The groups running or queued -> their items; the
        # delayed call that looks for stuck ones. Reactor thread only.
        self._groups: dict[_Group, list[Any]] = {}
        self._groupWatch: Any = None
        self._idleWaiters: list[Deferred[None]] = []
        self._mapWaiters: list[Deferred[None]] = []
        reactor = self._reactor = _Future._aqReactor = theReactor()
        self._readyD: Deferred[None] = Deferred()
        self.queue: Any = None
        inReactor(reactor, self._makeQueue, factory, initializer, initargs).result()
        _executors.add(self)
        if self._ownsQueue:
            weakref.finalize(self, _dropQueue, reactor, self.queue).atexit = False

    def _makeQueue(
        self,
        factory: Callable[[], Any],
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
    ) -> Any:
        queue = self.queue = factory()
        if initializer is None:
            self._becomeReady()
        else:
            queue.update(initializer, *initargs).addCallbacks(
                self._initialized, lambda failure: self._initialized([failure])
            )
        return queue

    def _initialized(self, results: list[Any]) -> None:
        for result in results:
            if isinstance(result, Failure):
                self._breakDown(f"an initializer failed: {result.value!r}", result.value)
                return
        self._becomeReady()

    def _becomeReady(self) -> None:
        with self._lock:
            self._ready = True
        self._drain()
        self._readyD.callback(None)

    def _breakDown(self, why: str, cause: BaseException) -> None:
        """The initializer failed: fail every waiting call and refuse new ones."""
        with self._lock:
            self._broken = why
            held, self._inbox = self._inbox, []
        for future, *_ in held:
            error = self._brokenType(why)
            error.__cause__ = cause
            try:
                future.set_exception(error)
            except InvalidStateError:
                pass
        self._readyD.callback(None)

    # ------------------------------------------------------------ submitting

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        keywords: dict[str, Any] | None,
    ) -> Future[Any]:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        future = _Future()
        if self._inProcess:
            fn, args, kwargs = _runInto, (future, fn, args, kwargs), {}
        elif kwargs and not QUEUE_KEYWORDS.isdisjoint(kwargs):
            # The queue would take these keywords as its own: wrap the call.
            fn, args, kwargs = applyKeywords, (fn, args, kwargs), {}
        if keywords:
            kwargs = {**kwargs, **keywords} if kwargs else keywords
        self._enqueue([(future, fn, args, kwargs or None)])
        return future

    def _enqueue(
        self, items: list[tuple[_Future, Callable[..., Any], tuple[Any, ...], Any]]
    ) -> None:
        with self._lock:
            if self._broken is not None:
                raise self._brokenType(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            inbox = self._inbox
            wake = bool(items) and self._ready and not inbox
            inbox.extend(items)
        if wake:
            if threadable.isInIOThread():
                self._reactor.callLater(0, self._drain)
            else:
                self._reactor.callFromThread(self._drain)

    def _drain(self) -> None:
        """(Reactor thread) Queue every call in the inbox; a burst in groups."""
        with self._lock:
            batch, self._inbox = self._inbox, []
        plain = [item for item in batch if item[3] is None and not item[0]._aqCancelled]
        size = min(MAX_GROUP, len(plain) // (GROUPS_PER_WORKER * max(1, self._workerCount())))
        if size < 2:
            singles, plain = batch, []
        else:
            singles = [item for item in batch if item[3] is not None]
        for item in singles:
            if item[0]._aqCancelled:
                continue
            if isinstance(item[0], _MapFuture):
                self._startMap(item[0])
            else:
                self._callOne(*item)
        for start in range(0, len(plain), max(size, 1)):
            self._callGroup(plain[start : start + size])

    def _queueCall(self, again: bool) -> Callable[..., Deferred[Any]]:
        """
        How to queue a call: ``call``; *again* for calls a group hands back,
        which a shutdown must still run (the queue's ``_callAgain``, if any)
        and which go to the front of the queue (``doNext``).
        """
        queue = self.queue
        if not again:
            return queue.call
        callAgain = getattr(queue, "_callAgain", queue.call)

        def callAtFront(fn: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
            # Given back, they were submitted before every call still queued:
            # they go to the front (in the order given back), not behind them.
            return callAgain(fn, *args, doNext=True, **kw)

        return callAtFront

    def _callOne(
        self, future: _Future, fn: Callable[..., Any], args: Any, kw: Any, again: bool = False
    ) -> None:
        try:
            call = self._queueCall(again)
            d = call(fn, *args, **kw) if kw else call(fn, *args)
        except Exception as e:  # e.g. the queue was shut down under us
            self._settleFuture(Failure(e), future)
            return
        future._aqDeferred = d
        self._unfinished.add(future)
        d.addBoth(self._settle, future)

    def _callGroup(self, items: list[Any], again: bool = False) -> None:
        """
        Queue plain calls of a burst as one task: `runGroup` runs them one by
        one and reports each outcome (in a thread, `_runInto` settles each
        Future). Cancelling a call of a group drops its result, or skips it if
        it has not run (thread workers); the group itself goes on.
        """
        futures = [item[0] for item in items]
        call = self._queueCall(again)
        try:
            if self._inProcess:
                group = _Group([item[2] for item in items])
                d = call(_runGroupHere, group)
                self._groups[group] = items
                d.addBoth(self._groupDone, group)
                if self._groupWatch is None:
                    self._groupWatch = self._reactor.callLater(GROUP_PATIENCE, self._checkGroups)
            else:
                calls = Batch([(fn, args) for _, fn, args, _ in items])
                calls.giveBack = lambda start, done: self._groupRest(items, start, done)
                d = call(runGroup, calls)
        except Exception as e:  # e.g. the queue was shut down under us
            failure = Failure(e)
            for future in futures:
                self._settleFuture(failure, future)
            return
        self._unfinished.update(futures)
        d.addBoth(self._settleGroup, items)

    def _groupRest(self, items: list[Any], start: int, done: list[Any]) -> None:
        """
        (Reactor thread; process pools) The group of *items* ran long in its
        worker, which runs none of it from *start* on: those calls go back to
        the queue (as a group again if several) for the first worker free.
        The first ``len(done)`` calls are done: their outcomes are *done*.
        """
        settled, rest = items[: len(done)], items[start:]
        del items[start:]  # (what _settleGroup will see of the group)
        del items[: len(done)]
        unfinished = self._unfinished
        for item in settled + rest:
            unfinished.discard(item[0])
        self._settleOutcomes(settled, done)
        rest = [item for item in rest if not item[0]._aqCancelled]
        if len(rest) > 1:
            self._callGroup(rest, again=True)
        elif rest:
            self._callOne(*rest[0], again=True)
        self._checkIdle()

    def _groupDone(self, result: Any, group: _Group) -> Any:
        groups = self._groups
        groups.pop(group, None)
        if not groups and self._groupWatch is not None:
            if self._groupWatch.active():
                self._groupWatch.cancel()
            self._groupWatch = None
        return result

    def _checkGroups(self) -> None:
        """
        (Reactor thread) A thread pool's group whose running call has taken
        longer than `GROUP_PATIENCE`: the calls behind it go back to the
        queue, one task each, for the other threads (as a standard pool's
        threads take the next call from its one queue).
        """
        self._groupWatch = None
        if not self._groups:
            return
        now = time.monotonic()
        for group, items in list(self._groups.items()):
            started = group.startedAt
            if started is None or now - started <= GROUP_PATIENCE or group.next >= group.end:
                continue
            start = group.takeRest()
            rest = items[start:]
            del items[start:]  # (what _settleGroup will see of the group)
            for future in [item[0] for item in rest]:
                self._unfinished.discard(future)
            for item in rest:
                if not item[0]._aqCancelled:
                    self._callOne(*item, again=True)
        if self._groups:
            self._groupWatch = self._reactor.callLater(GROUP_PATIENCE, self._checkGroups)

    def _settleGroup(self, result: Any, items: list[Any]) -> None:
        """(Reactor thread) Hand each call of a group its outcome."""
        unfinished = self._unfinished
        for item in items:
            unfinished.discard(item[0])
        if isinstance(result, list):
            self._settleOutcomes(items, result)
        elif isinstance(result, Failure) and result.check(errors.WorkerLost) and len(items) > 1:
            # One of them may have killed the worker: each runs alone now,
            # so that only the call that kills it fails.
            for item in items:
                if not item[0].done():
                    self._callOne(*item)
        elif result is not _SETTLED:
            for item in items:
                self._settleFuture(result, item[0])
        self._checkIdle()

    def _settleOutcomes(self, items: list[Any], outcomes: list[Any]) -> None:
        """Hand each call of *items* its outcome from `runGroup`."""
        for item, (ok, value, text) in zip(items, outcomes, strict=False):
            if ok:
                self._settleFuture(value, item[0])
            else:
                if text and value.__cause__ is None:
                    value.__cause__ = _RemoteTraceback(f'\n"""\n{text.rstrip()}\n"""')
                self._settleFuture(Failure(value), item[0])
        if len(outcomes) != len(items):  # (a bug: still, every Future ends)
            lost = errors.WorkerError(f"{len(outcomes)} outcomes came for {len(items)} calls")
            log.error("Executor group: %s", lost)
            for item in items[len(outcomes) :]:
                self._settleFuture(Failure(lost), item[0])

    def _settle(self, result: Any, future: _Future) -> None:
        """(Reactor thread) Hand a call's outcome to its Future."""
        self._unfinished.discard(future)
        future._aqDeferred = None
        if result is not _SETTLED:  # else `_runInto` did, in the worker's thread
            self._settleFuture(result, future)
        self._checkIdle()

    def _checkIdle(self) -> None:
        if self._idleWaiters and not self._unfinished:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)
        if self._mapWaiters and not any(isinstance(f, _MapFuture) for f in self._unfinished):
            waiters, self._mapWaiters = self._mapWaiters, []
            for d in waiters:
                d.callback(None)

    def _mapsEnded(self) -> Deferred[None]:
        """(Reactor thread) A Deferred that fires once no map runs."""
        d: Deferred[None] = Deferred()
        self._mapWaiters.append(d)
        self._checkIdle()
        return d

    @staticmethod
    def _settleFuture(result: Any, future: _Future) -> None:
        try:
            if isinstance(result, Failure):
                future.set_exception(_exceptionOf(result))
            else:
                future.set_result(result)
        except InvalidStateError:
            pass  # cancelled meanwhile

    def _map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        keywords: dict[str, Any] | None,
    ) -> Iterator[Any]:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, not {chunksize!r}")
        end = None if timeout is None else timeout + time.monotonic()
        # The inputs are taken here and now, as the standard pools take them
        # (their iterable's errors raise here, in the caller's thread).
        if len(iterables) == 1:
            columns: tuple[Any, ...] = (list(iterables[0]),)
        else:
            columns = tuple(zip(*zip(*iterables, strict=False), strict=True))
        if not columns or not columns[0]:
            self._enqueue([])  # refuses after shutdown all the same
            return iter(())
        # Only the queue options: the queue's map makes its own raw failures.
        options = {k: v for k, v in (keywords or {}).items() if k in OPTIONS}
        # The standard default, chunksize=1, becomes adaptive batches: the
        # results are the same, at a fraction of a task per item.
        options["chunksize"] = None if chunksize == 1 else chunksize
        future = _MapFuture(fn, columns, options)
        self._enqueue([(future, fn, (), options)])
        return _mapResults(future, end)

    def _startMap(self, future: _MapFuture) -> None:
        """(Reactor thread) Start the queue's map of *future*'s inputs."""
        assert future._aqMap is not None
        fn, columns, options = future._aqMap
        future._aqMap = None
        try:
            run = self.queue.map(fn, *columns, ordered=True, **options)
        except Exception as e:  # e.g. the queue was shut down under us
            self._settleFuture(Failure(e), future)
            return
        future._aqRun = run
        self._unfinished.add(future)

        def landed(items: Any) -> None:
            with future._condition:  # type: ignore[attr-defined]
                future._aqItems.extend(items)
                future._condition.notify_all()  # type: ignore[attr-defined]

        run._readInBatches(landed, lambda failure: self._endMap(future, failure))

    def _endMap(self, future: _MapFuture, failure: Failure | None) -> None:
        """(Reactor thread) The map of *future* ended, with *failure* or not."""
        future._aqRun = None
        self._unfinished.discard(future)
        self._settleFuture(failure, future)
        self._checkIdle()

    # ------------------------------------------------------------ shutdown

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """
        Refuse new calls and free the workers once the calls made are done.

        With *wait*, return only then (not allowed in the reactor thread).
        With *cancel_futures*, cancel the calls that no worker has taken yet.
        """
        if wait:
            _refuseInReactor("shutdown(wait=True)")
        with self._lock:
            self._shutdown = True
            held = self._inbox if cancel_futures else []
            if cancel_futures:
                self._inbox = []
            first = self._finished is None
            if first:
                self._finished = Future()
        for future, *_ in held:
            future.cancel()
        if cancel_futures:
            inReactor(self._reactor, self._cancelUnstarted)
        if first:
            finished = self._finished
            assert finished is not None
            stopped = inReactor(self._reactor, self._stopQueue)
            stopped.add_done_callback(lambda f: finished.set_result(f.exception()))
        if wait and self._finished is not None:
            self._finished.result()

    def _workerCount(self) -> int:
        return len(self.queue) if self.queue is not None else 1

    def _cancelUnstarted(self) -> None:
        for future in list(self._unfinished):
            if getattr(future._aqDeferred, "attempt", None) is None:
                future.cancel()

    def _stopQueue(self) -> Deferred[Any]:
        def stop(_: Any) -> Any:
            self._drain()
            _executors.discard(self)
            if self._ownsQueue:
                # A map sends its batches as workers free up: the queue
                # shuts down once every map has sent (and got) them all.
                return self._mapsEnded().addCallback(lambda _: self.queue.shutdown())
            if not self._unfinished:
                return None
            idle: Deferred[None] = Deferred()
            self._idleWaiters.append(idle)
            return idle

        return self._readyD.addCallback(stop)


def _dropQueue(reactor: Any, queue: Any) -> None:
    """An executor was collected without a shutdown: shut its queue down."""
    if reactor.running and not _exiting:
        reactor.callFromThread(queue.shutdown)


def _checkWorkers(maxWorkers: int | None, default: int) -> int:
    if maxWorkers is None:
        return default
    if isinstance(maxWorkers, bool) or not isinstance(maxWorkers, int):
        raise TypeError(f"max_workers must be an int, not {maxWorkers!r}")
    if maxWorkers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return maxWorkers


def _checkInitializer(initializer: Any, initargs: Any) -> tuple[Any, ...]:
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    return tuple(initargs)


class ProcessPoolExecutor(_QueueExecutorBase):
    """
    ``concurrent.futures.ProcessPoolExecutor`` on a `ProcessQueue`.

    Beyond the standard pool: a worker process that dies fails only the call
    it ran (after one re-run, with `asynqueue.errors.WorkerLost`) and is
    replaced; lambdas and closures travel (cloudpickle); per-call timeouts
    and priorities through `options`.

    Args:
        max_workers: how many worker processes (default: the usable cores).
        mp_context: accepted for compatibility and ignored: our workers are
            fresh interpreters started by the reactor, never forked.
        initializer: called with *initargs* in each worker process before
            its first call (and in each replacement process). If it raises,
            the pool is *broken*: waiting calls fail and ``submit`` raises
            ``concurrent.futures.process.BrokenProcessPool``, as with the
            standard pool, whose callers already handle that.
        max_tasks_per_child: replace a worker process after it ran this many
            calls.
    """

    _brokenType = BrokenProcessPool

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        from .._process._parent import ProcessQueue, cores

        workers = _checkWorkers(max_workers, cores())
        initargs = _checkInitializer(initializer, initargs)
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an int")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._max_workers = workers

        def factory() -> Any:
            return ProcessQueue(workers, raw=True, maxTasks=max_tasks_per_child, returnFailure=True)

        self._start(factory, initializer, initargs)

    def __repr__(self) -> str:
        return f"<asynqueue ProcessPoolExecutor max_workers={self._max_workers}>"


_threadPools = itertools.count()


def _threadInit(
    prefix: str, numbers: Iterator[int], initializer: Callable[..., Any] | None, initargs: Any
) -> None:
    """Name a worker thread as the standard pool does, then run *initializer*."""
    threading.current_thread().name = f"{prefix}_{next(numbers)}"
    if initializer is not None:
        initializer(*initargs)


class ThreadPoolExecutor(_QueueExecutorBase):
    """
    ``concurrent.futures.ThreadPoolExecutor`` on a `ThreadQueue`.

    Beyond the standard pool: per-call timeouts (a thread stuck past its
    timeout is abandoned and replaced) and priorities through `options`.

    Args:
        max_workers: how many threads (default ``min(32, cores + 4)``), all
            started at once.
        thread_name_prefix: names the threads ``PREFIX_0``, ``PREFIX_1``, ...
        initializer: called with *initargs* in each thread before its first
            call. If it raises, the pool is *broken*: waiting calls fail and
            ``submit`` raises ``concurrent.futures.thread.BrokenThreadPool``,
            as with the standard pool.
    """

    _brokenType = BrokenThreadPool
    _inProcess = True

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        from .._threads._worker import ThreadQueue

        workers = _checkWorkers(max_workers, min(32, (os.cpu_count() or 1) + 4))
        initargs = _checkInitializer(initializer, initargs)
        self._max_workers = workers
        prefix = thread_name_prefix or f"ThreadPoolExecutor-{next(_threadPools)}"
        self._start(
            lambda: ThreadQueue(True, workers, returnFailure=True),
            _threadInit,
            (prefix, itertools.count(), initializer, initargs),
        )

    def __repr__(self) -> str:
        return f"<asynqueue ThreadPoolExecutor max_workers={self._max_workers}>"


class QueueExecutor(_QueueExecutorBase):
    """
    A ``concurrent.futures.Executor`` on any `TaskQueue`: thread, process,
    remote or Dask.

    Args:
        queue: the queue, or a callable that makes it. Give a callable for a
            queue that starts processes or connections: it is called in the
            reactor thread, where Twisted needs that to happen.
        shutdownQueue: whether my ``shutdown`` shuts the queue down too (else
            it only waits for the calls made through me).
    """

    def __init__(self, queue: Any, *, shutdownQueue: bool = True) -> None:
        from .._core._queue import TaskQueue

        self._ownsQueue = bool(shutdownQueue)

        def factory() -> Any:
            made = queue() if callable(queue) and not isinstance(queue, TaskQueue) else queue
            if not isinstance(made, TaskQueue):
                raise TypeError(f"QueueExecutor needs a TaskQueue, not {made!r}")
            return made

        # Each call asks for the original exception, and results as they are
        # (a generator's iterator as such, not a Deferator).
        self._start(factory, keywords={"returnFailure": True, "raw": True})

    def __repr__(self) -> str:
        return f"<asynqueue QueueExecutor of {self.queue!r}>"

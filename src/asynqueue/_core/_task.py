"""
`Task`: one attempt at running a queued call, as a worker sees it.

The queue makes a fresh Task each time it hands a call to a worker (the first
try, a retry after a timeout, a re-run after a lost worker). A worker reports
the outcome with ``task.callback((status, result))``; a late report on an
attempt the queue has given up on is simply ignored, so a slow worker can
never overwrite the result of a retry.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure

from .._support._status import Status

__all__ = ["DO_LAST_PRIORITY", "DO_NEXT_PRIORITY", "Report", "Task", "nextCallID"]

# A worker's report on a task: ``(status, result)``, the status a `Status`,
# its letter, or the letter as bytes (the original's workers).
Report = tuple[Status | str | bytes, Any]

# Priorities shown to workers for doNext/doLast tasks; plain tasks show their
# niceness. A worker may treat ``task.priority <= -20`` as "run me first".
DO_NEXT_PRIORITY = -1_000_000
DO_LAST_PRIORITY = 1_000_000

_callIDs = itertools.count(1)

# A new call ID, unique in this process: the counter's own ``__next__``, which
# costs no Python frame (it is called once per queued call).
nextCallID: Callable[[], int] = _callIDs.__next__


class Task:
    """
    A call to run: ``callTuple = (f, args, kw)``, plus what the worker needs
    to know about it.

    Attributes:
        callTuple: ``(f, args, kw)``; kw holds only the callable's keywords.
        priority: the niceness, or `DO_NEXT_PRIORITY` / `DO_LAST_PRIORITY`.
        niceness, series, timeout, doNext, doLast: the call's queue options.
        raw: True/False to override the worker's ``raw`` for this call, or None.
        consumer: the call's ``consumer`` (an IConsumer) or None.
        update: None for a queued call; ``"persistent"`` or ``"ephemeral"``
            for a copy run by ``TaskQueue.update`` (a worker that restarts
            its back end should replay persistent ones).
        callID: a unique int for the call; retries keep it.
        attempt: 1 for the first try, then 2, ...
        innocent: a worker sets this True before reporting status ``d`` for
            a task it had accepted but not started, so the re-run does not
            count against the task.
        startedAt: when the task really started (see ``started``), or None.
        d: fires with ``(status, result)``.
    """

    # Class-level defaults: the dispatcher's hot path (``Dispatcher._runOn``)
    # makes the task of a call without queue options without ``__init__``,
    # setting only what differs; ``__init__`` still sets everything.
    priority = 0
    niceness = 0
    series: Hashable = None
    timeout: float | None = None
    doNext = False
    doLast = False
    raw: bool | None = None
    consumer: IConsumer | None = None
    update: str | None = None
    attempt = 1
    innocent = False
    startedAt: float | None = None
    _d: Deferred[Report] | None = None
    _reported: Report | None = None
    onReport: Callable[[Task, Report], None] | None = None
    owner: object = None

    def __init__(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...] | list[Any] = (),
        kw: dict[str, Any] | None = None,
        priority: int = 0,
        series: Hashable = None,
        timeout: float | None = None,
        *,
        niceness: int = 0,
        doNext: bool = False,
        doLast: bool = False,
        raw: bool | None = None,
        consumer: IConsumer | None = None,
        update: str | None = None,
        callID: int | None = None,
        attempt: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"args must be a tuple or list, not {type(args).__name__}")
        if kw is None:
            kw = {}
        elif not isinstance(kw, dict):
            raise TypeError(f"kw must be a dict, not {type(kw).__name__}")
        self.callTuple = (f, tuple(args), kw)
        self.priority = priority
        self.niceness = niceness
        self.series = series
        self.timeout = timeout
        self.doNext = doNext
        self.doLast = doLast
        self.raw = raw
        self.consumer = consumer
        self.update = update
        self.callID = next(_callIDs) if callID is None else callID
        self.attempt = attempt
        self.innocent = False
        self.startedAt: float | None = None
        self._clock = clock
        self._d: Deferred[Report] | None = None
        self._reported: Report | None = None
        # The queue's own receiver: called directly, without a Deferred, on
        # the hot path. Set by whoever dispatches the task.
        self.onReport: Callable[[Task, Report], None] | None = None
        self.owner: object = None  # opaque, for the dispatcher's bookkeeping

    # Identity semantics: two tasks are never "equal" because they share a
    # priority (the original compared priorities, corrupting list removal).
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    # Ordering, as in the original: by priority (lower runs first), then by
    # age; any task sorts before None.
    def _sortKey(self) -> tuple[int, int]:
        return self.priority, self.callID

    def __lt__(self, other: object) -> bool:
        if other is None:
            return True
        if not isinstance(other, Task):
            return NotImplemented
        return self._sortKey() < other._sortKey()

    def __gt__(self, other: object) -> bool:
        if other is None:
            return False
        if not isinstance(other, Task):
            return NotImplemented
        return self._sortKey() > other._sortKey()

    @property
    def f(self) -> Callable[..., Any]:
        return self.callTuple[0]

    def started(self) -> None:
        """Record that the task starts now. Safe to call from any thread."""
        self.startedAt = self._clock()

    @property
    def d(self) -> Deferred[Report]:
        """A Deferred that fires with ``(status, result)`` (made on first use)."""
        if self._d is None:
            self._d = Deferred()
            if self._reported is not None:
                self._d.callback(self._reported)
            else:
                # Workers written for the original report by firing this
                # Deferred themselves; that counts as a report too.
                self._d.addCallback(self._firedDirectly)
        return self._d

    def _firedDirectly(self, statusResult: Report) -> Report:
        if self._reported is None:
            self._reported = statusResult
            if self.onReport is not None:
                self.onReport(self, statusResult)
        return statusResult

    @property
    def reported(self) -> bool:
        """True once the worker has reported an outcome."""
        return self._reported is not None

    def callback(self, statusResult: Report) -> None:
        """Report ``(status, result)``; ignored if already reported."""
        if self._reported is not None:
            return
        self._reported = statusResult
        if self.onReport is not None:
            self.onReport(self, statusResult)
        if self._d is not None:
            self._d.callback(statusResult)

    def errback(self, failure: Failure | BaseException | None = None) -> None:
        """Report an error as status ``e``; ignored if already reported."""
        if not isinstance(failure, Failure):
            failure = Failure(failure)
        self.callback((Status.ERROR, failure))

    def __repr__(self) -> str:
        f, args, kw = self.callTuple
        name = getattr(f, "__qualname__", None) or repr(f)
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kw.items()]
        text = ", ".join(parts)
        if len(text) > 60:
            text = text[:57] + "..."
        return f"<Task #{self.callID}.{self.attempt}: {name}({text})>"

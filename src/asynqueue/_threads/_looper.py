"""
`ThreadLooper`: the original's one-thread call runner, kept as a shim over a
`ThreadWorker` for code written against AsynQueue 0.9.x.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from .. import errors
from .._core._calls import _unpackStatus, tracebackText
from .._core._task import Task
from .._support._status import Status, asStatus
from ._worker import ThreadWorker

__all__ = ["ThreadLooper"]

# (f, args, kw, raw, Deferred of the original (status, result))
_Entry = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any, Deferred[Any]]


class ThreadLooper:
    """
    Runs calls one at a time, in order, in one dedicated thread.

    `call` gives a Deferred of the original ``(status, result)``: ``b"r"``
    with the result, ``b"e"`` with the traceback text, or ``b"i"`` with a
    `Deferator` over an iterator result (its items are pulled in the same
    thread; ``[]`` if it was empty). ``raw=True`` (here or per call) gives
    iterators as they are; ``doNext=True`` puts a call ahead of the waiting
    ones. `deferToThread` gives the result itself instead.

    A thin layer over a `ThreadWorker` (``worker``); new code should use a
    `ThreadQueue` or a ThreadWorker directly.
    """

    def __init__(self, raw: bool = False) -> None:
        self.raw = raw
        self.worker = ThreadWorker(raw=raw)
        self._waiting: deque[_Entry] = deque()
        self._busy = False
        self._stopWaiters: list[Deferred[None]] = []

    @property
    def threadRunning(self) -> bool:
        """False once my thread has ended (after `stop`)."""
        return self.worker.threadRunning

    def call(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """Run ``f(*args, **kw)`` in my thread; a Deferred of ``(status, result)``."""
        if not callable(f):
            raise TypeError(f"ThreadLooper.call needs a callable, not {f!r}")
        doNext = kw.pop("doNext", False)
        raw = kw.pop("raw", None)
        d: Deferred[Any] = Deferred()
        entry = (f, args, kw, raw, d)
        if doNext:
            self._waiting.appendleft(entry)
        else:
            self._waiting.append(entry)
        self._runNext()
        return d

    def deferToThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """
        Like `call`, but fires with the result itself (a `Deferator` for an
        iterator) and fails with `ThreadError` if *f* raised. With
        ``consumer=`` an IConsumer, an iterator's items are written to it and
        the Deferred fires with the consumer when they are all written.
        """
        consumer = kw.pop("consumer", None)

        def done(statusResult: tuple[bytes, Any]) -> Any:
            status, result = statusResult
            status = asStatus(status)
            if status is Status.ERROR:
                return Failure(errors.ThreadError(result))
            if status is Status.ITERATOR and consumer is not None:
                from .._iter._producers import consumeInto

                return consumeInto(result, consumer)
            return result

        return self.call(f, *args, **kw).addCallback(done)

    def stop(self) -> Deferred[None]:
        """Finish the waiting calls, then end the thread; fires when it has."""
        d: Deferred[None] = Deferred()
        self._stopWaiters.append(d)
        self._maybeStop()
        return d

    def _runNext(self) -> None:
        if self._busy or not self._waiting:
            return
        self._busy = True
        f, args, kw, raw, d = self._waiting.popleft()
        task = Task(f, args, kw, raw=raw)
        self.worker.run(task)
        task.d.addCallback(self._original).addBoth(self._finished, d)

    @staticmethod
    def _original(statusResult: Any) -> Any:
        """Our worker's report as the original's ``(status, result)``, its status in bytes."""
        status, result = _unpackStatus(statusResult)
        if status == Status.ITERATOR:
            # A thread worker's iterator result is a Deferred of a Deferator.
            iterating = Status.ITERATOR.encode()
            return maybeDeferred(lambda: result).addCallback(lambda dr: (iterating, dr))
        if status in (Status.ERROR, Status.NOT_RUN, Status.TIMEOUT):
            text = tracebackText(result) if isinstance(result, Failure) else str(result)
            return Status.ERROR.encode(), text
        return status.encode(), result

    def _finished(self, statusResult: Any, d: Deferred[Any]) -> None:
        self._busy = False
        self._runNext()
        d.callback(statusResult)
        self._maybeStop()

    def _maybeStop(self) -> None:
        if not self._stopWaiters or self._busy or self._waiting:
            return
        waiters, self._stopWaiters = self._stopWaiters, []

        def stopped(_: Any) -> None:
            for d in waiters:
                d.callback(None)

        self.worker.stop().addBoth(stopped)

"""
How a worker thread wakes the reactor: `wakerFor`.

The reactor learns of a batch of finished results by a readiness wake-up.
Through ``callFromThread`` that costs, besides the system calls, the
waker's Python (its read, the reactor's turn through its queue of thread
calls). A `WakePipe` is a thread worker's own pipe, watched by the reactor:
a byte written there makes the reactor call the worker's flush directly
(~4 µs less per round trip on a 2-core VM; see the benchmarks README).
Reactors that do not watch file descriptors get `fromThread`, the same
as ``callFromThread`` at less cost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorFDSet

__all__ = ["WakePipe", "fromThread", "wakerFor"]


class WakePipe:
    """
    A pipe whose reading end the reactor watches: `wake` (any thread) makes
    the reactor call *onWake* (once per read, however many bytes).

    It counts as one of the reactor's internal readers, as its own waker
    does: a test runner's check for leftover connections does not see it.
    `wake` and `close` must not run at once (a thread worker calls both
    under its lock): a closed descriptor's number may be reused.
    """

    def __init__(self, reactor: Any, onWake: Callable[[], object]) -> None:
        self._reactor = reactor
        self._onWake = onWake
        # (Both ends close on exec, as os.pipe makes them; non-blocking: a
        # full pipe means the reactor is waking up anyway.)
        self._r, self._w = os.pipe()
        self.closed = False
        try:
            os.set_blocking(self._r, False)
            os.set_blocking(self._w, False)
            internal = getattr(reactor, "_internalReaders", None)
            if isinstance(internal, set):
                internal.add(self)
            reactor.addReader(self)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._r

    def logPrefix(self) -> str:
        return "asynqueue-ThreadWorker"

    def doRead(self) -> None:
        """(The reactor) Take the wake-up bytes, then call onWake."""
        try:
            os.read(self._r, 4096)
        except OSError:
            pass  # (nothing there: woken by a read already done)
        self._onWake()

    def connectionLost(self, reason: object) -> None:
        """The reactor dropped it (it stops): nothing to do."""

    def wake(self) -> None:
        """(Any thread) Have the reactor call onWake soon."""
        if self.closed:
            return
        try:
            os.write(self._w, b"x")
        except OSError:
            pass  # a full pipe: the reactor wakes anyway

    def close(self) -> None:
        """(The reactor thread) Stop watching, and close both ends."""
        if self.closed:
            return
        self.closed = True
        self._reactor.removeReader(self)
        internal = getattr(self._reactor, "_internalReaders", None)
        if isinstance(internal, set):
            internal.discard(self)
        os.close(self._r)
        os.close(self._w)


def wakerFor(reactor: Any, onWake: Callable[[], object]) -> WakePipe | None:
    """
    A `WakePipe` for *reactor*, or None if it does not watch descriptors, or
    watches them with ``select`` (limited to descriptors below 1024: many
    thread workers would run out).
    """
    if not IReactorFDSet.providedBy(reactor) or type(reactor).__name__ == "SelectReactor":
        return None
    try:
        return WakePipe(reactor, onWake)
    except OSError:  # out of descriptors: the shared waker will do
        return None


def fromThread(reactor: Any, f: Callable[[], object]) -> Callable[[], None]:
    """
    A callable that, from any thread, has *reactor* call ``f()`` soon: the
    same as ``reactor.callFromThread(f)``, whose Python calls (the waker's,
    through Twisted's deprecated-module proxy of ``twisted.python.util``)
    cost more than its system call on a thread worker's round trip. For a
    reactor whose ``callFromThread`` and waker are the stock ones (every
    POSIX reactor), it queues the call and writes the waker's byte itself;
    for any other, it is ``callFromThread``.
    """
    from twisted.internet.base import ReactorBase

    try:
        from twisted.internet._signals import _UnixWaker
    except ImportError:  # (a Twisted that keeps its waker elsewhere)
        _UnixWaker = None  # type: ignore[assignment,misc]
    cls = type(reactor)
    waker = getattr(reactor, "waker", None)
    queue = getattr(reactor, "threadCallQueue", None)
    if (
        _UnixWaker is None
        or getattr(cls, "callFromThread", None) is not ReactorBase.callFromThread
        or getattr(cls, "wakeUp", None) is not ReactorBase.wakeUp
        or getattr(type(waker), "wakeUp", None) is not _UnixWaker.wakeUp
        or type(queue) is not list
    ):
        callFromThread = reactor.callFromThread
        return lambda: callFromThread(f)
    entry: tuple[Callable[[], object], tuple[()], dict[str, Any]] = (f, (), {})
    append = queue.append
    write = os.write

    def post() -> None:
        append(entry)  # (what callFromThread queues, and how the reactor runs it)
        try:
            write(waker.o, b"x")
        except (OSError, AttributeError):
            # A full pipe (the reactor wakes anyway), or a reactor that has
            # closed its waker and runs no more.
            pass

    return post

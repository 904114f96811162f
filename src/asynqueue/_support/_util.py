"""
Small tools: `DeferredTracker`, `DeferredLock`, `CallRunner` and helpers.

Everything here waits on events (a Deferred firing, a count changing, a
process exiting), never by polling on a timer. The one exception is
`killProcess` on systems without ``pidfd_open``, where it checks a bounded
number of times.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from .._iter._base import isIterator
from ._info import Info
from ._status import Status

__all__ = [
    "CallRunner",
    "DeferredLock",
    "DeferredTracker",
    "callAfterDeferred",
    "dropTrigger",
    "killProcess",
    "o2p",
    "p2o",
    "whenFired",
]

log = logging.getLogger("asynqueue")


def _reactor(clock: Any) -> Any:
    if clock is None:
        from twisted.internet import reactor

        return reactor
    return clock


def dropTrigger(reactor: Any, trigger: Any) -> None:
    """
    Remove the system event *trigger* (an ID from ``addSystemEventTrigger``)
    if it is still there; None does nothing. Returns None, for
    ``self._trigger = dropTrigger(reactor, self._trigger)``.
    """
    if trigger is not None:
        with contextlib.suppress(ValueError, KeyError):
            reactor.removeSystemEventTrigger(trigger)


def whenFired(d: Deferred[Any]) -> Deferred[None]:
    """
    A new Deferred that fires with None once *d* has fired either way.

    For handing out "tell me when it is done" to several waiters: each gets
    its own Deferred, and *d*'s result passes on unchanged.
    """
    notice: Deferred[None] = Deferred()

    def fired(result: Any) -> Any:
        notice.callback(None)
        return result

    d.addBoth(fired)
    return notice


# ---------------------------------------------------------------- pickling


def o2p(obj: Any) -> bytes:
    """Pickle *obj*; an empty list, tuple or dict gives ``b""``."""
    if isinstance(obj, (list, tuple, dict)) and not obj:
        return b""
    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def p2o(data: bytes | None, defaultObj: Any = None) -> Any:
    """Unpickle *data*; empty data gives *defaultObj*."""
    if not data:
        return defaultObj
    return pickle.loads(data)


# ----------------------------------------------------------------- tracker


class _Wait:
    __slots__ = ("d", "satisfied", "timer")

    def __init__(self, satisfied: Callable[[], bool], canceller: Callable[..., None]) -> None:
        self.satisfied = satisfied
        self.d: Deferred[bool] = Deferred(lambda _: canceller(self))
        self.timer: Any = None


class DeferredTracker:
    """
    Counts pending Deferreds and lets you wait until all, any or enough of
    them have fired.

    How it observes a Deferred: `put` appends one callback to the end of
    that Deferred's chain (as Twisted's ``DeferredList`` does)
    which notes the firing and returns its argument itself -- the very same
    value or Failure object. Twisted offers no other way to learn that a
    Deferred fired without polling. So the tracker never changes a result,
    never handles (swallows) a failure and never delays the chain; callbacks
    added before `put` run first, those added after see exactly what they
    would have seen without the tracker. What it counts is "the chain has
    reached the point where `put` was called", which is when that result is
    available to later callbacks.

    Every wait is event-driven: it fires True when its condition holds, or
    False once its ``timeout`` (seconds) has passed. After `quitWaiting`,
    every wait fires True at once.

    Args:
        interval, backoff: accepted for compatibility with the original's
            polling design; ignored.
        clock: an IReactorTime for timeouts (the global reactor by default).
    """

    def __init__(self, interval: Any = None, backoff: Any = None, *, clock: Any = None) -> None:
        self._clock = clock
        self._count = 0
        self._fired = 0
        self._quit = False
        self._waits: list[_Wait] = []

    def __len__(self) -> int:
        return self._count

    @property
    def count(self) -> int:
        """How many tracked Deferreds (plus manual waits) are pending."""
        return self._count

    @property
    def dCount(self) -> int:
        """`count`, by the original's name for it."""
        return self._count

    def put(self, d: Deferred[Any]) -> Deferred[Any]:
        """Track *d*; returns *d* itself (see the class docstring)."""
        if not isinstance(d, Deferred):
            raise TypeError(f"can only track Deferreds, not {d!r}")
        if self._quit:
            return d
        self._count += 1
        d.addBoth(self._observed)
        return d

    def _observed(self, result: Any) -> Any:
        try:
            self._dec()
        except Exception:
            log.exception("DeferredTracker bookkeeping failed")
        return result

    def _dec(self) -> None:
        if self._quit or self._count == 0:
            return
        self._count -= 1
        self._fired += 1
        self._check()

    def addWait(self) -> None:
        """Count one more pending thing, without a Deferred."""
        if not self._quit:
            self._count += 1

    def removeWait(self) -> None:
        """Count one pending thing less (never below zero)."""
        self._dec()

    def notWaiting(self) -> bool:
        """True if nothing is pending."""
        return self._quit or self._count == 0

    def deferToAll(self, timeout: float | None = None) -> Deferred[bool]:
        """Fires True once nothing is pending."""
        return self._wait(lambda: self._count == 0, timeout)

    def deferToAny(self, timeout: float | None = None) -> Deferred[bool]:
        """
        Fires True once any pending Deferred fires (or a wait is removed)
        after this call; at once if nothing is pending. Unlike the original,
        Deferreds put meanwhile do not postpone it.
        """
        if self._count == 0:
            return self._wait(lambda: True, timeout)
        fired = self._fired
        return self._wait(lambda: self._fired > fired or self._count == 0, timeout)

    def deferUntilFewer(self, N: int, timeout: float | None = None) -> Deferred[bool]:
        """Fires True once fewer than *N* are pending."""
        return self._wait(lambda: self._count < N, timeout)

    def quitWaiting(self) -> None:
        """Stop tracking: every current and future wait fires True now."""
        self._quit = True
        self._count = 0
        waits, self._waits = self._waits, []
        for wait in waits:
            self._release(wait, True)

    def _wait(self, satisfied: Callable[[], bool], timeout: float | None) -> Deferred[bool]:
        if self._quit or satisfied():
            return succeed(True)
        wait = _Wait(satisfied, self._forget)
        if timeout is not None:
            wait.timer = _reactor(self._clock).callLater(timeout, self._timedOut, wait)
        self._waits.append(wait)
        return wait.d

    def _forget(self, wait: _Wait) -> None:
        if wait in self._waits:
            self._waits.remove(wait)
        if wait.timer is not None and wait.timer.active():
            wait.timer.cancel()

    def _timedOut(self, wait: _Wait) -> None:
        wait.timer = None
        if wait in self._waits:
            self._waits.remove(wait)
            wait.d.callback(False)

    def _release(self, wait: _Wait, value: bool) -> None:
        if wait.timer is not None and wait.timer.active():
            wait.timer.cancel()
        wait.timer = None
        wait.d.callback(value)

    def _check(self) -> None:
        ready = [wait for wait in self._waits if wait.satisfied()]
        for wait in ready:
            self._waits.remove(wait)
        for wait in ready:
            self._release(wait, True)


# -------------------------------------------------------------------- lock


class DeferredLock:
    """
    A Deferred-based lock with VIP waiters and an orderly stop.

    ``acquire(vip=True)`` waiters go ahead of normal ones, first come first
    served among themselves. `stop` waits its turn behind the current
    waiters, runs the stoppers (`addStopper`) one after another, then leaves
    the lock open for good: later `acquire` calls fire at once and
    `release` does nothing.

    It also supports ``async with lock:`` and ``lock.run(f, *a, **kw)`` like
    Twisted's DeferredLock. ``allowZombies`` is accepted for compatibility.
    """

    def __init__(self, allowZombies: bool = False) -> None:
        self.locked = False
        self.waiting: list[Deferred[DeferredLock]] = []
        self._vips = 0  # the first _vips entries of `waiting` are VIP
        self._stoppers: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._stopD: Deferred[None] | None = None
        self.stopped = False

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "locked" if self.locked else "open"
        return f"<DeferredLock {state}, {len(self.waiting)} waiting>"

    def acquire(self, vip: bool = False) -> Deferred[DeferredLock]:
        """A Deferred firing with the lock once it is mine."""
        if self.stopped:
            return succeed(self)
        if not self.locked:
            self.locked = True
            return succeed(self)
        d: Deferred[DeferredLock] = Deferred(self._cancelAcquire)
        if vip:
            self.waiting.insert(self._vips, d)
            self._vips += 1
        else:
            self.waiting.append(d)
        return d

    def _cancelAcquire(self, d: Deferred[DeferredLock]) -> None:
        index = self.waiting.index(d)
        if index < self._vips:
            self._vips -= 1
        del self.waiting[index]

    def release(self) -> None:
        """Hand the lock to the next waiter, or open it."""
        if self.stopped:
            return
        if not self.locked:
            raise RuntimeError("release() of an unlocked DeferredLock")
        if self.waiting:
            if self._vips:
                self._vips -= 1
            self.waiting.pop(0).callback(self)
        else:
            self.locked = False

    def acquireAndRelease(self, vip: bool = False) -> Deferred[None]:
        """Fires (None) once every earlier waiter has had its turn."""

        def release(lock: DeferredLock) -> None:
            lock.release()

        return self.acquire(vip).addCallback(release)

    def run(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """Run ``f(*args, **kw)`` holding the lock; a Deferred of its result."""

        def locked(_: Any) -> Deferred[Any]:
            return maybeDeferred(f, *args, **kw).addBoth(unlock)

        def unlock(result: Any) -> Any:
            self.release()
            return result

        return self.acquire().addCallback(locked)

    async def __aenter__(self) -> DeferredLock:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def context(self, vip: bool = False) -> Iterator[Deferred[DeferredLock]]:
        """
        ``with lock.context() as d: yield d; ...`` inside inlineCallbacks:
        the lock is released when the block ends (or the acquisition
        abandoned, if the block ends before it fired).
        """
        d = self.acquire(vip)
        try:
            yield d
        finally:
            if d.called:
                if not self.stopped:
                    self.release()
            else:
                d.addErrback(lambda f: f.trap(defer.CancelledError))
                d.cancel()

    def addStopper(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """Have `stop` call ``f(*args, **kw)`` (awaiting a Deferred result)."""
        self._stoppers.append((f, args, kw))

    def stop(self) -> Deferred[None]:
        """Stop after the current waiters; fires once the stoppers have run."""
        if self._stopD is None:
            self._stopD = Deferred()
            self.acquire().addCallback(self._runStoppers)
        return whenFired(self._stopD)

    def _runStoppers(self, _: Any) -> None:
        stoppers, self._stoppers = self._stoppers, []

        def runNext(_: Any = None) -> None:
            if not stoppers:
                self._stopped()
                return
            f, args, kw = stoppers.pop(0)
            d = maybeDeferred(f, *args, **kw)
            d.addErrback(lambda failure: log.error("Lock stopper failed: %s", failure))
            d.addCallback(runNext)

        runNext()

    def _stopped(self) -> None:
        self.stopped = True
        self.locked = False
        waiting, self.waiting = self.waiting, []
        self._vips = 0
        for d in waiting:
            d.callback(self)
        assert self._stopD is not None
        self._stopD.callback(None)


# ----------------------------------------------------------------- runners


# CallRunner's statuses: the original's, in bytes.
_ERROR, _ITERATOR, _RESULT = (s.encode() for s in (Status.ERROR, Status.ITERATOR, Status.RESULT))


class CallRunner:
    """
    Runs a ``(f, args, kw)`` call tuple and reports ``(status, result)`` as
    the original did, statuses in bytes: ``(b"e", text)`` if it raised (what
    went wrong, the call and the traceback, `Info.aboutException`),
    ``(b"i", iterator)`` for an iterator (unless raw), else ``(b"r",
    result)``. A ``raw`` keyword in *kw* is removed and overrides the
    runner's ``raw`` for that call.

    With ``callStats=True``, the duration of every call that did not raise
    is appended to ``callTimes``.
    """

    def __init__(self, raw: bool = False, callStats: bool = False) -> None:
        self.raw = raw
        self.callStats = callStats
        self.callTimes: list[float] = []

    def __call__(self, callTuple: tuple[Callable[..., Any], Any, Any]) -> tuple[bytes, Any]:
        f, args, kw = callTuple
        kw = dict(kw or {})
        raw = kw.pop("raw", None)
        if raw is None:
            raw = self.raw
        started = time.perf_counter()
        try:
            result = f(*(args or ()), **kw)
        except Exception as e:
            return _ERROR, Info().setCall(f, args or (), kw).aboutException(exception=e)
        if self.callStats:
            self.callTimes.append(time.perf_counter() - started)
        if not raw and isIterator(result):
            return _ITERATOR, result
        return _RESULT, result


def callAfterDeferred(
    namespace: Any, dName: str, f: Callable[..., Any], *args: Any, **kw: Any
) -> Deferred[Any]:
    """
    Call ``f(*args, **kw)`` once ``namespace.<dName>`` (a Deferred, e.g. a
    start-up Deferred) has fired, and delete that attribute; call it now if
    there is no such pending Deferred. A Deferred of f's result. The waited-on
    Deferred's own result passes through untouched.
    """
    waitFor = getattr(namespace, dName, None)
    if isinstance(waitFor, Deferred) and not waitFor.called:
        result: Deferred[Any] = Deferred()

        def after(value: Any) -> Any:
            if getattr(namespace, dName, None) is waitFor:
                delattr(namespace, dName)
            maybeDeferred(f, *args, **kw).chainDeferred(result)
            return value

        waitFor.addBoth(after)
        return result
    if isinstance(waitFor, Deferred):
        delattr(namespace, dName)
    return maybeDeferred(f, *args, **kw)


# -------------------------------------------------------------- processes


def _exited(pid: int) -> bool:
    """True if *pid* has exited (a zombie counts), without reaping it."""
    try:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
    except ChildProcessError:
        pass  # not my child: look it up instead
    except (AttributeError, OSError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state in (b"Z", b"X")
    except (OSError, IndexError):
        return False


@implementer(IReadDescriptor)
class _PidWatcher:
    """Fires when a pidfd becomes readable, i.e. when its process exits."""

    def __init__(self, fd: int, reactor: Any, d: Deferred[bool]) -> None:
        self._fd = fd
        self._reactor = reactor
        self._d = d

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "killProcess"

    def doRead(self) -> None:
        self.done(True)

    def connectionLost(self, reason: Failure) -> None:
        self.done(True)

    def done(self, exited: bool) -> None:
        if self._fd < 0:
            return
        self._reactor.removeReader(self)
        os.close(self._fd)
        self._fd = -1
        self._d.callback(exited)


def _waitForExit(pid: int, timeout: float, reactor: Any) -> Deferred[bool]:
    """True once *pid* has exited, False if it still runs after *timeout*."""
    d: Deferred[bool] = Deferred()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return succeed(True)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        watcher = _PidWatcher(fd, reactor, d)
        reactor.addReader(watcher)
        timer = reactor.callLater(timeout, watcher.done, False)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        if _exited(pid):
            watcher.done(True)
        return d
    # No pidfd (not Linux 5.3+): a bounded number of checks.
    deadline = time.monotonic() + timeout

    def check(interval: float) -> None:
        if _exited(pid):
            d.callback(True)
        elif time.monotonic() >= deadline:
            d.callback(False)
        else:
            reactor.callLater(interval, check, min(interval * 2, 0.5))

    check(0.01)
    return d


def killProcess(pid: int, timeout: float = 5.0, reactor: Any = None) -> Deferred[bool]:
    """
    End process *pid*: SIGTERM, then SIGKILL if it is still running after
    *timeout* seconds. Fires True if it had to be signalled, False if it had
    already exited; fails with TimeoutError if even SIGKILL did not end it
    within *timeout*.

    Waiting is event-driven (a pidfd in the reactor). The process is not
    reaped: its parent (``subprocess.Popen``, Twisted's process reaper, ...)
    still collects the exit status.
    """
    reactor = _reactor(reactor)
    if _exited(pid):
        return succeed(False)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return succeed(False)

    def afterTerm(exited: bool) -> Any:
        if exited:
            return True
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        return _waitForExit(pid, timeout, reactor).addCallback(afterKill)

    def afterKill(exited: bool) -> bool:
        if not exited:
            raise TimeoutError(f"process {pid} survived SIGKILL for {timeout} seconds")
        return True

    return _waitForExit(pid, timeout, reactor).addCallback(afterTerm)

"""
`Prefetcherator`: the original's one-item-ahead stepper and its
``(value, isValid, moreLeft)`` protocol, which `Deferator` also accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure

from ._base import _NOTHING, isIterator

__all__ = ["Prefetcherator"]


class Prefetcherator:
    """
    Steps an iterator (or a next-callable) one item ahead, for the original
    ``(value, isValid, moreLeft)`` protocol.

    ``setup(iteratorOrCallable, *args, **kw)`` takes an iterator, or a
    callable returning the next value (or a Deferred of it) and raising
    StopIteration at the end. ``getNext()`` then gives a Deferred of
    ``(value, True, moreLeft)``, and ``(None, False, False)`` once done. An
    exception other than StopIteration is delivered as the errback of the
    ``getNext`` after the last good value; then it is done.
    """

    def __init__(self, ID: Any = None) -> None:
        self.ID = ID
        self._nextCall: Callable[[], Any] | None = None
        self._ahead: Any = _NOTHING  # a value, _NOTHING (end) or a Failure
        self._busy = False
        self._lock = defer.DeferredLock()

    def __repr__(self) -> str:
        return f"<Prefetcherator ID={self.ID!r}>"

    @property
    def moreLeft(self) -> bool:
        return self._ahead is not _NOTHING

    def isBusy(self) -> bool:
        """True while a step or a ``getNext`` is in progress."""
        return self._busy or self._lock.locked

    def setup(self, iteratorOrCallable: Any, *args: Any, **kw: Any) -> Deferred[bool]:
        """Start on *iteratorOrCallable*; False if already set up or unusable."""
        if self._nextCall is not None:
            return succeed(False)
        if isIterator(iteratorOrCallable):
            self._nextCall = iteratorOrCallable.__next__
        elif callable(iteratorOrCallable):
            self._nextCall = lambda: iteratorOrCallable(*args, **kw)
        else:
            return succeed(False)
        return self._step().addCallback(lambda _: True)

    def _step(self) -> Deferred[None]:
        self._busy = True

        def got(value: Any) -> None:
            self._ahead = value

        def failed(failure: Failure) -> None:
            self._ahead = _NOTHING if failure.check(StopIteration) else failure

        def idle(_: Any) -> None:
            self._busy = False

        assert self._nextCall is not None
        return maybeDeferred(self._nextCall).addCallbacks(got, failed).addBoth(idle)

    def getNext(self) -> Deferred[tuple[Any, bool, bool]]:
        """A Deferred of the next ``(value, isValid, moreLeft)``."""
        return self._lock.run(self._getNext)

    def _getNext(self) -> Any:
        ahead = self._ahead
        if self._nextCall is None or ahead is _NOTHING:
            return succeed((None, False, False))
        if isinstance(ahead, Failure):
            self._ahead = _NOTHING
            return fail(ahead)
        return self._step().addCallback(lambda _: (ahead, True, self.moreLeft))

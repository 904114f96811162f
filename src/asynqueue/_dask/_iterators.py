"""
The caller's end of an iterator result computed on Dask: `_RemoteIterator`.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from ._daskside import _Chunk


class ChunkSource(Protocol):
    """What a `_RemoteIterator` uses of its `DaskWorker` (named here, so that
    the worker's module imports this one and not the other way round)."""

    iterChunk: int
    _remoteIterators: weakref.WeakSet[Any]
    _closeRemoteSoon: Callable[[str | None, str | None], None]

    def _fetchChunk(self, token: str | None, where: str | None) -> Deferred[_Chunk]: ...


class _RemoteIterator:
    """
    The caller's end of an iterator result: items of the chunk in hand, and
    the next chunk fetched from the Dask worker (ahead of need) when more are
    left. Feeds a `Deferator` through its ``(value, isValid, moreLeft)``
    protocol.
    """

    def __init__(self, worker: ChunkSource, chunk: _Chunk) -> None:
        self._worker = worker
        self._items: deque[Any] = deque(chunk.items)
        self._more = chunk.more
        self._error = chunk.error
        self._token = chunk.token
        self._where = chunk.where
        self._fetching = False
        self._waiters: list[Deferred[None]] = []
        self._finalizer: Any = None
        if self._more:
            # Dropped before the end (stopped or abandoned): close the rest.
            self._finalizer = weakref.finalize(
                self, worker._closeRemoteSoon, chunk.token, chunk.where
            )
            self._finalizer.atexit = False
            worker._remoteIterators.add(self)

    def getNext(self) -> Any:
        """``(value, isValid, moreLeft)``, or a Deferred of it."""
        if self._items:
            value = self._items.popleft()
            if self._more and len(self._items) <= self._worker.iterChunk // 2:
                self._fetch()
            left = bool(self._items) or self._more or self._error is not None
            return value, True, left
        if self._error is not None:
            error, self._error = self._error, None
            return fail(error)
        if self._more:
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            self._fetch()
            return d.addCallback(lambda _: self.getNext())
        return None, False, False

    def _fetch(self) -> None:
        if self._fetching or not self._more:
            return
        self._fetching = True
        d = self._worker._fetchChunk(self._token, self._where)
        d.addCallbacks(self._arrived, self._failed)

    def _arrived(self, chunk: _Chunk) -> None:
        self._fetching = False
        self._items.extend(chunk.items)
        self._more = chunk.more
        if chunk.error is not None:
            self._error = chunk.error
        if not self._more:
            self._finished()
        self._wake()

    def _failed(self, failure: Failure) -> None:
        self._fetching = False
        self._more = False
        self._error = failure.value
        self._finished()
        self._wake()

    def _finished(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._worker._remoteIterators.discard(self)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> None:
        """Close the rest on the Dask worker now (on shutdown)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None

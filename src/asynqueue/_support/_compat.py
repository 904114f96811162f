"""
Names kept for code written against AsynQueue 0.9.x that our own design does
not need: `Priority` (``asynqueue.base``), `TestStuff` (``asynqueue.util``)
and `ChunkyString` (``asynqueue.wire``).

They are small and stand alone; nothing else in the package uses them.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from ..errors import QueueRunError

__all__ = ["ChunkyString", "Priority", "TestStuff"]


class Priority:
    """
    A priority heap with Deferred access: `get` fires with the smallest item
    as soon as there is one. Waiting getters are served oldest first.
    """

    def __init__(self) -> None:
        self.heap: list[Any] = []
        self._getters: list[Deferred[Any]] = []

    def put(self, item: Any) -> None:
        """Add *item*; it goes straight to the oldest waiting getter, if any."""
        if self._getters:
            self._getters.pop(0).callback(item)
        else:
            heapq.heappush(self.heap, item)

    def get(self) -> Deferred[Any]:
        """A Deferred firing with the smallest item (when there is one)."""
        if self.heap:
            return succeed(heapq.heappop(self.heap))
        d: Deferred[Any] = Deferred(self._getters.remove)
        self._getters.append(d)
        return d

    def cancel(self, selector: Callable[[Any], bool]) -> None:
        """Remove every waiting item for which ``selector(item)`` is true."""
        self.heap = [item for item in self.heap if not selector(item)]
        heapq.heapify(self.heap)

    def shutdown(self) -> None:
        """Fail every waiting getter with `QueueRunError`."""
        getters, self._getters = self._getters, []
        for d in getters:
            d.errback(Failure(QueueRunError("No more items forthcoming")))


class TestStuff:
    """Toy methods the original's tests and examples call (for testing only)."""

    __test__ = False  # not a pytest test class

    @staticmethod
    def divide(x: Any, y: Any) -> Any:
        return x / y

    def add(self, x: Any, y: Any) -> Any:
        return x + y

    def accumulate(self, y: Any) -> Any:
        self.x = getattr(self, "x", 0) + y
        return self.x

    def setStuff(self, N1: int, N2: int) -> TestStuff:
        """Make ``stuff``: *N2* strings of *N1* characters each."""
        self.stuff = ["x" * N1] * N2
        return self

    def stufferator(self) -> Iterator[str]:
        yield from self.stuff

    def blockingTask(self, x: Any, delay: float) -> Any:
        time.sleep(delay)
        return 2 * x


class ChunkyString:
    """
    Iterates a big string (or bytes) in slices of at most ``chunkSize``,
    dropping its reference to it at the end.
    """

    chunkSize = 2**15

    def __init__(self, bigString: Any) -> None:
        self.bigString: Any = bigString
        self._k = 0

    def __iter__(self) -> ChunkyString:
        return self

    def __next__(self) -> Any:
        text = self.bigString
        if text is None:
            raise StopIteration
        chunk = text[self._k : self._k + self.chunkSize]
        self._k += len(chunk)
        if self._k >= len(text):
            self.bigString = None
        if not chunk:
            raise StopIteration
        return chunk

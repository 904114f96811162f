"""
Toy wire-server universe of the original (module path ``asynqueue.misc``):
`TestMethods`, and `TestUniverse`, a `WireWorkerUniverse` offering them. For
trying out a `WireServer` (``asynqueue serve ... asynqueue.misc.TestUniverse``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ._remote._universe import WireWorkerUniverse

__all__ = ["TestMethods", "TestUniverse"]


class TestMethods:
    """Arithmetic, a blocking call and an iterator over made-up chunks."""

    __test__ = False  # not a pytest test class

    chars = "abcdefghijklmnopqrst"

    def add(self, x: Any, y: Any) -> Any:
        return x + y

    def divide(self, x: Any, y: Any) -> Any:
        return x / y

    def setStuff(self, N1: int, N2: int) -> None:
        """Make ``stuff``: *N1* byte strings of *N2* characters each."""
        chunk = "".join(self.chars[k % len(self.chars)] for k in range(N2)).encode()
        self.stuff = [chunk] * N1

    def getStuff(self) -> list[bytes]:
        return self.stuff

    def stuffSize(self) -> int:
        return len(self.stuff)

    def stufferator(self) -> Iterator[bytes]:
        yield from self.stuff

    def blockingTask(self, x: Any, delay: float) -> Any:
        time.sleep(delay)
        return 2 * x


class TestUniverse(TestMethods, WireWorkerUniverse):
    """A `WireWorkerUniverse` whose remote methods are those of `TestMethods`."""

    __test__ = False

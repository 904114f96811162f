"""
What every iteration module shares: the test of what counts as an iterator,
the batch sizes, and the end-of-items marker.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = [
    "BATCH_ITEMS",
    "BATCH_SECONDS",
    "SYNC_BATCH_ITEMS",
    "TURN_ITEMS",
    "Batch",
    "isIterator",
]

# Most items one thread round trip fetches. Large enough that the hand-off
# cost (a thread wake-up plus a reactor wake-up, tens of microseconds) is
# negligible per item; small enough that two batches in memory are cheap.
BATCH_ITEMS = 2048

# A batch stops filling after this long, so a slow generator still delivers
# its first items promptly instead of after BATCH_ITEMS of them.
BATCH_SECONDS = 0.01

# Items a producer fed from a synchronous source pulls per request, and
# writes per reactor turn before letting the reactor run other work.
SYNC_BATCH_ITEMS = 256
TURN_ITEMS = 2048

_NOTHING: Any = object()

# (items, more, failure): see the module docstring.
Batch = tuple[list[Any], bool, Failure | None]


def isIterator(obj: Any) -> bool:
    """True for iterators other than plain containers and Deferreds."""
    if isinstance(
        obj,
        (Deferred, str, bytes, bytearray, list, tuple, dict, set, frozenset,
         memoryview, range),
    ):  # fmt: skip
        return False
    return callable(getattr(obj, "__iter__", None)) and callable(getattr(obj, "__next__", None))

"""Placeholder: the iteration machinery (Deferator, producers) lands here."""

from __future__ import annotations

from typing import Any


def isIterator(obj: Any) -> bool:
    """True for iterators other than plain containers and Deferreds."""
    from twisted.internet.defer import Deferred

    if isinstance(obj, (Deferred, str, bytes, bytearray, list, tuple, dict, set,
                        frozenset, memoryview, range)):
        return False
    return callable(getattr(obj, "__iter__", None)) and callable(
        getattr(obj, "__next__", None)
    )

"""
Iterator streaming, the side that holds the iterator (a child process or a
remote server). Standard library only.

An iterator result stays where it was made. The other side asks for the
next batch of up to N items of iterator ID; this side answers with one
ITEMS message: the items it could make, whether more items follow, and
the error that ended the iterator, if any. The asking side decides how far ahead to
ask, which is its back-pressure: nothing is produced that was not asked
for.

A batch is cut short when making items takes long (``maxSeconds``), so that
a slow generator delivers its first items promptly rather than after N of
them.
"""

from __future__ import annotations

import itertools
from time import perf_counter

from ._codec import ITEMS, dumps, dumpsError, dumpsSmall
from ._framing import encode

TYPE_CHECKING = False
if TYPE_CHECKING:  # the child must not pay for importing typing
    from collections.abc import Callable
    from typing import Any

__all__ = ["IteratorTable", "encodeItems", "isIterator"]

_NOT_ITERATORS = (
    str,
    bytes,
    bytearray,
    memoryview,
    list,
    tuple,
    dict,
    set,
    frozenset,
    range,
)


def isIterator(obj: Any) -> bool:
    """True for iterators (generators, ``iter(...)``, map objects, ...), not containers."""
    if isinstance(obj, _NOT_ITERATORS):
        return False
    cls = type(obj)
    return callable(getattr(cls, "__iter__", None)) and callable(getattr(cls, "__next__", None))


_NOTHING = object()


class IteratorTable:
    """
    Iterators held for the other side, by integer ID.

    Each is read one item ahead, so that every batch says exactly whether
    more items follow (a `Deferator` relies on that).
    """

    def __init__(self) -> None:
        self._iterators: dict[int, list[Any]] = {}  # ID -> [iterator, lookahead]
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._iterators)

    def add(self, iterator: Any) -> int:
        """Hold *iterator*; returns its ID."""
        iterID = next(self._ids)
        self._iterators[iterID] = [iterator, _NOTHING]
        return iterID

    def close(self, iterID: int) -> None:
        """Forget an iterator, closing it if it is a generator."""
        entry = self._iterators.pop(iterID, None)
        close = None if entry is None else getattr(entry[0], "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass

    def closeAll(self) -> None:
        for iterID in list(self._iterators):
            self.close(iterID)

    def batch(
        self, iterID: int, maxItems: int, maxSeconds: float = 0.01
    ) -> tuple[list[Any], bool, BaseException | None]:
        """
        The next items of an iterator: ``(items, more, error)``.

        Makes up to *maxItems* items, or fewer once *maxSeconds* have passed
        (but at least one, unless the iterator ends), then one more to keep
        ahead. ``more`` says whether items follow; ``error`` is the
        exception (other than StopIteration) that ended the iterator. An
        ended iterator is forgotten; an unknown ID is an ended iterator.
        """
        entry = self._iterators.get(iterID)
        if entry is None:
            return [], False, None
        iterator, ahead = entry
        items: list[Any] = [] if ahead is _NOTHING else [ahead]
        entry[1] = _NOTHING
        append = items.append
        nxt = iterator.__next__
        try:
            deadline = perf_counter() + maxSeconds
            while len(items) < maxItems and (not items or perf_counter() < deadline):
                append(nxt())
            entry[1] = nxt()
        except StopIteration:
            del self._iterators[iterID]
            return items, False, None
        except BaseException as e:
            del self._iterators[iterID]
            return items, False, e
        return items, True, None


def encodeItems(
    iterID: int,
    items: list[Any],
    more: bool,
    error: BaseException | None,
    errorParts: Callable[[BaseException], list[Any]] = dumpsError,
) -> tuple[list[Any], bool]:
    """
    An encoded ITEMS message with a batch of iterator *iterID*, and whether
    more items follow. Items that do not pickle end the iteration there, with
    a ``pickle.PicklingError`` after the items before them.
    """
    try:
        itemParts = dumps(items)
    except Exception:
        import pickle

        good: list[Any] = []
        for item in items:
            try:
                dumps(item)
            except Exception as e:
                error = pickle.PicklingError(
                    f"cannot pickle an item of the iterator ({type(item).__qualname__}):"
                    f" {type(e).__name__}: {e}"
                )
                break
            good.append(item)
        itemParts = dumps(good)
        more = False
    errParts = errorParts(error) if error is not None else []
    envelope = dumpsSmall((iterID, len(itemParts), more, len(errParts)))
    return encode(ITEMS, [envelope, *itemParts, *errParts]), more

"""
Module-level callables for the large-payload tests.

Child processes import this module to unpickle them: standard library only.
"""

from __future__ import annotations

import pickle
from typing import Any


class View:
    """
    Data that unpickles without a copy, as NumPy arrays do: it keeps a
    memoryview of the buffer it was received in.
    """

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _rebuildView, (pickle.PickleBuffer(self.data),)


def _rebuildView(buffer: Any) -> View:
    return View(memoryview(buffer))


def view(size: int, fill: int) -> View:
    """A `View` of *size* bytes of *fill* (writable, so it travels out of band)."""
    return View(bytearray([fill]) * size)


def pattern(size: int, seed: int) -> bytes:
    """*size* bytes that differ from one seed (and one position) to the next."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


def blobs(size: int, seed: int) -> tuple[bytes, str, bytes]:
    """Two large bytes objects (the same one twice) around a string."""
    data = pattern(size, seed)
    return data, "between", data


def bigThenDie(size: int, delay: float) -> bytes:
    """A large result; the process kills itself *delay* seconds later, as it sends it."""
    import os
    import signal
    import threading
    import time

    data = pattern(size, 1)

    def die() -> None:
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=die, daemon=True).start()
    return data


_kept: list[Any] = []


def keep(obj: Any) -> int:
    """Keep *obj* in this process (a `View` keeps the buffer it came in); how many are kept."""
    _kept.append(obj)
    return len(_kept)


def kept() -> list[bytes]:
    """The bytes of the `View` objects kept so far, as they are now."""
    return [bytes(obj.data) for obj in _kept]


def release() -> None:
    """Let go of everything kept."""
    _kept.clear()


def checksum(data: Any) -> str:
    """A digest of *data*'s bytes (to check a large argument without sending it back)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def manyViews(count: int, size: int) -> list[View]:
    """*count* small `View` objects: each travels as an out-of-band buffer of its own."""
    return [View(bytearray([i % 251]) * size) for i in range(count)]


def viewTriples(count: int, size: int) -> Any:
    """A generator of *count* tuples of three small `View` objects (three buffers an item)."""
    for i in range(count):
        yield tuple(View(bytearray([(i + k) % 251]) * size) for k in range(3))

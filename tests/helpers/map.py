"""
Module-level callables for the map tests; process workers import this module,
so it imports only the standard library.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def failAt(x: int, bad: int = 5) -> int:
    if x == bad:
        raise KeyError(x)
    return x


def exitAt(x: int) -> int:
    """Kills the worker process on input 5."""
    if x == 5:
        os._exit(3)
    return x


def lockAt(x: int) -> Any:
    """Input 3 gives a result that cannot be pickled."""
    return threading.Lock() if x == 3 else x


class Unrebuildable(Exception):
    """Pickles, but does not unpickle (its constructor needs two arguments)."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")


def raiseUnrebuildable(x: int) -> int:
    if x == 2:
        raise Unrebuildable(x, x)
    return x

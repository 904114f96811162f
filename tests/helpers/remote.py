"""
Module-level callables for remote worker tests.

Server processes and their child processes import this module to unpickle
them, so it imports only the standard library.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def markThenSleep(directory: str, seconds: float) -> int:
    """Write ``<directory>/<pid>`` when started, then sleep; returns the pid."""
    Path(directory, str(os.getpid())).write_text("started")
    time.sleep(seconds)
    return os.getpid()


def tagAfter(tag: str, seconds: float) -> str:
    time.sleep(seconds)
    return tag


def sleepy(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def echo(value: Any) -> Any:
    return value


def squares(n: int) -> Iterator[int]:
    for i in range(n):
        yield i * i


class Evil:
    """Unpickling this creates the file *path* (proof of an unwanted unpickle)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (touch, (self.path,))

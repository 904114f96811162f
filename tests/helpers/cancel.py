"""
Module-level callables for the cancel tests.

Child processes and worker servers import this module to unpickle them, so
it imports only the standard library.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def pid() -> int:
    return os.getpid()


def sleepThenMark(path: str, seconds: float) -> int:
    """Sleep, then write *path*: the file proves that the call ran to its end."""
    time.sleep(seconds)
    Path(path).write_text("ran")
    return os.getpid()


def stubbornSleepThenMark(path: str, seconds: float) -> int:
    """`sleepThenMark` that swallows every Exception on the way (not a BaseException)."""
    try:
        time.sleep(seconds)
    except Exception:
        pass
    Path(path).write_text("ran")
    return os.getpid()


def markThenSleepThenMark(started: str, path: str, seconds: float) -> int:
    """Write *started*, then `sleepThenMark`: the test knows the call is running."""
    Path(started).write_text("started")
    return sleepThenMark(path, seconds)


def mark(path: str) -> str:
    Path(path).write_text("ran")
    return path


def deafSleepThenMark(path: str, seconds: float) -> int:
    """`sleepThenMark` with SIGUSR1 blocked: a call the child cannot interrupt."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    return sleepThenMark(path, seconds)


def slowItems(directory: str, seconds: float) -> Iterator[int]:
    """
    Yields 0, 1, ... every *seconds*, writing ``<directory>/<i>`` for each
    item made, and ``<directory>/closed`` when closed.
    """
    try:
        i = 0
        while True:
            time.sleep(seconds)
            Path(directory, str(i)).write_text("made")
            yield i
            i += 1
    finally:
        Path(directory, "closed").write_text("closed")


# A gate for calls that run in this process (thread workers, an in-process
# server or Dask cluster): they wait on it until a test opens it.
GATE = threading.Event()
waiting: list[str] = []


def waitAtGate(tag: str, limit: float = 30.0) -> str:
    """Wait (in a worker thread) until `GATE` opens; ``waiting`` shows who waits."""
    waiting.append(tag)
    try:
        GATE.wait(limit)
    finally:
        waiting.remove(tag)
    return tag

"""
Module-level callables for process worker tests.

Child processes import this module to unpickle them, so it imports only the
standard library (importing the test module itself would pull in Twisted
and make every child slow to start).
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

from asynqueue._process._child import ProcessBase

_state: dict[str, Any] = {}
_hoard: list[bytes] = []


def pid() -> int:
    return os.getpid()


def pidAfter(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def add(a: int, b: int) -> int:
    return a + b


def nothing() -> None:
    return None


def exitWith(code: int) -> None:
    os._exit(code)


def appendLine(path: str, text: str) -> str:
    """Append *text* as a line to the file at *path* (a side effect to count); returns it."""
    _append(path, text + "\n")
    return text


def closeSocketAndSleep(seconds: float) -> None:
    """Close the child's socket to its parent (file descriptor 3), and run on."""
    os.close(3)
    time.sleep(seconds)


def killSelf(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def dieMidResult() -> None:
    """Write the start of a RESULTS frame announcing 1 MB, then die."""
    header = struct.pack("!BBxxIQ", 17, 0, 1, 8 + 1_000_000)
    os.write(3, header + struct.pack("!Q", 1_000_000) + b"partial")
    os._exit(1)


def modules() -> list[str]:
    return sorted(m for m in sys.modules if m.startswith(("twisted", "zope", "asynqueue")))


def setState(key: str, value: Any) -> None:
    _state[key] = value


def getState(key: str) -> Any:
    return _state.get(key)


def hoard(megabytes: int) -> int:
    _hoard.append(b"x" * (megabytes << 20))
    return os.getpid()


def length(data: bytes) -> int:
    return len(data)


def makeBytes(size: int) -> bytes:
    return b"\xab" * size


def squares(n: int) -> Iterator[int]:
    for i in range(n):
        yield i * i


def failingAfter(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"gave up after {n}")


def dyingAfter(n: int, code: int) -> Iterator[int]:
    yield from range(n)
    os._exit(code)


def unpicklableResult() -> Any:
    import threading

    return threading.Lock()


def unpicklableItems() -> Iterator[Any]:
    import threading

    yield 1
    yield threading.Lock()


def _refuseRebuild(*args: Any) -> None:
    raise TypeError("this exception cannot be rebuilt")


class Unrebuildable(Exception):
    """
    Pickles but does not unpickle. (Its own reduction says so: an exception
    whose ``__init__`` merely wants other arguments unpickles anyway once
    ``distributed`` is imported, which teaches pickle to rebuild exceptions.)
    """

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a} and {b}")

    def __reduce__(self) -> Any:
        return _refuseRebuild, self.args


def raiseUnrebuildable() -> None:
    raise Unrebuildable(1, 2)


def raiseKeyError(key: str) -> None:
    raise KeyError(key)


class Counter(ProcessBase):
    """Counts calls per process, in its per-process data."""

    def bump(self) -> tuple[int, int]:
        self.data["n"] = self.data.get("n", 0) + 1
        return self.pid, self.n


def sigterm() -> int:
    return signal.SIGTERM


def _append(path: str, line: str) -> None:
    # One write to a file opened for appending: lines of several processes
    # never mix, and the file keeps the order in which they happened.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def logRun(path: str, tag: str, seconds: float = 0.0) -> str:
    """Note ``b tag`` and ``e tag`` in *path* around a sleep; returns *tag*."""
    _append(path, f"b {tag}\n")
    time.sleep(seconds)
    _append(path, f"e {tag}\n")
    return tag


def meet(folder: str, me: str, other: str, limit: float = 20.0) -> bool:
    """Say I am here, then wait for *other* to say so too: True if it did."""
    _append(os.path.join(folder, me), "here\n")
    deadline = time.monotonic() + limit
    while not os.path.exists(os.path.join(folder, other)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def slowTheFirstTime(path: str, tag: str, seconds: float) -> str:
    """Like ``logRun``, but the first run only notes its start and sleeps."""
    marker = f"{path}.{tag}"
    if not os.path.exists(marker):
        _append(marker, "ran\n")
        _append(path, f"b {tag}\n")
        time.sleep(seconds)
    return logRun(path, tag)


# The soak's tasks (tests/test_soak.py).


def soakValue(x: int, seconds: float = 0.0) -> int:
    if seconds:
        time.sleep(seconds)
    return x


def soakError(x: int) -> None:
    raise ValueError(f"soak {x}")


def soakExit() -> None:
    os._exit(3)


def soakLarge(tag: int, megabytes: int) -> bytes:
    return bytes([tag]) * (megabytes << 20)


def soakItems(n: int) -> Iterator[int]:
    yield from range(n)


def ownAlarm(seconds: float = 0.05, limit: float = 5.0) -> bool:
    """Time myself with SIGALRM, as user code may: True if my own handler ran."""
    rang: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: rang.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        deadline = time.monotonic() + limit
        while not rang and time.monotonic() < deadline:
            time.sleep(0.005)
        return rang == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ownUsr1(seconds: float) -> int:
    """Take SIGUSR1 for myself while I sleep *seconds*; how many came (then restore)."""
    came: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: came.append(signum))
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.005)
        return len(came)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def installAlarmHandler() -> bool:
    """Install a SIGALRM handler of my own and leave it there."""
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    return True


def childSpin() -> tuple[float, int, bool, int, int]:
    """
    This child's polling time before a blocking read, its skip cap, whether
    it has a poll board, its place there, and how many children may be busy
    while it polls (see *Waiting*).
    """
    import gc

    from asynqueue._process import _child

    (loop,) = [o for o in gc.get_objects() if type(o) is _child.ChildLoop]
    return loop.spinSeconds, _child.MAX_SPIN_SKIP, loop.board is not None, loop.slot, loop.pollers


def byNameTarget() -> str:
    """A function the tests rebind (in the parent or in a child)."""
    return "original"


def _replacement() -> str:
    return "replacement"


def rebindTarget() -> None:
    """Rebind `byNameTarget` in this process's copy of the module."""
    globals()["byNameTarget"] = _replacement


def byNameHeads() -> list[bytes]:
    """The heads of the calls this child has taken by name (see `_codec`)."""
    return sorted(sys.modules["asynqueue._wire._codec"]._byHead)  # type: ignore[attr-defined]


# A module that exists in the child only: its objects pickle there, and do
# not unpickle in the parent.


def makeChildOnlyModule() -> None:
    import types

    module = types.ModuleType("aq_child_only")
    exec("class Thing:\n    pass\n", module.__dict__)
    sys.modules["aq_child_only"] = module


def childOnlyThing() -> Any:
    return sys.modules["aq_child_only"].Thing()

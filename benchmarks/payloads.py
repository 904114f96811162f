"""
The callables every contender runs.

They live in an importable module (not ``__main__``) so that every process
pool pickles them by reference and the children import the same code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any


def noop() -> None:
    """The trivial call."""
    return None


# The profiler of this process, while `profileStart` has it running.
_profiler: Any = None


def profileStart() -> None:
    """
    Profile this process from now on (cProfile): run in a process worker's
    child, it sees everything the child does for the calls that follow.
    """
    global _profiler
    import cProfile

    _profiler = cProfile.Profile()
    _profiler.enable()


def profileStop(top: int = 25) -> str:
    """Stop what `profileStart` started; its *top* functions by own time, as text."""
    global _profiler
    import io
    import os
    import pstats

    profiler, _profiler = _profiler, None
    if profiler is None:
        return "not profiling"
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return f"process {os.getpid()}:\n{text.getvalue()}"


def spin(n: int) -> int:
    """A pure-Python loop of *n* rounds: CPU-bound work that holds the GIL."""
    total = 0
    for i in range(n):
        total += i ^ (i >> 3)
    return total


def spinSeconds(n: int, tries: int) -> float:
    """The shortest time `spin` (*n*) took over *tries* runs."""
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        spin(n)
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(seconds: float = 0.05) -> int:
    """How many `spin` rounds take about *seconds* on this machine (best of 5)."""
    probe = 200_000
    spin(probe)  # warm up
    return max(1000, int(probe * seconds / spinSeconds(probe, 5)))


_BIG: dict[int, bytes] = {}


def bigBytes(n: int) -> bytes:
    """
    A bytes result of *n* bytes: the same object on every call in a process,
    made once (like the bare-socket floor's ready-made payload). The large
    result workloads measure moving a result back, not making one: a new
    10 MB object costs what malloc's history decides, from nothing (calloc's
    untouched pages) to 10 ms of page faults, and that flipped from one run
    to the next.
    """
    data = _BIG.get(n)
    if data is None:
        data = _BIG[n] = b"\xab" * n  # touched, real pages
    return data


def bigList(n: int) -> list[int]:
    """A list of *n* ints."""
    return list(range(n))


def items(n: int) -> Iterator[int]:
    """A generator of *n* small items."""
    yield from range(n)


def stamp(tag: str) -> tuple[str, int]:
    """*tag* and when this call started (``time.monotonic_ns``, system-wide)."""
    return tag, time.monotonic_ns()


def sleepStamp(tag: str, seconds: float) -> tuple[str, int]:
    """Like `stamp`, then sleep *seconds*: a task with a real duration."""
    started = time.monotonic_ns()
    time.sleep(seconds)
    return tag, started


def busy(seconds: float) -> int:
    """Occupy a worker for *seconds*; returns when it ended (monotonic ns)."""
    time.sleep(seconds)
    return time.monotonic_ns()


def gate(path: str, timeout: float = 30.0) -> int:
    """Occupy a worker until the file *path* exists; returns when it saw it (ns)."""
    import os

    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.0002)
    return time.monotonic_ns()


def echo(x: object) -> object:
    """A trivial call with an argument and a result (the map workload's)."""
    return x


def spinFor(seconds: float) -> float:
    """Keep the CPU busy for *seconds* (wall clock); returns them."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds

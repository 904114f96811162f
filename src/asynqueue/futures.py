"""
``concurrent.futures`` executors backed by asynqueue: change one import.

::

    from asynqueue.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(4) as pool:
        futures = [pool.submit(pow, 2, n) for n in range(10)]
        print(sum(f.result() for f in as_completed(futures)))

- `ProcessPoolExecutor` and `ThreadPoolExecutor` take the standard library's
  arguments and run on a `ProcessQueue` or a `ThreadQueue`; `QueueExecutor`
  wraps any `TaskQueue` (remote and Dask queues too).
- ``executor.options(timeout=5, niceness=10, series="x").submit(...)``: the
  queue's per-call options, which ``submit`` has no room for (its keywords all
  go to the callable).
- Plain synchronous code needs no reactor: if none runs, Twisted's reactor
  is started in a daemon thread on first use and stopped at interpreter exit.
  A Twisted program makes its executors once its reactor runs (they use it):
  one made before the reactor first runs starts it in that thread for good,
  and one made in a thread that ran the reactor before is a RuntimeError.

The rest of ``concurrent.futures`` (``wait``, ``as_completed``, ``Future``,
the errors) is re-exported here, so that the one import is all a program needs.
This module itself imports only the standard library: the executors are
loaded on first use.
"""

from __future__ import annotations

from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    InvalidStateError,
    TimeoutError,
    as_completed,
    wait,
)
from typing import TYPE_CHECKING, Any

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "BrokenExecutor",
    "CancelledError",
    "Executor",
    "Future",
    "InvalidStateError",
    "ProcessPoolExecutor",
    "QueueExecutor",
    "ThreadPoolExecutor",
    "TimeoutError",
    "as_completed",
    "wait",
]

_LAZY = ("ProcessPoolExecutor", "ThreadPoolExecutor", "QueueExecutor")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ._futures import _executors

        return getattr(_executors, name)
    raise AttributeError(f"module 'asynqueue.futures' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


if TYPE_CHECKING:
    from ._futures._executors import ProcessPoolExecutor as ProcessPoolExecutor
    from ._futures._executors import QueueExecutor as QueueExecutor
    from ._futures._executors import ThreadPoolExecutor as ThreadPoolExecutor

"""
asynqueue: a Twisted task queue.

Dispatch callables to workers in the reactor thread, in threads, in
subprocesses, on remote hosts or on a Dask cluster, and get a Deferred for
each result::

    from asynqueue import ThreadQueue

    q = ThreadQueue(2)
    d = q.call(sum, [1, 2, 3])          # fires with 6
    ...
    yield q.shutdown()

Importing the package is light: it imports no reactor and no optional
back-end; each public name below is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._support._version import __version__ as __version__

# public name -> the public module that exports it (so the layout below can
# change without touching this table)
_EXPORTS: dict[str, str] = {
    "TaskQueue": ".base",
    "Task": ".tasks",
    "Status": ".tasks",
    "IWorker": ".interfaces",
    "AsyncWorker": ".workers",
    "NullQueue": ".null",
    "ThreadQueue": ".threads",
    "ThreadWorker": ".threads",
    "deferToThread": ".threads",
    "errors": ".errors",
    "Deferator": ".iteration",
    "IterationProducer": ".iteration",
    "ListConsumer": ".iteration",
    "deferToDelay": ".iteration",
    "Info": ".info",
    "showResult": ".info",
    "DeferredTracker": ".util",
    "DeferredLock": ".util",
    "DaskWorker": ".dask_worker",
    "WireWorker": ".wire",
    "WireServer": ".wire",
    "RemoteQueue": ".wire",
    "ProcessBase": ".process",
    "ProcessQueue": ".process",
    "ProcessWorker": ".process",
    "DaskQueue": ".dask_worker",
}

__all__ = [
    "AsyncWorker",
    "DaskQueue",
    "DaskWorker",
    "Deferator",
    "DeferredLock",
    "DeferredTracker",
    "IWorker",
    "Info",
    "IterationProducer",
    "ListConsumer",
    "NullQueue",
    "ProcessBase",
    "ProcessQueue",
    "ProcessWorker",
    "RemoteQueue",
    "Status",
    "Task",
    "TaskQueue",
    "ThreadQueue",
    "ThreadWorker",
    "WireServer",
    "WireWorker",
    "deferToDelay",
    "deferToThread",
    "errors",
    "showResult",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asynqueue' has no attribute {name!r}")
    if name == "errors":
        value: Any = importlib.import_module(module, __name__)
    else:
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from . import errors as errors
    from ._core._asyncworker import AsyncWorker as AsyncWorker
    from ._core._queue import TaskQueue as TaskQueue
    from ._core._task import Task as Task
    from ._dask import DaskQueue as DaskQueue
    from ._dask import DaskWorker as DaskWorker
    from ._iter._deferator import Deferator as Deferator
    from ._iter._deferator import deferToDelay as deferToDelay
    from ._iter._producers import IterationProducer as IterationProducer
    from ._iter._producers import ListConsumer as ListConsumer
    from ._process._child import ProcessBase as ProcessBase
    from ._process._parent import ProcessQueue as ProcessQueue
    from ._process._parent import ProcessWorker as ProcessWorker
    from ._support._info import Info as Info
    from ._support._info import showResult as showResult
    from ._support._status import Status as Status
    from ._support._util import DeferredLock as DeferredLock
    from ._support._util import DeferredTracker as DeferredTracker
    from ._threads._worker import ThreadQueue as ThreadQueue
    from ._threads._worker import ThreadWorker as ThreadWorker
    from ._threads._worker import deferToThread as deferToThread
    from .interfaces import IWorker as IWorker
    from .null import NullQueue as NullQueue
    from .wire import RemoteQueue as RemoteQueue
    from .wire import WireServer as WireServer
    from .wire import WireWorker as WireWorker

"""The queue: `TaskQueue` (original module path ``asynqueue.base``)."""

from ._core._queue import TaskQueue

__all__ = ["TaskQueue"]

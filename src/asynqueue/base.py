"""The queue: `TaskQueue` (original module path ``asynqueue.base``)."""

from ._queue import TaskQueue

__all__ = ["TaskQueue"]

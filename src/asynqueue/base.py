"""The queue: `TaskQueue` (original module path ``asynqueue.base``), and `Priority`."""

from ._compat import Priority
from ._queue import TaskQueue

__all__ = ["Priority", "TaskQueue"]

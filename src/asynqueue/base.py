"""The queue: `TaskQueue` (original module path ``asynqueue.base``), and `Priority`."""

from ._core._queue import TaskQueue
from ._support._compat import Priority

__all__ = ["Priority", "TaskQueue"]

"""
`Task`, one attempt at running a queued call (original path ``asynqueue.tasks``),
and the original's `TaskHandler`.
"""

from ._core._task import DO_LAST_PRIORITY, DO_NEXT_PRIORITY, Task
from ._core._taskhandler import TaskHandler

__all__ = ["DO_LAST_PRIORITY", "DO_NEXT_PRIORITY", "Task", "TaskHandler"]

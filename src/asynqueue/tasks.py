"""`Task`, one attempt at running a queued call (original path ``asynqueue.tasks``)."""

from ._core._task import DO_LAST_PRIORITY, DO_NEXT_PRIORITY, Task

__all__ = ["DO_LAST_PRIORITY", "DO_NEXT_PRIORITY", "Task"]

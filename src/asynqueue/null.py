"""`NullQueue`: a TaskQueue with one AsyncWorker, running tasks in the reactor thread."""

from __future__ import annotations

from typing import Any

from ._core._asyncworker import AsyncWorker
from ._core._queue import TaskQueue

__all__ = ["NullQueue"]


class NullQueue(TaskQueue):
    """A `TaskQueue` with one `AsyncWorker` attached; keywords go to TaskQueue."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.worker = AsyncWorker()
        self.d = self.attachWorker(self.worker)

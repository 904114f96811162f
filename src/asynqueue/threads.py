"""
Thread workers (original path ``asynqueue.threads``), and the original's
thread tools: `ThreadLooper` and the blocking-iterator bridges.
"""

from ._core._queue import TaskQueue
from ._threads._bridges import (
    Consumerator,
    Filerator,
    IterationGetter,
    OrderedItemProducer,
    PoolUser,
)
from ._threads._looper import ThreadLooper
from ._threads._worker import ThreadQueue, ThreadWorker, deferToThread

__all__ = [
    "Consumerator",
    "Filerator",
    "IterationGetter",
    "OrderedItemProducer",
    "PoolUser",
    "TaskQueue",
    "ThreadLooper",
    "ThreadQueue",
    "ThreadWorker",
    "deferToThread",
]

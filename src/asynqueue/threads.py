"""Thread workers (original path ``asynqueue.threads``)."""

from ._threads._worker import ThreadQueue, ThreadWorker, deferToThread

__all__ = ["ThreadQueue", "ThreadWorker", "deferToThread"]

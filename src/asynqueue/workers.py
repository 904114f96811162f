"""
Workers (original path ``asynqueue.workers``): `AsyncWorker` here, and the
other kinds re-exported, loaded on first use.
"""

from __future__ import annotations

from typing import Any

from ._core._asyncworker import AsyncWorker
from .interfaces import IWorker

__all__ = ["AsyncWorker", "IWorker", "ProcessWorker", "ThreadWorker"]


def __getattr__(name: str) -> Any:
    if name == "ThreadWorker":
        from ._threads._worker import ThreadWorker

        return ThreadWorker
    if name == "ProcessWorker":
        from ._process._parent import ProcessWorker

        return ProcessWorker
    raise AttributeError(f"module 'asynqueue.workers' has no attribute {name!r}")

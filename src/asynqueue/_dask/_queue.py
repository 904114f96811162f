"""
`DaskQueue`: a `TaskQueue` with one `DaskWorker`.
"""

from __future__ import annotations

from typing import Any

from distributed import Client
from twisted.internet.defer import Deferred

from .._core._queue import TaskQueue
from ._worker import DaskWorker


class DaskQueue(TaskQueue):
    """
    A `TaskQueue` with one `DaskWorker`.

    ``DaskQueue()`` starts an embedded ``LocalCluster`` (closed on shutdown);
    ``DaskQueue("tcp://host:8786")`` or ``DaskQueue(client)`` uses an existing
    cluster. Keywords of `DaskWorker` go to the worker, others to `TaskQueue`.
    """

    _WORKER_KEYWORDS = (
        "slots",
        "series",
        "raw",
        "restrictions",
        "priorities",
        "allowedFailures",
        "clusterOptions",
        "iterChunk",
        "connectTimeout",
        "closeTimeout",
    )

    def __init__(self, address: Any = None, **kw: Any) -> None:
        workerKw = {k: kw.pop(k) for k in self._WORKER_KEYWORDS if k in kw}
        super().__init__(**kw)
        self.worker = DaskWorker(address, reactor=self._reactor, **workerKw)
        self.d = self.attachWorker(self.worker)

    @property
    def client(self) -> Client | None:
        """The ``distributed.Client`` (None until connected)."""
        return self.worker.client

    @property
    def cluster(self) -> Any:
        """The embedded cluster, if I started one."""
        return self.worker.cluster

    def whenReady(self) -> Deferred[DaskWorker]:
        """A Deferred firing once the worker is connected to the cluster."""
        return self.worker.whenReady()

"""Shared test helpers: fake reactors and hand-driven workers."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from asynqueue.interfaces import IWorker


class FakeReactor(Clock):
    """A Clock that can be 'stopped', for the default error policy."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1
        self.running = False


@implementer(IWorker)
class ManualWorker:
    """
    A worker whose tasks finish only when the test says so, one at a time.

    ``log`` records every task it was given, in order.
    """

    cQualified: list[Any] = []

    def __init__(self, series: tuple[Any, ...] = (), name: str = "w") -> None:
        self.iQualified = list(series)
        self.name = name
        self.log: list[Any] = []
        self.current: list[Any] = []  # [(task, readyD)]
        self.resignator: Any = None
        self.stopped = False
        self.crashed = False

    def setResignator(self, f: Any) -> None:
        self.resignator = f

    def run(self, task: Any) -> Deferred[None]:
        self.log.append(task)
        ready: Deferred[None] = Deferred()
        self.current.append((task, ready))
        return ready

    def finish(self, status: str = "r", result: Any = None) -> Any:
        task, ready = self.current.pop(0)
        task.callback((status, result))
        ready.callback(None)
        return task

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def crash(self) -> list[Any]:
        self.crashed = True
        tasks = [t for t, _ in self.current]
        self.current = []
        return tasks

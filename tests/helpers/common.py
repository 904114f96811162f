"""
Shared test helpers: fake reactors and hand-driven workers, and for tests
with real processes and a real reactor, waiting, collecting and reaping.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
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


def isGone(pid: int) -> bool:
    """True if *pid* no longer runs (gone, or a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def watchWorkerGroups(
    worker: Any, groups: list[list[Any]], pick: Any = lambda call: call[0]
) -> list[list[Any]]:
    """
    Note in *groups* each group *worker* is given from now on (a task of its
    ``groupRunner``, see `asynqueue._core._dispatch`, *Groups*): ``pick`` of
    each of its ``(f, args, kw)`` calls, the callable by default.
    """
    run = worker.run

    def watching(task: Any) -> Any:
        f, args, _ = task.callTuple
        if f is worker.groupRunner:
            groups.append([pick(call) for call in args[0]])
        return run(task)

    worker.run = watching
    return groups


def watchGroups(q: Any, pick: Any = lambda call: call[0]) -> list[list[Any]]:
    """The groups *q*'s workers are given from now on (see `watchWorkerGroups`)."""
    groups: list[list[Any]] = []
    for slot in q._dispatcher._slotList:
        watchWorkerGroups(slot.worker, groups, pick)
    return groups


@inlineCallbacks
def waitUntil(predicate: Any, limit: float = 10.0) -> Any:
    """Wait (without blocking the reactor) until *predicate()* is true; fires with None."""
    from twisted.internet import reactor  # not at import: FakeReactor users need none

    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {predicate}")
        yield deferLater(reactor, 0.01, lambda: None)


def waitUntilSync(predicate: Any, limit: float = 10.0) -> None:
    """`waitUntil` for a thread other than the reactor's: blocks while it polls."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {predicate}")
        time.sleep(0.01)


@inlineCallbacks
def collect(dr: Any) -> Any:
    """The items of a Deferator, as a list."""
    items = []
    for d in dr:
        items.append((yield d))
    return items


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill *proc* if it still runs, wait for it and close its stdout pipe (if any)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()

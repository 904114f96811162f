"""
Series and niceness: two job streams share one worker at a 2:1 rate.

An "urgent" stream (niceness 0) and a "background" stream (niceness 10) each
queue 30 jobs before a single worker is attached. A series at niceness N+10
gets half the turns of one at N, so while both have work the worker runs two
urgent jobs for each background job; within a series, jobs run in the order
they were queued. A ``doNext`` call, queued last, still runs first::

    python examples/niceness_demo.py
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, task

from asynqueue import TaskQueue, ThreadWorker

JOBS = 30
started: list[str] = []


def job(name: str) -> str:
    """One unit of work: note when it starts, then take a little time."""
    started.append(name)
    time.sleep(0.002)
    return name


@defer.inlineCallbacks
def main(reactor: Any) -> Any:
    q = TaskQueue(returnFailure=True)  # no worker yet: let both backlogs build up
    calls = []
    for i in range(JOBS):
        calls.append(q.call(job, f"U{i}", series="urgent", niceness=0))
        calls.append(q.call(job, f"b{i}", series="background", niceness=10))
    calls.append(q.call(job, "NEXT", doNext=True))
    q.attachWorker(ThreadWorker())
    yield defer.gatherResults(calls)
    yield q.shutdown()

    print("start order:", " ".join(started))
    first = started[1:31]  # after the doNext job, while both streams have work
    urgent = sum(name.startswith("U") for name in first)
    background = len(first) - urgent
    print(f"first job: {started[0]}")
    print(f"next {len(first)} jobs: {urgent} urgent, {background} background")
    inOrder = all(
        [n for n in started if n[0] == s] == [f"{s}{i}" for i in range(JOBS)] for s in "Ub"
    )
    print(f"each series in queued order: {inOrder}")


if __name__ == "__main__":
    task.react(main)

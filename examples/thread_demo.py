"""
A ThreadQueue at work: blocking calls run in threads, off the reactor.

Twenty blocking calls of 50 ms (stand-ins for file or network I/O) run on two
thread workers, while a LoopingCall shows that the reactor stays free to do
other work meanwhile::

    python examples/thread_demo.py
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, task

from asynqueue import ThreadQueue


def slowSquare(x: int) -> int:
    """Square *x*, slowly: the sleep blocks its thread, as I/O would."""
    time.sleep(0.05)
    return x * x


@defer.inlineCallbacks
def main(reactor: Any) -> Any:
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1

    heartbeat = task.LoopingCall(tick)
    heartbeat.clock = reactor
    heartbeat.start(0.01)
    q = ThreadQueue(2, returnFailure=True)
    t0 = time.perf_counter()
    results = yield defer.gatherResults([q.call(slowSquare, x) for x in range(20)])
    seconds = time.perf_counter() - t0
    heartbeat.stop()
    yield q.shutdown()
    print(f"squares: {results}")
    print(f"20 blocking calls of 50 ms on 2 threads took {seconds:.2f} s")
    print(f"meanwhile the reactor thread ran a 10 ms heartbeat {ticks} times")


if __name__ == "__main__":
    task.react(main)

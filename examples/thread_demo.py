"""A ThreadQueue at work: blocking calls run in two threads, off the reactor."""

import time

from twisted.internet import defer, task

from asynqueue import ThreadQueue


def slowSquare(x: int) -> int:
    time.sleep(0.05)  # blocking I/O stand-in
    return x * x


@defer.inlineCallbacks
def main(reactor):
    q = ThreadQueue(2, returnFailure=True)
    t0 = time.perf_counter()
    results = yield defer.gatherResults([q.call(slowSquare, x) for x in range(20)])
    print(f"squares: {results}")
    print(f"20 blocking calls of 50 ms on 2 threads took {time.perf_counter() - t0:.2f} s")
    yield q.shutdown()


if __name__ == "__main__":
    task.react(main)

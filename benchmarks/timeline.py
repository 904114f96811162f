"""
Where a process round trip's time goes: one `ProcessQueue(1)` call after
another, each stamped at the steps it passes, medians printed step by step.

    python -m benchmarks.timeline            # 4,000 round trips
    python -m benchmarks.timeline --calls 1000
    python -m benchmarks.timeline --spin none  # the child blocks at once when idle

The parent's steps are stamped by wrapping a few methods of the dispatcher,
the worker, the wire client and the socket channel (about 0.2 µs each); the
child's by wrapping its loop's write, and by the call itself, which returns
the child's clock (``time.perf_counter_ns`` reads the same monotonic clock in
every process). What cProfile cannot say, this does: how long each step of
the critical path takes when it runs cold, once per round trip.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
from typing import Any

_CHILD_STAMPS: list[int] = []


def stampChildWrites() -> None:
    """(Run in the child) stamp before and after each write of its loop."""
    loop = next(o for o in gc.get_objects() if type(o).__name__ == "ChildLoop")
    write, clock = loop._write, time.perf_counter_ns

    def stamped(buffers: Any) -> None:
        _CHILD_STAMPS.append(clock())
        write(buffers)
        _CHILD_STAMPS.append(clock())

    loop._write = stamped


def takeChildStamps() -> list[int]:
    """(Run in the child) the stamps so far; none are kept."""
    stamps = _CHILD_STAMPS[:]
    del _CHILD_STAMPS[:]
    return stamps


STEPS = [
    ("call", "TaskQueue.call"),
    ("submit", "Dispatcher.submit"),
    ("run", "ProcessWorker.run"),
    ("flush", "WireClient.flush (the CALLS message)"),
    ("send", "SocketChannel.send (sendmsg)"),
    ("sent", "sendmsg returned"),
    ("child", "the call runs in the child"),
    ("write", "the child writes its RESULTS"),
    ("written", "the child's writev returned"),
    ("doRead", "SocketChannel.doRead (the reactor woke)"),
    ("decode", "FrameDecoder.bufferUpdated (recv_into returned)"),
    ("results", "WireClient._results"),
    ("report", "Dispatcher._onReport"),
    ("caller", "the caller has its result"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timeline")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument(
        "--spin",
        default="default",
        help="ProcessQueue(spin=...): seconds, 'none', or 'default' (the default)",
    )
    options = parser.parse_args(argv)
    spin: dict[str, Any] = {}
    if options.spin != "default":
        spin["spin"] = None if options.spin == "none" else float(options.spin)

    from twisted.internet import defer, task

    from asynqueue._core import _dispatch
    from asynqueue._process import _parent
    from asynqueue._wire import _channel, _client, _framing
    from asynqueue.process import ProcessQueue

    # By module name, not as ``__main__``'s (which would be pickled by value,
    # its stamp list with it, a fresh copy per call).
    from benchmarks.timeline import stampChildWrites, takeChildStamps

    marks: dict[str, int] = {}
    clock = time.perf_counter_ns

    def stamp(cls: Any, name: str, key: str, after: str | None = None) -> None:
        method = getattr(cls, name)

        def stamped(self: Any, *args: Any, **kw: Any) -> Any:
            marks[key] = clock()
            result = method(self, *args, **kw)
            if after is not None:
                marks[after] = clock()
            return result

        setattr(cls, name, stamped)

    stamp(_dispatch.Dispatcher, "submit", "submit")
    stamp(_parent.ProcessWorker, "run", "run")
    stamp(_client.WireClient, "flush", "flush")
    stamp(_channel.SocketChannel, "send", "send", "sent")
    stamp(_channel.SocketChannel, "doRead", "doRead")
    stamp(_framing.FrameDecoder, "bufferUpdated", "decode")
    stamp(_client.WireClient, "_results", "results")
    stamp(_dispatch.Dispatcher, "_onReport", "report")

    @defer.inlineCallbacks
    def go(reactor: Any) -> Any:
        q = ProcessQueue(1, returnFailure=True, **spin)
        yield q.call(stampChildWrites)
        for _ in range(300):
            yield q.call(clock)
        yield q.call(takeChildStamps)  # (its own answer is stamped: two stamps)
        rows = []
        for _ in range(options.calls):
            marks.clear()
            marks["call"] = clock()
            marks["child"] = yield q.call(clock)
            marks["caller"] = clock()
            rows.append(dict(marks))
        stamps = yield q.call(takeChildStamps)
        yield q.shutdown()
        # Two stamps per answer, after the two of `takeChildStamps`'s own.
        pairs = [(stamps[i], stamps[i + 1]) for i in range(2, len(stamps), 2)]
        for row, (before, after) in zip(rows, pairs, strict=True):
            row["write"], row["written"] = before, after
        setting = f", spin={options.spin}" if spin else ""
        print(f"{options.calls:,} round trips of ProcessQueue(1{setting}), medians:\n")
        print("| from | to | µs |\n| --- | --- | ---: |")
        for (a, labelA), (b, labelB) in itertools.pairwise(STEPS):
            dt = statistics.median(row[b] - row[a] for row in rows) / 1000
            print(f"| {labelA} | {labelB} | {dt:.1f} |")
        total = statistics.median(row["caller"] - row["call"] for row in rows) / 1000
        print(f"| call | result | **{total:.1f}** (median round trip) |")

    task.react(go)


if __name__ == "__main__":
    main()

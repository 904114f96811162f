"""
A/B of a thread worker's late doorbells, in one process.

    python -m benchmarks.ab_late_bells            # 16 rounds of 4,000 round trips each way
    python -m benchmarks.ab_late_bells --rounds 8 --trips 2000

Sequential round trips of a trivial call on ``ThreadQueue(2)``, each call
made from the callback of the one before (``inlineCallbacks``), in blocks
that alternate the doorbell rung at once (``LATE_BELLS_LIMIT = 0``) and rung
when the delivery ends (the default; see ``asynqueue._threads._worker``).
On this VM two runs of the same program differ by more than the change,
so both sides are measured in the same process, block after block, and
the report counts the blocks each side wins as well as the medians.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from . import payloads
from ._ab import alternating, report
from ._reactor import runUntilDone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab_late_bells")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--trips", type=int, default=4000)
    args = parser.parse_args(argv)

    from twisted.internet.defer import inlineCallbacks

    from asynqueue import ThreadQueue
    from asynqueue._threads import _worker

    late = _worker.LATE_BELLS_LIMIT
    sides = {"at once": 0.0, "late": late}
    figures: dict[str, list[float]] = {name: [] for name in sides}

    @inlineCallbacks
    def measure() -> Any:
        q = ThreadQueue(2)
        noop = payloads.noop
        try:
            yield q.call(noop)
            for name, limit in alternating(sides, args.rounds):
                _worker.LATE_BELLS_LIMIT = limit
                yield q.call(noop)  # (the thread's wait after it is the side's)
                t0 = time.perf_counter()
                for _ in range(args.trips):
                    yield q.call(noop)
                figures[name].append((time.perf_counter() - t0) / args.trips * 1e6)
        finally:
            _worker.LATE_BELLS_LIMIT = late
            yield q.shutdown()

    runUntilDone(measure)
    title = f"ThreadQueue(2), sequential round trip, µs ({args.rounds} blocks each way)"
    report(title, {f"doorbell {k}": v for k, v in figures.items()}, lambda v: f"{v:.1f}")
    wins = sum(a < b for a, b in zip(figures["late"], figures["at once"], strict=True))
    print(f"  late faster in {wins} of {args.rounds} pairs of blocks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

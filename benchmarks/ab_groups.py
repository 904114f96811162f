"""
A/B of a queue's groups, in one process.

    python -m benchmarks.ab_groups                  # ProcessQueue(2), 6 blocks each way
    python -m benchmarks.ab_groups --threads        # ThreadQueue(2)
    python -m benchmarks.ab_groups --blocks 4 --calls 10000

``ProcessQueue(2)`` (or ``ThreadQueue(2)``), 20,000 trivial calls at once (the dispatch row), in
blocks that alternate a backlog's plain calls sent in groups (the default,
see ``asynqueue._core._dispatch``, *Groups*) and one task per call
(``GROUP_MAX = 1``), the same queue and children throughout. On this VM
two runs of one program differ by more than many changes, so both sides
are measured in the same process, block after block.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from . import payloads
from ._ab import alternating, report
from ._reactor import runUntilDone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab_groups")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--threads", action="store_true", help="ThreadQueue(2) instead")
    args = parser.parse_args(argv)

    from twisted.internet.defer import inlineCallbacks

    from asynqueue._core import _window
    from asynqueue.process import ProcessQueue
    from asynqueue.threads import ThreadQueue

    from .workloads import collect

    n = args.calls
    noop = payloads.noop
    groupMax = _window.GROUP_MAX
    sides = {"one task per call": 1, f"groups (≤ {groupMax})": groupMax}
    figures: dict[str, list[float]] = {name: [] for name in sides}

    @inlineCallbacks
    def measure() -> Any:
        q = ThreadQueue(2) if args.threads else ProcessQueue(2)
        try:
            yield q.call(noop)
            for size in sides.values():  # (untimed: warm both ways)
                _window.GROUP_MAX = size
                yield collect([q.call(noop) for _ in range(n)])
            for name, size in alternating(sides, args.blocks):
                _window.GROUP_MAX = size
                t0 = time.perf_counter()
                yield collect([q.call(noop) for _ in range(n)])
                figures[name].append(n / (time.perf_counter() - t0))
        finally:
            _window.GROUP_MAX = groupMax
            yield q.shutdown()

    runUntilDone(measure)
    kind = "ThreadQueue" if args.threads else "ProcessQueue"
    title = f"{kind}(2), {n:,} trivial calls at once, calls/s ({args.blocks} blocks each way)"
    report(title, figures, lambda v: f"{v:,.0f}")
    a, b = (statistics.median(v) for v in figures.values())
    print(f"  groups / one task per call: x{b / a:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

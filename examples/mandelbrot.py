"""
Render the Mandelbrot set with a ProcessQueue: rows in parallel, one PNG.

Each row is one call; the worker processes compute rows while the reactor
collects them, then the standard library writes the PNG::

    python examples/mandelbrot.py                          # mandelbrot.png
    python examples/mandelbrot.py -o docs/mandelbrot.png   # the README's image
    python examples/mandelbrot.py --width 960 --workers 4

The row function lives in the installed package
(`asynqueue.examples.mandelbrot`), so worker processes import it by name.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet import defer, task

from asynqueue.examples.mandelbrot import row, writePNG


def makeQueue(threads: bool, workers: int | None) -> Any:
    """Process workers (one per core by default), or threads for comparison."""
    if threads:
        from asynqueue import ThreadQueue

        return ThreadQueue(workers or 2, returnFailure=True)
    from asynqueue.process import ProcessQueue

    if workers is None:
        return ProcessQueue(returnFailure=True)
    return ProcessQueue(workers, returnFailure=True)


@defer.inlineCallbacks
def main(reactor: Any, args: argparse.Namespace) -> Any:
    width, height = args.width, args.width * 2 // 3
    q = makeQueue(args.threads, args.workers)
    workers = len(q)
    t0 = time.perf_counter()
    try:
        rows = yield defer.gatherResults(
            [q.call(row, y, width, height, args.iterations) for y in range(height)],
            consumeErrors=True,
        )
    finally:
        yield q.shutdown()
    seconds = time.perf_counter() - t0
    path = writePNG(args.output, width, height, rows)
    kind = "threads" if args.threads else "processes"
    print(f"wrote {path}: {width} x {height} pixels, {height} rows on {workers} {kind}")
    print(f"rendered in {seconds:.2f} s")


def parseArgs(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="mandelbrot.png", help="the PNG file")
    parser.add_argument("--width", type=int, default=480, help="pixels (height: 2/3 of it)")
    parser.add_argument("--iterations", type=int, default=200, help="escape-time limit")
    parser.add_argument("--workers", type=int, help="worker count (default: one per core)")
    parser.add_argument("--threads", action="store_true", help="use threads, not processes")
    return parser.parse_args(argv)


if __name__ == "__main__":
    task.react(main, [parseArgs()])

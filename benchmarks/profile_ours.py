"""
Profile our queues' hot paths in the reactor thread (and in process workers).

    python -m benchmarks.profile_ours                 # dispatch and latency, cProfile
    python -m benchmarks.profile_ours --top 30 --calls 20000 --rounds 2000
    python -m benchmarks.profile_ours --process       # ProcessQueue(2), children too
    python -m benchmarks.profile_ours --pyinstrument  # a call tree instead

*dispatch*: ``--calls`` trivial calls submitted at once to ThreadQueue(2)
(``--process``: ProcessQueue(2)).
*latency*: ``--rounds`` sequential round trips of a trivial call.

Only the reactor thread is profiled (cProfile sees one thread); the worker
threads' share shows up as time the reactor spends waiting in ``epoll``.
With ``--process`` each child profiles itself too (`payloads.profileStart`,
run on every worker by ``update``) and reports after each block.

The unprofiled figures come with the time spent in the garbage collector:
a full collection (generation 2) scans every object in the process, and a
burst of thousands of waiting calls triggers a few of them. The profilers
charge that time to whichever function happened to allocate.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import time
from typing import Any

from . import payloads
from .workloads import collect


def _profiled(label: str, useInstrument: bool, top: int) -> Any:
    """A context manager that profiles its block and prints the hot spots."""
    import contextlib

    @contextlib.contextmanager
    def manager() -> Any:
        if useInstrument:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002)
            profiler.start()
            t0 = time.perf_counter()
            yield
            elapsed = time.perf_counter() - t0
            profiler.stop()
            print(f"\n=== {label}: {elapsed * 1000:.0f} ms (pyinstrument) ===")
            print(profiler.output_text(unicode=False, color=False, show_all=False))
            return
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        yield
        profile.disable()
        elapsed = time.perf_counter() - t0
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("tottime").print_stats(top)
        print(f"\n=== {label}: {elapsed * 1000:.0f} ms under cProfile ===")
        print(text.getvalue())

    return manager()


class GCTimer:
    """Counts garbage collections and the time they take, by generation."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            generation = info["generation"]
            self.counts[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._start

    def __enter__(self) -> GCTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self._callback)

    def __str__(self) -> str:
        parts = [
            f"gen{g} {n}x {s * 1000:.1f} ms"
            for g, (n, s) in enumerate(zip(self.counts, self.seconds, strict=True))
        ]
        return f"GC {sum(self.seconds) * 1000:.1f} ms ({', '.join(parts)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_ours")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument("--process", action="store_true", help="ProcessQueue(2), children too")
    args = parser.parse_args(argv)

    from twisted.internet import defer, task

    from asynqueue import ThreadQueue
    from asynqueue.process import ProcessQueue

    @defer.inlineCallbacks
    def children(start: bool) -> Any:
        """Start, or stop and print, the children's profilers (process workers only)."""
        if not args.process:
            return
        if start:
            yield q.update(payloads.profileStart, ephemeral=True)
            return
        texts = yield q.update(payloads.profileStop, args.top, ephemeral=True)
        for text in texts:
            print(f"--- child {text}")

    q: Any = None

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        nonlocal q
        q = (
            ProcessQueue(2, returnFailure=True)
            if args.process
            else ThreadQueue(2, returnFailure=True)
        )
        yield collect([q.call(payloads.noop) for _ in range(200)])
        # Unprofiled figures first, for reference.
        with GCTimer() as dispatchGC:
            t0 = time.perf_counter()
            yield collect([q.call(payloads.noop) for _ in range(args.calls)])
            rate = args.calls / (time.perf_counter() - t0)
        with GCTimer() as latencyGC:
            t0 = time.perf_counter()
            for _ in range(args.rounds):
                yield q.call(payloads.noop)
            rtt = (time.perf_counter() - t0) / args.rounds * 1e6
        print(f"unprofiled: dispatch {rate:,.0f} calls/s, {dispatchGC}")
        print(f"unprofiled: mean round trip {rtt:.1f} µs, {latencyGC}")

        yield children(True)
        with _profiled(f"dispatch of {args.calls:,} calls", args.pyinstrument, args.top):
            yield collect([q.call(payloads.noop) for _ in range(args.calls)])
        yield children(False)
        yield children(True)
        with _profiled(f"latency, {args.rounds:,} round trips", args.pyinstrument, args.top):
            for _ in range(args.rounds):
                yield q.call(payloads.noop)
        yield children(False)
        yield q.shutdown()

    task.react(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

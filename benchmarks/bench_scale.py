"""
Scale: does the cost of a call stay flat as the queue grows?

    python benchmarks/bench_scale.py [--quick] [--json]

For each worker kind (``ThreadQueue(2)``, ``ProcessQueue(2)``), each backlog
size (10,000 and 1,000,000 calls; ``--quick``: 10,000 and 100,000) and
without series or with 1,000 of them, a fresh subprocess:

1. warms the queue (its workers are up and have run a few calls);
2. makes all the calls in one go, holding their Deferreds as a user would:
   the workers' pipelining windows take the first few dozen, the rest wait in
   the queue. Enqueue time per call and memory per queued call (the growth of
   the resident set, Deferreds included) are measured here;
3. lets the reactor drain them and times it (drain rate, calls/s), and
   reports how much the peak resident set grew over the whole burst.

The ratios compare each row with the same worker kind at 10,000 calls
without series (1.0 is a flat cost), and with the same backlog without
series (what 1,000 series cost). The 10,000-call rows are medians of
`SMALL_REPS` runs, the large ones of `BIG_REPS`, with and without series
in turn.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SMALL = 10_000
SERIES = 1_000
# (The machine's speed swings by a third from one run to the next, over
# seconds: a process queue's 1,000,000-call drain read 94,000 and 159,000
# calls/s an hour apart, and 96,000-158,000 in six runs in a row; the
# parent's CPU per call 6.3-10.3 µs for the same work. Each row is the
# median of several runs, with and without series in turn.)
SMALL_REPS = 9
BIG_REPS = 5


def _rss() -> int:
    """The resident set size of this process, in bytes."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measureOne(kind: str, n: int, series: int, profile: int = 0) -> dict[str, Any]:
    """
    One configuration, in this process (run it in a fresh one). *profile*:
    print the top *profile* functions of the drain under cProfile on stderr.
    """
    from twisted.internet import defer

    from benchmarks import payloads

    if kind == "threads":
        from asynqueue.threads import ThreadQueue

        q: Any = ThreadQueue(2)
    else:
        from asynqueue.process import ProcessQueue

        q = ProcessQueue(2)
    result: dict[str, Any] = {}

    @defer.inlineCallbacks
    def main() -> Any:
        yield defer.gatherResults([q.call(payloads.noop) for _ in range(200)])
        gc.collect()
        peakBefore = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        before = _rss()
        call, noop = q.call, payloads.noop
        start = time.perf_counter()
        if series:
            ds = [call(noop, series=i % series) for i in range(n)]
        else:
            ds = [call(noop) for _ in range(n)]
        enqueue = time.perf_counter() - start
        grown = _rss() - before
        left = [n]
        finished: defer.Deferred[None] = defer.Deferred()

        def one(_: Any) -> None:
            left[0] -= 1
            if not left[0]:
                finished.callback(None)

        for d in ds:
            d.addBoth(one)
        del ds
        profiler = cProfile.Profile() if profile else None
        cpuStart = time.process_time()
        threadStart = time.thread_time()  # the reactor thread's own
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        yield finished
        if profiler is not None:
            profiler.disable()
        drain = time.perf_counter() - start
        cpu = time.process_time() - cpuStart
        reactorCpu = time.thread_time() - threadStart
        if profiler is not None:
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(profile)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.update(
            enqueue_us=enqueue / n * 1e6,
            bytes_per_call=grown / n,
            drain=n / drain,
            drain_cpu_us=cpu / n * 1e6,
            drain_reactor_cpu_us=reactorCpu / n * 1e6,
            peak_growth_mb=max(0, peak - peakBefore) / 2**20,
        )
        yield q.shutdown()

    from benchmarks._reactor import runUntilDone

    runUntilDone(main)
    return result


def run(quick: bool) -> list[dict[str, Any]]:
    """Every configuration, each in a fresh subprocess; the rows with ratios."""
    big = 100_000 if quick else 1_000_000
    rows: list[dict[str, Any]] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)

    def one(kind: str, n: int, series: int) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--one", kind, str(n), str(series)],
            capture_output=True, text=True, env=env, timeout=1800,
        )  # fmt: skip
        if proc.returncode:
            raise RuntimeError(f"bench_scale failed: {proc.stderr[-2000:]}")
        r: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return r

    for kind in ("threads", "processes"):
        base = None
        for n in (SMALL, big):
            # A 10,000-call drain lasts a tenth of a second: a moment's load
            # swings it, so each backlog runs several times (with and without
            # series in turn) and each figure is the median.
            reps = SMALL_REPS if n == SMALL else BIG_REPS
            runs: dict[int, list[dict[str, Any]]] = {0: [], SERIES: []}
            for _ in range(reps):
                for series in runs:
                    runs[series].append(one(kind, n, series))
            plain = 1.0
            for series, results in runs.items():
                r = {k: statistics.median(x[k] for x in results) for k in results[0]}
                if base is None:
                    base = r["drain"]
                if not series:
                    plain = r["drain"]
                label = "ThreadQueue(2)" if kind == "threads" else "ProcessQueue(2)"
                rows.append(
                    {
                        "queue": label,
                        "queued calls": f"{n:,}",
                        "series": f"{series:,}" if series else "none",
                        "enqueue µs/call": round(r["enqueue_us"], 2),
                        "bytes/queued call": round(r["bytes_per_call"]),
                        "drain calls/s": round(r["drain"]),
                        "drain vs 10,000 no series": round(r["drain"] / base, 2),
                        "drain vs no series": round(r["drain"] / plain, 2),
                        "peak RSS growth MB": round(r["peak_growth_mb"]),
                    }
                )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--quick", action="store_true", help="100,000 instead of 1,000,000")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "N", "SERIES"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="TOP",
        help="with --one KIND N SERIES: cProfile the drain, print the TOP functions on stderr",
    )
    args = parser.parse_args(argv)
    if args.one:
        kind, n, series = args.one
        print(json.dumps(measureOne(kind, int(n), int(series), args.profile)))
        return 0
    rows = run(args.quick)
    print(json.dumps(rows) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script: find the benchmarks package
    sys.exit(main())

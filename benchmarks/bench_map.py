"""
Parallel map benchmark: `TaskQueue.map` and the ``asynqueue map`` command
next to the map functions of the peers, 2 workers each, in one run.

- **map: N trivial inputs** (``math.sqrt`` over ``range(N)``, every result
  iterated by the caller): ``q.map`` on ``ProcessQueue(2)`` (``async for``),
  a loop of ``q.call`` (all submitted, then every Deferred awaited), and
  ``multiprocessing.Pool(2).imap`` at chunksize 1 and at ``Pool.map``'s own
  default (N / 8), ``ProcessPoolExecutor(2).map`` at chunksize 1 and 256,
  joblib ``Parallel(n_jobs=2)`` (its own automatic batching) and
  ``ThreadPoolExecutor(2).map``. Goal: ours at least as fast as the best
  chunked peer, and at least 5 times the ``q.call`` loop.
- **map: N inputs of ~5 ms** (a CPU-bound loop of 5 ms): ``q.map`` against
  the ``q.call`` loop. Goal: not slower (batching must not starve a worker).
- **command: N lines** (the lines ``1`` to ``N`` on stdin, stdout to
  /dev/null, wall time of the whole process): ``asynqueue map math:sqrt``
  (process workers, ``--threads``, ``--ordered``) and the 2-process
  `multiprocessing.Pool` script `benchmarks/map_pool_script.py` writing the
  same JSON lines, at chunksize 256 and 1. Goals: within 1.5 times the
  chunked script, and 5 times faster than before batching (11.9 s for
  200,000 lines on the development VM, issue 14).

"vs ours" is the contender's time over ours (x > 1: ours is faster). Each
figure is the median of the repetitions; every repetition runs all
contenders of a row one after another, so they share the machine's load.
In the trivial row, ``q.map`` and the chunked peers (~50 ms a run) are
repeated 15 times side by side, ``q.map`` first and last in turn; the
others (seconds a run) 3 times.
The peers' pools are started (and warmed) before any of ours, so that
their forked children inherit nothing of our reactor or worker processes.
Figures are printed, never asserted. Standalone::

    python benchmarks/bench_map.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
BEFORE_SECONDS = 11.9  # `seq 1 200000 | asynqueue map math:sqrt` before batching (issue 14)


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"trivial": 50_000, "slow": 400, "lines": 50_000, "reps": 1, "quickReps": 3}
    return {"trivial": 200_000, "slow": 2_000, "lines": 200_000, "reps": 3, "quickReps": 15}


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure in a subprocess (a reactor of its own); the rows."""
    from benchmarks.bench_remote import runScript

    return runScript(__file__, quick, 1800)


# ---------------------------------------------------------------- peers


def timed(f: Callable[[], int], n: int) -> float:
    """Seconds that *f* takes; it must return how many results it iterated."""
    t0 = time.perf_counter()
    count = f()
    seconds = time.perf_counter() - t0
    if count != n:
        raise RuntimeError(f"{count} results instead of {n}")
    return seconds


def count(iterable: Any) -> int:
    k = 0
    for _ in iterable:
        k += 1
    return k


class Peers:
    """The peers' pools, started and warmed before any of ours."""

    def __init__(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        self.pool = multiprocessing.Pool(WORKERS)
        self.ppe = ProcessPoolExecutor(WORKERS)
        self.tpe = ThreadPoolExecutor(WORKERS)
        try:
            import joblib

            self.joblib: Any = joblib
        except ImportError:
            self.joblib = None
        self.chunked(1000)  # warm: every child started
        self.trivial(1000)

    def chunked(self, n: int) -> dict[str, float]:
        """Seconds of each chunked peer for *n* trivial inputs (the quick ones:
        ~50 ms each, measured more often than the others)."""
        defaultChunk, extra = divmod(n, WORKERS * 4)
        defaultChunk += bool(extra)
        return {
            f"Pool.imap, chunksize {defaultChunk} (Pool.map's)": timed(
                lambda: count(self.pool.imap(math.sqrt, range(n), defaultChunk)), n
            ),
            "ProcessPoolExecutor.map, chunksize 256": timed(
                lambda: count(self.ppe.map(math.sqrt, range(n), chunksize=256)), n
            ),
        }

    def trivial(self, n: int) -> dict[str, float | str]:
        """Seconds of each other peer for *n* trivial inputs."""
        out: dict[str, float | str] = {
            "Pool.imap, chunksize 1": timed(
                lambda: count(self.pool.imap(math.sqrt, range(n), 1)), n
            ),
            "ProcessPoolExecutor.map, chunksize 1": timed(
                lambda: count(self.ppe.map(math.sqrt, range(n))), n
            ),
            "ThreadPoolExecutor.map": timed(lambda: count(self.tpe.map(math.sqrt, range(n))), n),
        }
        if self.joblib is None:
            out["joblib Parallel(n_jobs=2)"] = 'n/a: pip install -e ".[bench]"'
        else:
            parallel = self.joblib.Parallel(n_jobs=WORKERS)
            delayed = self.joblib.delayed
            out["joblib Parallel(n_jobs=2)"] = timed(
                lambda: count(parallel(delayed(math.sqrt)(x) for x in range(n))), n
            )
        return out

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
        self.ppe.shutdown()
        self.tpe.shutdown()


# ---------------------------------------------------------------- ours


async def oursMap(q: Any, f: Callable[..., Any], inputs: Sequence[Any]) -> float:
    t0 = time.perf_counter()
    k = 0
    async for _ in q.map(f, inputs):
        k += 1
    seconds = time.perf_counter() - t0
    if k != len(inputs):
        raise RuntimeError(f"{k} results instead of {len(inputs)}")
    return seconds


async def oursCalls(q: Any, f: Callable[..., Any], inputs: Sequence[Any]) -> float:
    from twisted.internet.defer import Deferred

    t0 = time.perf_counter()
    done: Deferred[None] = Deferred()
    left = [len(inputs)]

    def one(_: Any) -> None:
        left[0] -= 1
        if not left[0]:
            done.callback(None)

    for x in inputs:
        q.call(f, x).addBoth(one)
    await done
    return time.perf_counter() - t0


# ---------------------------------------------------------------- the command


def commandSeconds(argv: list[str], linesFile: str) -> float:
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), *paths])
    with open(linesFile, "rb") as stdin:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, env=env, check=False)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}")
    return seconds


def commandRows(sz: dict[str, Any]) -> dict[str, list[float]]:
    n = sz["lines"]
    script = str(Path(__file__).resolve().parent / "map_pool_script.py")
    cli = [sys.executable, "-m", "asynqueue", "map", "-w", str(WORKERS)]
    contenders = {
        "asynqueue map math:sqrt": [*cli, "math:sqrt"],
        "asynqueue map --threads": [*cli, "--threads", "math:sqrt"],
        "asynqueue map --ordered": [*cli, "--ordered", "math:sqrt"],
        "asynqueue map --chunksize 1": [*cli, "--chunksize", "1", "math:sqrt"],
        "Pool(2).imap_unordered script, chunksize 256": [sys.executable, script, "256"],
        "Pool(2).imap_unordered script, chunksize 1": [sys.executable, script, "1"],
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(f"{i}\n" for i in range(1, n + 1)))
    try:
        for _ in range(sz["reps"]):
            for name, argv in contenders.items():
                times[name].append(commandSeconds(argv, f.name))
    finally:
        os.unlink(f.name)
    return times


# ---------------------------------------------------------------- rows


def row(workload: str, contender: str, seconds: float | str, ours: float, goal: str = "") -> Any:
    if isinstance(seconds, str):
        return {"workload": workload, "contender": contender, "seconds": seconds}
    return {
        "workload": workload,
        "contender": contender,
        "seconds": round(seconds, 3),
        "vs ours": f"x{seconds / ours:.2f}",
        "goal": goal,
    }


def check(ok: bool) -> str:
    return "✔" if ok else "✘"


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure(quick: bool) -> list[dict[str, Any]]:
    sz = sizes(quick)
    rows: list[dict[str, Any]] = []

    # The command first: its subprocesses then have the machine to themselves.
    times = commandRows(sz)
    label = f"command: {sz['lines']:,} lines"
    ours = median(times["asynqueue map math:sqrt"])
    script = median(times["Pool(2).imap_unordered script, chunksize 256"])
    before = BEFORE_SECONDS * sz["lines"] / 200_000
    single = median(times["asynqueue map --chunksize 1"])
    goal = (
        f"≤1.5x the chunked script (x{ours / script:.2f} {check(ours <= 1.5 * script)}),"
        f" ≥5x faster than one input per call (x{single / ours:.1f}"
        f" {check(single >= 5 * ours)}; before batching, ~{before:.1f} s on a quiet VM)"
    )
    for name, values in times.items():
        rows.append(row(label, name, median(values), ours, goal if name.startswith("asyn") and
                        "--" not in name else ""))  # fmt: skip

    peers = Peers()
    try:
        rows += measureInReactor(sz, peers)
    finally:
        peers.close()
    return rows


def measureInReactor(sz: dict[str, Any], peers: Peers) -> list[dict[str, Any]]:
    from twisted.internet import defer

    from asynqueue.process import ProcessQueue
    from benchmarks import payloads

    rows: list[dict[str, Any]] = []

    async def main() -> None:
        q = ProcessQueue(WORKERS)
        try:
            await oursMap(q, math.sqrt, list(range(1000)))  # warm: children started
            n = sz["trivial"]
            inputs = range(n)  # as the peers get them
            mapTimes: list[float] = []
            callTimes: list[float] = []
            peerTimes: dict[str, list[Any]] = {}
            chunkedTimes: dict[str, list[float]] = {}
            # The ~50 ms contenders, side by side many times (one such run is
            # at the mercy of a moment's load), ours first and last in turn.
            for rep in range(sz["quickReps"]):
                if rep % 2 == 0:
                    mapTimes.append(await oursMap(q, math.sqrt, inputs))
                for name, value in peers.chunked(n).items():
                    chunkedTimes.setdefault(name, []).append(value)
                if rep % 2 == 1:
                    mapTimes.append(await oursMap(q, math.sqrt, inputs))
            for _ in range(sz["reps"]):
                callTimes.append(await oursCalls(q, math.sqrt, inputs))
                for name, value in peers.trivial(n).items():
                    peerTimes.setdefault(name, []).append(value)
            peerTimes.update(chunkedTimes)
            ours = median(mapTimes)
            calls = median(callTimes)
            best = min(median(v) for v in chunkedTimes.values())
            goal = (
                f"≥1.0x the best chunked peer (x{best / ours:.2f} {check(best >= ours)}),"
                f" ≥5x the q.call loop (x{calls / ours:.1f} {check(calls >= 5 * ours)})"
            )
            label = f"map: {n:,} trivial inputs"
            rows.append(row(label, "ProcessQueue(2).map", ours, ours, goal))
            rows.append(row(label, "ProcessQueue(2), a q.call loop", calls, ours))
            for name, values in peerTimes.items():
                value = values[0] if isinstance(values[0], str) else median(values)
                rows.append(row(label, name, value, ours))

            n = sz["slow"]
            inputs = [0.005] * n
            mapTimes, callTimes = [], []
            for _ in range(sz["reps"]):
                mapTimes.append(await oursMap(q, payloads.spinFor, inputs))
                callTimes.append(await oursCalls(q, payloads.spinFor, inputs))
            ours, calls = median(mapTimes), median(callTimes)
            label = f"map: {n:,} inputs of ~5 ms"
            goal = f"not slower than the q.call loop (x{calls / ours:.2f} {check(calls >= ours)})"
            rows.append(row(label, "ProcessQueue(2).map", ours, ours, goal))
            rows.append(row(label, "ProcessQueue(2), a q.call loop", calls, ours))
        finally:
            await q.shutdown()

    from benchmarks._reactor import runUntilDone

    runUntilDone(lambda: defer.ensureDeferred(main()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    rows = measure(args.quick)
    if args.json:
        print(json.dumps(rows))
    else:
        from benchmarks.report import genericTable

        print(genericTable(rows))


if __name__ == "__main__":
    main()

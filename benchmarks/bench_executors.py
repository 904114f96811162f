"""
Executors benchmark: `asynqueue.futures` next to ``concurrent.futures``,
the same workload through the same ``Executor`` interface, 2 workers each.

- **dispatch**: N trivial calls submitted at once (``submit``), then every
  result waited for; calls per second.
- **map**: ``list(executor.map(echo, range(N)))`` with the default
  ``chunksize=1``; items per second.
- **latency**: sequential ``submit(noop).result()`` round trips; p50, µs.

Each figure is measured in a fresh interpreter per repetition (no contender
inherits another's threads, processes or reactor), ours and the standard
pool's one after the other, so both see the same machine, however busy; the
figure is the median over the repetitions, and the ratio (ours over the
standard pool's, > 1 means ours is better) is the robust part on a loaded
machine. Figures are printed, never asserted. Standalone::

    python benchmarks/bench_executors.py [--quick | --smoke] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2

# key -> (module, class, kind)
CONTENDERS = {
    "aq-ppe": ("asynqueue.futures", "ProcessPoolExecutor", "process"),
    "ppe": ("concurrent.futures", "ProcessPoolExecutor", "process"),
    "aq-tpe": ("asynqueue.futures", "ThreadPoolExecutor", "thread"),
    "tpe": ("concurrent.futures", "ThreadPoolExecutor", "thread"),
}
# Goals: ours over the standard pool of the same kind.
GOALS = {("process", "dispatch"): 2.0, ("process", "map"): 2.0, "thread": 0.9}


def sizes(mode: str) -> dict[str, int]:
    return {
        "full": {"dispatch": 20_000, "map": 20_000, "latency": 2_000, "reps": 5, "warm": 200},
        "quick": {"dispatch": 10_000, "map": 10_000, "latency": 500, "reps": 3, "warm": 100},
        "smoke": {"dispatch": 200, "map": 200, "latency": 20, "reps": 1, "warm": 4},
    }[mode]


def measureOne(key: str, sz: dict[str, int]) -> dict[str, float]:
    """One repetition of every workload on contender *key*, in this process."""
    import importlib

    from benchmarks.payloads import echo, noop

    module, name, _ = CONTENDERS[key]
    executor = getattr(importlib.import_module(module), name)(WORKERS)
    try:
        for f in [executor.submit(noop) for _ in range(sz["warm"])]:
            f.result()
        list(executor.map(echo, range(sz["warm"])))
        n = sz["dispatch"]
        t0 = time.perf_counter()
        for f in [executor.submit(noop) for _ in range(n)]:
            f.result()
        dispatch = n / (time.perf_counter() - t0)
        n = sz["map"]
        t0 = time.perf_counter()
        assert len(list(executor.map(echo, range(n)))) == n
        mapped = n / (time.perf_counter() - t0)
        samples = []
        for _ in range(sz["latency"]):
            t0 = time.perf_counter()
            executor.submit(noop).result()
            samples.append(time.perf_counter() - t0)
        latency = statistics.median(samples) * 1e6
    finally:
        executor.shutdown(wait=True)
    return {"dispatch": dispatch, "map": mapped, "latency": latency}


def runChild(key: str, mode: str) -> dict[str, float]:
    from benchmarks.run import childEnv

    command = [sys.executable, str(Path(__file__).resolve()), "--one", key, "--mode", mode]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=childEnv())
    if proc.returncode != 0:
        raise RuntimeError(f"{key} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


UNITS = {"dispatch": "calls/s", "map": "items/s", "latency": "µs (p50)"}
LABELS = {
    "dispatch": "dispatch: {dispatch:,} trivial submits",
    "map": "map: {map:,} items, chunksize=1",
    "latency": "latency: submit().result(), p50",
}


def run(quick: bool, mode: str | None = None) -> list[dict[str, Any]]:
    """Measure (each repetition in fresh interpreters); the rows of the table."""
    mode = mode or ("quick" if quick else "full")
    sz = sizes(mode)
    figures: dict[str, list[dict[str, float]]] = {key: [] for key in CONTENDERS}
    for _ in range(sz["reps"]):
        for key in CONTENDERS:  # ours and the standard pool, alternately
            figures[key].append(runChild(key, mode))
    rows = []
    for kind, ours, theirs in (("process", "aq-ppe", "ppe"), ("thread", "aq-tpe", "tpe")):
        for workload in ("dispatch", "map", "latency"):
            mine = statistics.median(f[workload] for f in figures[ours])
            std = statistics.median(f[workload] for f in figures[theirs])
            ratio = std / mine if workload == "latency" else mine / std
            goal = GOALS.get((kind, workload), GOALS["thread"] if kind == "thread" else None)
            row: dict[str, Any] = {
                "figure": f"{kind}: " + LABELS[workload].format(**sz),
                "unit": UNITS[workload],
                "asynqueue.futures": float(mine),
                "concurrent.futures": float(std),
                "ratio": f"x{ratio:.2f}",
            }
            if workload != "latency" and goal is not None:
                row["goal"] = f"≥ x{goal:g} {'✔' if ratio >= goal else '✘'}"
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["full", "quick", "smoke"], default="full")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else args.mode
    if args.one:
        print(json.dumps(measureOne(args.one, sizes(mode))))
        return 0
    rows = run(mode == "quick", mode)
    if args.json:
        print(json.dumps(rows))
    else:
        from benchmarks.report import genericTable

        print(genericTable(rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script: the payloads and report importable
    raise SystemExit(main())

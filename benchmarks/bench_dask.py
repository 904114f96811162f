"""
Dask benchmark: calls through a `DaskWorker` next to raw ``Client.submit``,
both on the same in-process ``LocalCluster`` (2 workers x 2 threads).

- **dispatch**: N trivial calls submitted at once, then all results
  gathered; calls per second. Raw ``client.submit`` hands Dask the whole
  backlog; the DaskWorker keeps only ``slots`` calls in flight, so that our
  scheduler picks what runs next: by default, enough per cluster thread to
  cover about one Dask round trip of work (1 to 16 per thread; trivial calls
  get the 16). A second DaskWorker row with a fixed large ``slots`` shows
  what a deeper Dask-side queue would add.
- **latency**: sequential trivial calls, each waiting for its result; p50 and
  p99 in microseconds.

"vs raw" is our figure over the raw one's: how many times slower (dispatch)
or longer (latency). Figures are printed, never asserted.

Standalone::

    python benchmarks/bench_dask.py [--quick] [--json]

``run(quick)`` measures in a fresh subprocess (the reactor cannot be
restarted, and the cluster's threads should not outlive the measurement) and
returns the rows as dicts.
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

CLUSTER = {"processes": False, "n_workers": 2, "threads_per_worker": 2, "dashboard_address": ":0"}
CLUSTER_TEXT = "LocalCluster(processes=False, 2 workers x 2 threads)"
WIDE_SLOTS = 256


def sizes(quick: bool) -> dict[str, int]:
    return (
        {"dispatch": 200, "latency": 100, "warm": 20}
        if quick
        else {
            "dispatch": 2000,
            "latency": 500,
            "warm": 50,
        }
    )


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure in a subprocess; the rows (empty if Dask is not installed)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--json"]
    if quick:
        command.append("--quick")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_dask failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else []


def row(metric: str, variant: str, calls: int, **figures: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "benchmark": "dask",
        "metric": metric,
        "variant": variant,
        "cluster": CLUSTER_TEXT,
        "calls": calls,
        "calls_per_s": None,
        "p50_us": None,
        "p99_us": None,
        "vs_raw": None,
    }
    base.update(figures)
    return base


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_us": statistics.median(ordered) * 1e6, "p99_us": p99 * 1e6}


def measureRaw(client: Any, n: dict[str, int]) -> list[dict[str, Any]]:
    """Raw Client.submit, from this (non-reactor) thread."""
    client.gather([client.submit(abs, -i, pure=False) for i in range(n["warm"])])
    start = time.perf_counter()
    futures = [client.submit(abs, -i, pure=False) for i in range(n["dispatch"])]
    client.gather(futures)
    elapsed = time.perf_counter() - start
    del futures
    samples = []
    for i in range(n["latency"]):
        start = time.perf_counter()
        client.submit(abs, -i, pure=False).result()
        samples.append(time.perf_counter() - start)
    return [
        row("dispatch", "client.submit", n["dispatch"], calls_per_s=n["dispatch"] / elapsed),
        row("latency", "client.submit", n["latency"], **percentiles(samples)),
    ]


def measureOurs(client: Any, n: dict[str, int]) -> list[dict[str, Any]]:
    """Through a DaskWorker, in a reactor run."""
    from twisted.internet import defer, reactor

    from asynqueue import TaskQueue
    from asynqueue.dask_worker import DaskWorker

    rows: list[dict[str, Any]] = []

    @defer.inlineCallbacks
    def main(reactor: Any) -> Any:
        for slots, variant in (
            (None, "DaskWorker"),
            (WIDE_SLOTS, f"DaskWorker(slots={WIDE_SLOTS})"),
        ):
            worker = DaskWorker(client, slots=slots)
            q = TaskQueue(worker, returnFailure=True)
            yield worker.whenReady()
            yield defer.gatherResults([q.call(abs, -i) for i in range(n["warm"])])
            start = time.perf_counter()
            yield defer.gatherResults([q.call(abs, -i) for i in range(n["dispatch"])])
            elapsed = time.perf_counter() - start
            rows.append(
                row("dispatch", variant, n["dispatch"], calls_per_s=n["dispatch"] / elapsed)
            )
            if slots is None:
                samples = []
                for i in range(n["latency"]):
                    start = time.perf_counter()
                    yield q.call(abs, -i)
                    samples.append(time.perf_counter() - start)
                rows.append(row("latency", variant, n["latency"], **percentiles(samples)))
            yield q.shutdown()

    from benchmarks._reactor import runUntilDone

    runUntilDone(lambda: main(reactor))
    return rows


def measure(quick: bool) -> list[dict[str, Any]]:
    """Start the cluster, measure raw then ours; rows with ratios filled in."""
    try:
        import distributed
    except ImportError:
        return []
    import dask

    n = sizes(quick)
    # Python 3.11 can deadlock a process running Dask's profiler (CPython
    # gh-106883); it only feeds the dashboard, and both contenders lose it.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = distributed.LocalCluster(**CLUSTER)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        raw = measureRaw(client, n)
        ours = measureOurs(client, n)
    finally:
        client.close()
        cluster.close()
    baseline = {r["metric"]: r for r in raw}
    for r in ours:
        base = baseline[r["metric"]]
        if r["metric"] == "dispatch":
            r["vs_raw"] = base["calls_per_s"] / r["calls_per_s"]
        else:
            r["vs_raw"] = r["p50_us"] / base["p50_us"]
    return raw + ours


def markdown(rows: list[dict[str, Any]]) -> str:
    def fmt(value: Any, digits: int = 0) -> str:
        return "" if value is None else f"{value:,.{digits}f}"

    lines = [
        f"Dask: {CLUSTER_TEXT}",
        "",
        "| metric | variant | calls | calls/s | p50 µs | p99 µs | vs raw |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = "" if r["vs_raw"] is None else f"{r['vs_raw']:.2f}x"
        lines.append(
            f"| {r['metric']} | {r['variant']} | {r['calls']} | {fmt(r['calls_per_s'])}"
            f" | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    args = parser.parse_args(argv)
    rows = measure(args.quick)
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print("Dask is not installed: pip install 'asynqueue[dask]'")
    else:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script: find the benchmarks package
    sys.exit(main())

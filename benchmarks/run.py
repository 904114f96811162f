"""
Run the benchmark suite and print one markdown table.

From the repository root::

    python -m benchmarks            # full run, ~15 minutes on 2 cores
    python -m benchmarks --quick    # under a minute
    python -m benchmarks --smoke    # a few seconds, tiny sizes (the test's mode)

Each (contender, workload) measurement runs in a fresh subprocess
(``python -m benchmarks.run --one CONTENDER WORKLOAD --json``), one after
another, so that no contender inherits another's threads, processes or warm
caches, and our contenders get a reactor of their own (``task.react``).
A full run measures the whole table three times over (``--rounds``), the
contenders of a row taking turns, and takes the median of the rounds: on a
shared VM a slow spell lasts seconds, as long as one measurement, and would
otherwise fall on whichever contender ran then. ``--inprocess`` (the default
of ``--smoke`` without ``--rounds``) runs them all in this process, inside
one reactor run, once.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from . import payloads
from .contenders import CONTENDERS, WORKERS, Contender, NotApplicable
from .report import COLUMNS, Results, genericTable, table
from .workloads import WORKLOADS, Workload, aggregate

ROOT = Path(__file__).resolve().parent.parent

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "rounds": 3,
        "reps": 5,
        "warm": 200,
        "dispatch": 20_000,
        "latency": 2_000,
        "cpuCalls": 8,
        "cpuSeconds": 0.05,
        "bytes": 10_000_000,
        "ints": 2_000_000,
        "items": 100_000,
        "schedN": 400,
        "schedTask": 0.0005,
        "schedBusy": 0.25,
        "backlog": 10_000,
        "timeout": 120,
    },
    "quick": {
        "rounds": 1,
        "reps": 3,
        "warm": 50,
        "dispatch": 10_000,
        "latency": 500,
        "cpuCalls": 8,
        "cpuSeconds": 0.03,
        "bytes": 10_000_000,
        "ints": 2_000_000,
        "items": 50_000,
        "schedN": 300,
        "schedTask": 0.0005,
        "schedBusy": 0.15,
        "backlog": 10_000,
        "timeout": 60,
    },
    "smoke": {
        "rounds": 1,
        "reps": 1,
        "warm": 4,
        "dispatch": 200,
        "latency": 20,
        "cpuCalls": 2,
        "cpuSeconds": 0.002,
        "bytes": 100_000,
        "ints": 20_000,
        "items": 200,
        "schedN": 20,
        "schedTask": 0.001,
        "schedBusy": 0.03,
        "backlog": 200,
        "timeout": 30,
    },
}


# ====================================================================== one measurement


def _warmSync(ad: Any, contender: Contender, sizes: dict[str, Any]) -> None:
    if contender.family == "floor":
        for _ in range(sizes["warm"]):
            ad.send(payloads.noop)
            ad.receive()
    else:
        for f in [ad.submit(payloads.noop) for _ in range(sizes["warm"])]:
            f.result()


def measureSync(contender: Contender, workload: Workload, sizes: dict[str, Any]) -> dict[str, Any]:
    """Run *workload* on a sync or floor contender; no reactor needed."""
    rep = workload.floorRep if contender.family == "floor" else workload.syncRep
    assert rep is not None
    ad = contender.make()
    reps = []
    if workload.needsPool:
        ad.start()
    try:
        if workload.needsPool:
            _warmSync(ad, contender, sizes)
        else:
            rep(ad, sizes, -1)  # an untimed first round: imports, page cache
        for i in range(sizes["reps"]):
            reps.append(rep(ad, sizes, i))
    finally:
        if workload.needsPool:
            ad.stop()
    return {"figures": aggregate(reps)}


def measureAsync(contender: Contender, workload: Workload, sizes: dict[str, Any]) -> Any:
    """Run *workload* on an async contender; returns a Deferred. Reactor must run."""
    from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred

    @inlineCallbacks
    def go() -> Any:
        ad = contender.make()
        reps = []
        if workload.needsPool:
            yield maybeDeferred(ad.start)
            try:
                yield gatherResults([ad.call(payloads.noop) for _ in range(sizes["warm"])])
                for i in range(sizes["reps"]):
                    reps.append((yield workload.asyncRep(ad, sizes, i)))
            finally:
                yield maybeDeferred(ad.stop)
        else:
            yield workload.asyncRep(ad, sizes, -1)  # untimed first round
            for i in range(sizes["reps"]):
                reps.append((yield workload.asyncRep(ad, sizes, i)))
        return {"figures": aggregate(reps)}

    return go()


def staticReason(contender: Contender, workload: Workload) -> str | None:
    """Why this pair is "n/a" without running anything, or None."""
    return contender.check() or workload.applies(contender)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]


def measure(contender: Contender, workload: Workload, sizes: dict[str, Any]) -> Any:
    """A result dict, or (async contenders) a Deferred of one. Never raises."""
    t0 = time.perf_counter()

    def stamp(result: dict[str, Any]) -> dict[str, Any]:
        result["seconds"] = round(time.perf_counter() - t0, 3)
        return result

    def failed(e: BaseException) -> dict[str, Any]:
        if isinstance(e, NotApplicable):
            return stamp({"na": str(e)})
        traceback.print_exception(e, file=sys.stderr)
        return stamp({"error": _describe(e)})

    reason = staticReason(contender, workload)
    if reason:
        return {"na": reason}
    try:
        if contender.family != "async":
            return stamp(measureSync(contender, workload, sizes))
        d = measureAsync(contender, workload, sizes)
    except BaseException as e:
        return failed(e)
    return d.addCallbacks(stamp, lambda f: failed(f.value))


def runOne(contenderKey: str, workloadKey: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """Measure one pair in this process, starting the reactor if needed."""
    contender, workload = CONTENDERS[contenderKey], WORKLOADS[workloadKey]
    if contender.family != "async" or staticReason(contender, workload):
        return measure(contender, workload, sizes)
    from twisted.internet import task

    box: dict[str, Any] = {}

    def main(reactor: Any) -> Any:
        d = measure(contender, workload, sizes)
        return d.addCallback(box.update)

    try:
        task.react(main)
    except SystemExit:
        pass
    return box or {"error": "the reactor stopped before the measurement finished"}


def runInProcess(
    plan: list[tuple[str, str]], sizes: dict[str, Any], progress: Callable[..., None]
) -> Results:
    """Measure every pair of *plan* here, inside one reactor run."""
    from twisted.internet import task
    from twisted.internet.defer import inlineCallbacks, maybeDeferred

    results: Results = {}

    @inlineCallbacks
    def main(reactor: Any) -> Any:
        for i, (w, c) in enumerate(plan):
            t0 = time.perf_counter()
            d = maybeDeferred(measure, CONTENDERS[c], WORKLOADS[w], sizes)
            d.addTimeout(sizes["timeout"], reactor)
            try:
                result = yield d
            except Exception as e:  # a hung measurement: record it, go on
                result = {"error": f"timed out after {sizes['timeout']} s ({_describe(e)})"}
            results[(w, c)] = result
            progress(i, len(plan), w, c, result, time.perf_counter() - t0)

    try:
        task.react(main)
    except SystemExit:
        pass
    return results


def runRounds(
    plan: list[tuple[str, str]], sizes: dict[str, Any], progress: Callable[..., None]
) -> Results:
    """
    Measure every pair of *plan*, each in a fresh subprocess, ``sizes["rounds"]``
    times over: round after round of the whole plan, so that the contenders
    of a row take turns and a slow spell of the machine (a shared VM has them,
    seconds long) weighs on all of them instead of on whichever ran then.
    Each figure is the median of its rounds (each the median of its reps).
    """
    rounds = sizes.get("rounds", 1)
    perPair: dict[tuple[str, str], list[dict[str, Any]]] = {pair: [] for pair in plan}
    total = len(plan) * rounds
    # The machine's speed: a reference loop timed before each round and after
    # the last, reported against the first (1.0: as fast; 0.8: a fifth slower).
    loop = sizes["cpuIters"] // 5  # (about a hundredth of a second)
    loopTimes: list[float] = []
    for r in range(rounds):
        loopTimes.append(payloads.spinSeconds(loop, 3))
        for i, (w, c) in enumerate(plan):
            t0 = time.perf_counter()
            reason = staticReason(CONTENDERS[c], WORKLOADS[w])
            if reason and r:
                continue  # (said once is enough)
            result = {"na": reason} if reason else runSubprocess(c, w, sizes)
            perPair[(w, c)].append(result)
            progress(r * len(plan) + i, total, w, c, result, time.perf_counter() - t0)
    loopTimes.append(payloads.spinSeconds(loop, 3))
    sizes["speeds"] = [loopTimes[0] / t for t in loopTimes]
    return {pair: combineRounds(results) for pair, results in perPair.items()}


def combineRounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One result from a pair's rounds: the median of each figure; a round
    that failed or did not apply makes the whole pair say so (a figure
    that only sometimes exists is not one to compare).
    """
    for result in results:
        if "figures" not in result:
            return result
    combined: dict[str, Any] = {"figures": aggregate([r["figures"] for r in results])}
    seconds = [r["seconds"] for r in results if "seconds" in r]
    if seconds:
        combined["seconds"] = round(sum(seconds), 3)
    combined["rounds"] = [r["figures"] for r in results]
    return combined


def runSubprocess(contenderKey: str, workloadKey: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """Measure one pair in a fresh interpreter; kill its whole group on timeout."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--one",
        contenderKey,
        workloadKey,
        "--sizes",
        json.dumps(sizes),
        "--json",
    ]
    return runJSONChild(cmd, sizes["timeout"])


def runJSONChild(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run *cmd* in its own process group; its last JSON line, or what went wrong."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=childEnv(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout} s"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the child's own group
        except ProcessLookupError:
            pass
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (err.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit status {proc.returncode}: {tail[:300]}"}


def childEnv() -> dict[str, str]:
    """Our environment, with the repository root importable (for the payloads)."""
    env = dict(os.environ)
    paths = [str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


# ====================================================================== Dask


def runDask(quick: bool) -> dict[str, Any]:
    """The rows of ``benchmarks/bench_dask.py``, or why there are none."""
    try:
        import distributed  # noqa: F401

        import dask  # noqa: F401
    except ImportError:
        return {"na": 'dask is not installed: pip install -e ".[dask]"'}
    return _rowsOf("bench_dask", quick)


def runDaskSubprocess(quick: bool, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.run", "--dask", "--json"]
    if quick:
        cmd.append("--quick")
    return runJSONChild(cmd, timeout)


def runExecutors(quick: bool) -> dict[str, Any]:
    """The rows of ``benchmarks/bench_executors.py`` (fresh interpreters per measurement)."""
    return _rowsOf("bench_executors", quick)


def runRemote(quick: bool) -> dict[str, Any]:
    """The rows of ``benchmarks/bench_remote.py`` (it measures in its own subprocess)."""
    return _rowsOf("bench_remote", quick)


def runMap(quick: bool) -> dict[str, Any]:
    """The rows of ``benchmarks/bench_map.py`` (it measures in its own subprocess)."""
    return _rowsOf("bench_map", quick)


def _rowsOf(name: str, quick: bool) -> dict[str, Any]:
    """``run(quick)`` of the module ``benchmarks/<name>.py``: its rows, or why there are none."""
    try:
        module = importlib.import_module(f".{name}", __package__)
    except ImportError as e:
        return {"na": f"benchmarks/{name}.py is not available ({_describe(e)})"}
    try:
        return {"rows": module.run(quick)}
    except Exception as e:
        traceback.print_exc()
        return {"error": _describe(e)}


# ====================================================================== the whole run


def prepareSizes(mode: str) -> dict[str, Any]:
    """The sizes of *mode*, plus the machine's CPU calibration."""
    sizes = dict(SIZES[mode])
    sizes["mode"] = mode
    sizes["cpuIters"] = payloads.calibrate(sizes["cpuSeconds"])
    sizes["listBytes"] = len(pickle.dumps(payloads.bigList(sizes["ints"]), protocol=5))
    return sizes


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> str:
    """Python, Twisted and peer versions, and the machine."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    versions = " · ".join(
        f"{name} {version(dist)}"
        for name, dist in [
            ("asynqueue", "asynqueue"),
            ("Twisted", "Twisted"),
            ("pebble", "pebble"),
            ("dask", "dask"),
            ("cloudpickle", "cloudpickle"),
        ]
    )
    return (
        f"{platform.python_implementation()} {platform.python_version()} · {versions}\n"
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"
        f" ({usable} usable)"
    )


def parseList(text: str | None, known: list[str], what: str) -> list[str]:
    if not text:
        return known
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def _spell(sizes: dict[str, Any]) -> str:
    """How each figure of the main table was taken, in words."""
    reps = f"{sizes['reps']} repetitions"
    rounds = sizes.get("rounds", 1)
    if rounds == 1:
        return reps
    return f"{rounds} rounds (the whole table over, contenders taking turns), each of {reps}"


def progressPrinter(verbose: bool) -> Callable[..., None]:
    def progress(
        i: int, total: int, w: str, c: str, result: dict[str, Any], seconds: float
    ) -> None:
        if not verbose:
            return
        status = "n/a" if result.get("na") else "error" if result.get("error") else "ok"
        print(f"[{i + 1}/{total}] {w:<10} {c:<12} {status:<5} {seconds:5.1f} s", file=sys.stderr)

    return progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="asynqueue side by side with its peers: one markdown table.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, in-process, seconds")
    parser.add_argument("--inprocess", action="store_true", help="no subprocess per measurement")
    parser.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--contenders", help=f"comma-separated subset of {','.join(COLUMNS)}")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask rows")
    parser.add_argument("--no-remote", action="store_true", help="skip the remote-worker rows")
    parser.add_argument(
        "--no-executors", action="store_true", help="skip the concurrent.futures executor rows"
    )
    parser.add_argument(
        "--no-scale", action="store_true", help="skip the scale rows (backlogs up to 1,000,000)"
    )
    parser.add_argument("--no-map", action="store_true", help="skip the parallel map rows")
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="measure the whole table N times over, contenders taking turns, and take"
        " the median (full: 3, --quick: 1)",
    )
    parser.add_argument("--save", metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    # Internal: one measurement, in a child process.
    parser.add_argument("--one", nargs=2, metavar=("CONTENDER", "WORKLOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--dask", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    modeName = "smoke" if args.smoke else "quick" if args.quick else "full"
    os.environ["PYTHONPATH"] = childEnv()["PYTHONPATH"]

    if args.one:
        sizes = json.loads(args.sizes) if args.sizes else prepareSizes(modeName)
        print(json.dumps(runOne(args.one[0], args.one[1], sizes)))
        return 0
    if args.dask:
        print(json.dumps(runDask(args.quick)))
        return 0

    workloads = parseList(args.workloads, list(WORKLOADS), "workloads")
    contenders = parseList(args.contenders, COLUMNS, "contenders")
    started = time.perf_counter()
    sizes = prepareSizes(modeName)
    plan = [(w, c) for w in workloads for c in contenders]
    progress = progressPrinter(not args.quiet)
    if args.rounds is not None:
        sizes["rounds"] = max(1, args.rounds)
    if args.inprocess or (args.smoke and args.rounds is None):
        sizes["rounds"] = 1  # (one reactor run, one round)
        results = runInProcess(plan, sizes, progress)
    else:
        results = runRounds(plan, sizes, progress)
    if args.no_dask or args.smoke:
        dask: dict[str, Any] = {"na": "skipped" + (" in --smoke" if args.smoke else "")}
    else:
        dask = runDaskSubprocess(args.quick, 4 * sizes["timeout"])
    if args.no_remote or args.smoke:
        remote: dict[str, Any] = {"na": "skipped" + (" in --smoke" if args.smoke else "")}
    else:
        remote = runRemote(args.quick)
    if args.no_executors or args.smoke:
        executors: dict[str, Any] = {"na": "skipped" + (" in --smoke" if args.smoke else "")}
    else:
        executors = runExecutors(args.quick)
    if args.no_scale or args.smoke:
        scale: dict[str, Any] = {"na": "skipped" + (" in --smoke" if args.smoke else "")}
    else:
        scale = _rowsOf("bench_scale", args.quick)
    if args.no_map or args.smoke:
        mapRows: dict[str, Any] = {"na": "skipped" + (" in --smoke" if args.smoke else "")}
    else:
        mapRows = runMap(args.quick)
    elapsed = time.perf_counter() - started

    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    print(f"## asynqueue benchmarks, {today} ({modeName} run, {elapsed:.0f} s)\n")
    print(environment().replace("\n", "  \n") + "  ")
    print(
        f"Every figure is the median of {_spell(sizes)}, each contender with"
        f" {WORKERS} workers (floors: 1). Ratios: xN > 1 means ours is better.\n"
    )
    speeds = sizes.get("speeds")
    if speeds:
        print(
            f"The machine's speed over the rounds (a reference loop, 1.0 at the start):"
            f" {min(speeds):.2f}-{max(speeds):.2f}.\n"
        )
    print(table(results, sizes, workloads))
    extras = (
        ("Parallel map", mapRows),
        ("Executors (concurrent.futures interface, 2 workers)", executors),
        ("Remote workers (loopback TCP)", remote),
        ("Dask", dask),
        ("Scale: a backlog of calls, queued first, then drained", scale),
    )
    for title, extra in extras:
        print(f"\n### {title}\n")
        if extra.get("rows"):
            print(genericTable(extra["rows"]))
        else:
            print(f"n/a: {extra.get('na') or 'error: ' + str(extra.get('error'))}")
    if args.save:
        raw = {
            "sizes": sizes,
            "results": [{"workload": w, "contender": c, **r} for (w, c), r in results.items()],
            "dask": dask,
            "remote": remote,
            "scale": scale,
            "executors": executors,
            "map": mapRows,
            "environment": environment(),
            "speeds": sizes.get("speeds"),
            "date": today,
        }
        Path(args.save).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark suite still runs and prints every row (figures are never asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def runPython(*args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in the project's root, its output captured (a minute at most)."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_smoke_run_prints_every_row(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.report import METRICS, labelFor
        from benchmarks.run import SIZES
    finally:
        sys.path.remove(str(ROOT))
    saved = tmp_path / "results.json"
    proc = runPython("-m", "benchmarks", "--smoke", "--quiet", "--save", str(saved))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| figure | unit | ThreadQueue(2) |" in out
    sizes = dict(SIZES["smoke"])
    for metric in METRICS:
        label = labelFor(metric, sizes)
        rows = [line for line in out.splitlines() if line.startswith(f"| {label} |")]
        assert len(rows) == 1, f"no row for {label!r} in:\n{out}"
    assert "Twisted" in out and "cores" in out
    raw = json.loads(saved.read_text())
    errors = [r for r in raw["results"] if r.get("error")]
    assert not errors, errors
    measured = [r for r in raw["results"] if r.get("figures")]
    assert {r["workload"] for r in measured} == {m.workload for m in METRICS}


def test_rounds_take_turns_and_report_the_median(tmp_path: Path) -> None:
    """``--rounds 3``: each pair measured three times, in subprocesses; each figure the median."""
    saved = tmp_path / "results.json"
    proc = runPython("-m", "benchmarks", "--smoke", "--rounds", "3", "--save", str(saved),
                     "--workloads", "dispatch", "--contenders", "aq-null,floor-queue")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "the median of 3 rounds" in proc.stdout
    assert "The machine's speed over the rounds" in proc.stdout
    raw = json.loads(saved.read_text())
    # Measured before each round and after the last; 1.0 at the start.
    assert len(raw["speeds"]) == 4 and raw["speeds"][0] == 1.0
    assert all(s > 0 for s in raw["speeds"])
    # The progress lines: the plan over, three times, contenders taking turns.
    order = [line.split()[2] for line in proc.stderr.splitlines() if line.startswith("[")]
    assert order == ["aq-null", "floor-queue"] * 3
    for result in raw["results"]:
        rounds = [r["calls/s"] for r in result["rounds"]]
        assert len(rounds) == 3 and all(r > 0 for r in rounds)
        assert result["figures"]["calls/s"] == sorted(rounds)[1]


def test_scale_measures_one_backlog() -> None:
    """One small configuration of ``bench_scale`` runs, profiled, and reports every figure."""
    proc = runPython(
        str(ROOT / "benchmarks" / "bench_scale.py"),
        "--one",
        "threads",
        "500",
        "7",
        "--profile",
        "5",
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(figures) == {
        "enqueue_us",
        "bytes_per_call",
        "drain",
        "drain_cpu_us",
        "drain_reactor_cpu_us",
        "peak_growth_mb",
    }
    assert figures["enqueue_us"] > 0 and figures["drain"] > 0
    assert "function calls" in proc.stderr  # the drain's profile


def test_timeline_stamps_every_step_of_a_process_round_trip() -> None:
    """``benchmarks.timeline`` still finds every step it stamps (they are private methods)."""
    proc = runPython("-m", "benchmarks.timeline", "--calls", "50")
    assert proc.returncode == 0, proc.stderr
    table = [line.strip("| ").split(" | ") for line in proc.stdout.splitlines() if "|" in line]
    steps = table[2:-1]  # (after the header and its rule; before the total)
    assert len(steps) == 13, proc.stdout
    # Every step has a figure. One that crosses processes may be negative on
    # a busy machine (the child can run the call before the parent's
    # sendmsg has returned), so only the whole round trip must be positive.
    assert all(math.isfinite(float(micros)) for _, _, micros in steps), proc.stdout
    assert table[-1][:2] == ["call", "result"], proc.stdout
    assert float(table[-1][2].split()[0].strip("*")) > 0, proc.stdout


def test_comparison_shows_the_ratio_of_each_round() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.report import METRICS, comparison
    finally:
        sys.path.remove(str(ROOT))
    metric = next(m for m in METRICS if m.workload == "dispatch" and m.key == "calls/s")

    def result(*rounds: float) -> dict[str, object]:
        return {
            "figures": {"calls/s": sorted(rounds)[len(rounds) // 2]},
            "rounds": [{"calls/s": r} for r in rounds],
        }

    results = {
        ("dispatch", "aq-process"): result(30.0, 60.0, 45.0),
        ("dispatch", "floor-pipe"): result(60.0, 60.0, 90.0),
    }
    # Medians 45 vs 60; round by round 0.5, 1.0 and 0.5.
    assert comparison(results, metric, "aq-process") == "x0.75 (0.5-1) floor"
    # Measured once (no rounds kept, or a different number): the ratio alone.
    results[("dispatch", "floor-pipe")] = {"figures": {"calls/s": 60.0}}
    assert comparison(results, metric, "aq-process") == "x0.75 floor"


def runAB(module: str, limit: str, argv: list[str]) -> list[str]:
    """Run ``benchmarks.<module>.main(argv)``; its output lines, and that *limit* came back."""
    proc = runPython(
        "-c",
        f"from benchmarks import {module} as ab;"
        f"import asynqueue.{limit.rpartition('.')[0]} as m;"
        f"before = m.{limit.rpartition('.')[2]};"
        f"ab.main({argv!r});"
        f"print('restored', m.{limit.rpartition('.')[2]} == before)",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "restored True", proc.stdout
    return lines


def assertTwoSides(lines: list[str], first: str, second: str, blocks: int) -> None:
    """Each side's median line, in order, with one figure per block."""
    medians = [line.split() for line in lines if " median " in line]
    assert [words[0] for words in medians] == [first, second], lines
    assert all(" ".join(words).count(";") == blocks - 1 for words in medians), lines


def test_late_bells_ab_measures_both_sides_and_restores_the_limit() -> None:
    """``benchmarks.ab_late_bells`` still drives the private limit it toggles."""
    lines = runAB(
        "ab_late_bells", "_threads._worker.LATE_BELLS_LIMIT", ["--rounds", "2", "--trips", "50"]
    )
    assertTwoSides(lines, "doorbell", "doorbell", 2)
    assert any("of 2 pairs" in line for line in lines), lines


def test_groups_ab_measures_both_sides_and_restores_the_limit() -> None:
    """``benchmarks.ab_groups`` still drives the private limit it toggles, and puts it back."""
    lines = runAB("ab_groups", "_core._window.GROUP_MAX", ["--blocks", "2", "--calls", "300"])
    assertTwoSides(lines, "one", "groups", 2)
    assert any("groups / one task per call: x" in line for line in lines), lines

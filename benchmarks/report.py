"""
The markdown table: one row per figure, one column per contender, then how
ours compare with the best peer of the same kind and with the transport
floor, and the goal.

A ratio above 1 always means *ours is better* (more calls per second, or
fewer microseconds): for figures where lower is better it is best ÷ ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .contenders import CONTENDERS

Results = dict[tuple[str, str], dict[str, Any]]  # (workload, contender) -> result


@dataclass(frozen=True)
class Goal:
    """A target for one of our contenders on one figure."""

    contender: str
    op: str  # ">=", "<=", "~" (within 10 %), ">=floor" (a fraction of the floor)
    value: float
    text: str

    def met(self, value: float, floor: float | None) -> bool | None:
        if self.op == ">=":
            return value >= self.value
        if self.op == "<=":
            return value <= self.value
        if self.op == "~":
            return abs(value - self.value) <= 0.1 * self.value
        if self.op == ">=floor":
            return None if floor is None else value >= self.value * floor
        raise ValueError(self.op)


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    workload: str
    key: str
    label: str  # may hold {placeholders} filled from the sizes
    unit: str
    higher: bool | None  # None: a target value, not a race
    goals: tuple[Goal, ...] = ()


P, T = "aq-process", "aq-thread"

# Unit, higher-is-better and goals of both streaming rows (Deferator and consumer).
STREAMING = (
    "items/s",
    True,
    (Goal(P, ">=", 100_000, "process ≥ 100,000/s"), Goal(T, ">=", 100_000, "thread ≥ 100,000/s")),
)

METRICS: list[Metric] = [
    Metric(
        "dispatch",
        "calls/s",
        "dispatch: {dispatch:,} trivial calls at once",
        "calls/s",
        True,
        (Goal(P, ">=", 15_000, "process ≥ 15,000/s"),),
    ),
    Metric(
        "latency",
        "p50",
        "latency: sequential round trip, p50",
        "µs",
        False,
        (Goal(P, "<=", 150, "process ≤ 150 µs"),),
    ),
    Metric("latency", "p99", "latency: sequential round trip, p99", "µs", False),
    Metric("cpu", "wall", "CPU-bound: {cpuCalls} x {cpuMs:.0f} ms loop, wall", "ms", False),
    Metric("cpu", "speedup", "CPU-bound: speed-up over serial", "x", True),
    Metric(
        "large",
        "bytes",
        "large result: {bytesMB:g} MB bytes",
        "MB/s",
        True,
        (Goal(P, ">=floor", 0.9, "process ≥ 90 % of Pipe"),),
    ),
    Metric("large", "list", "large result: list of {ints:,} ints", "MB/s", True),
    Metric("streaming", "deferator", "streaming: {items:,} items, Deferator", *STREAMING),
    Metric("streaming", "consumer", "streaming: {items:,} items, consumer", *STREAMING),
    Metric(
        "startup",
        "ms",
        "startup: create, 1 call, shut down",
        "ms",
        False,
        (Goal(P, "<=", 100, "process ≤ 100 ms"),),
    ),
    Metric(
        "scheduling",
        "ratio",
        "scheduling: starts at niceness 0 per start at 10",
        "ratio",
        None,
        (Goal(T, "~", 2.0, "thread 2.0"), Goal(P, "~", 2.0, "process 2.0")),
    ),
    Metric(
        "scheduling",
        "delay",
        "scheduling: new series behind {backlog:,} queued, first start after a worker frees",
        "ms",
        False,
    ),
]

COLUMNS = [
    "aq-thread",
    "aq-process",
    "aq-null",
    "tpe",
    "dtt",
    "ppe",
    "pebble",
    "floor-queue",
    "floor-pipe",
    "floor-tw-thread",
    "floor-tw-pipe",
]
FLOOR = {"thread": "floor-queue", "process": "floor-pipe"}
# What the reactor alone costs on top of FLOOR (see `contenders.TwistedPipeFloor`).
TWISTED_FLOOR = {"thread": "floor-tw-thread", "process": "floor-tw-pipe"}
SHORT = {"tpe": "TPE", "dtt": "deferToThread", "ppe": "PPE", "pebble": "pebble"}


def ratio(value: float) -> str:
    """A ratio, two significant figures."""
    if math.isinf(value):
        return "∞"
    return f"{value:.2g}" if value < 10 else f"{value:,.0f}"


def formatNumber(value: float) -> str:
    """Three significant figures, thousands separated."""
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0 or math.isnan(value):
        return str(value)
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 2:
        return f"{round(value, -(magnitude - 2)):,.0f}"
    return f"{value:.{2 - magnitude}f}"


def figure(results: Results, workload: str, contender: str, key: str) -> Any:
    """A number, a reason string, or None if not measured."""
    result = results.get((workload, contender))
    if result is None:
        return None
    if result.get("na"):
        return f"n/a: {result['na']}"
    if result.get("error"):
        return f"error: {result['error']}"
    return result.get("figures", {}).get(key)


def better(metric: Metric, ours: float, other: float) -> float:
    """How many times better *ours* is than *other* (>1: ours wins)."""
    if metric.higher:
        return ours / other if other else math.inf
    return other / ours if ours else math.inf


class Notes:
    """Numbered footnotes for "n/a" and "error" cells, one per distinct reason."""

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}

    def cell(self, text: str) -> str:
        head, _, reason = text.partition(": ")
        number = self.reasons.setdefault(reason, len(self.reasons) + 1)
        return f"{head} [{number}]"

    def lines(self) -> list[str]:
        return [f"[{n}] {reason}" for reason, n in self.reasons.items()]


def numbers(results: Results, metric: Metric, keys: list[str]) -> dict[str, float]:
    out = {}
    for key in keys:
        value = figure(results, metric.workload, key, metric.key)
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def roundRatios(results: Results, metric: Metric, ours: str, other: str) -> list[float]:
    """
    *ours* against *other* round by round (each round measures both back to
    back, so a ratio sees one state of the machine); [] unless both have
    the same rounds.
    """
    mine = results.get((metric.workload, ours), {}).get("rounds")
    theirs = results.get((metric.workload, other), {}).get("rounds")
    if not mine or not theirs or len(mine) != len(theirs) or len(mine) < 2:
        return []
    out = []
    for a, b in zip(mine, theirs, strict=True):
        x, y = a.get(metric.key), b.get(metric.key)
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            return []
        out.append(better(metric, float(x), float(y)))
    return out


def ratioCell(results: Results, metric: Metric, ours: str, other: str, value: float) -> str:
    """'x0.68' and, when measured in rounds, their spread: 'x0.68 (0.47-0.93)'."""
    text = f"x{ratio(value)}"
    byRound = roundRatios(results, metric, ours, other)
    if byRound:
        text += f" ({ratio(min(byRound))}-{ratio(max(byRound))})"
    return text


def comparison(results: Results, metric: Metric, ours: str) -> str:
    """
    'x1.3 pebble · x0.8 floor · x0.9 Twisted floor' (best peer of the same
    kind, the bare transport, the bare reactor on it) or ''. Each ratio is
    of the medians; after a run in rounds, the range of the round-by-round
    ratios follows it in parentheses.
    """
    if metric.higher is None:
        return ""
    kind = CONTENDERS[ours].kind
    mine = numbers(results, metric, [ours]).get(ours)
    if mine is None:
        return ""
    peers = [k for k, c in CONTENDERS.items() if c.role == "peer" and c.kind == kind]
    peerValues = numbers(results, metric, peers)
    parts = []
    if peerValues:
        pick = max if metric.higher else min
        best = pick(peerValues, key=lambda k: peerValues[k])
        value = better(metric, mine, peerValues[best])
        parts.append(f"{ratioCell(results, metric, ours, best, value)} {SHORT[best]}")
    for floors, name in ((FLOOR, "floor"), (TWISTED_FLOOR, "Twisted floor")):
        floorKey = floors.get(kind)
        floorValue = numbers(results, metric, [floorKey]).get(floorKey) if floorKey else None
        if floorValue is not None:
            value = better(metric, mine, floorValue)
            parts.append(f"{ratioCell(results, metric, ours, floorKey, value)} {name}")
    return " · ".join(parts)


def goalCell(results: Results, metric: Metric) -> str:
    parts = []
    for goal in metric.goals:
        value = numbers(results, metric, [goal.contender]).get(goal.contender)
        floorKey = FLOOR[CONTENDERS[goal.contender].kind]
        floor = numbers(results, metric, [floorKey]).get(floorKey)
        met = None if value is None else goal.met(value, floor)
        mark = {True: " ✔", False: " ✘", None: ""}[met]
        parts.append(f"{goal.text}{mark}")
    return "; ".join(parts)


def labelFor(metric: Metric, sizes: dict[str, Any]) -> str:
    extra = {
        "bytesMB": sizes["bytes"] / 1e6,
        "cpuMs": sizes["cpuSeconds"] * 1000,
    }
    return metric.label.format(**sizes, **extra)


def table(results: Results, sizes: dict[str, Any], workloads: list[str] | None = None) -> str:
    """The markdown table and its footnotes."""
    notes = Notes()
    header = ["figure", "unit", *(CONTENDERS[k].label for k in COLUMNS)]
    header += ["ThreadQueue vs best peer, floors", "ProcessQueue vs best peer, floors", "goal"]
    rows = [header, ["---"] * len(header)]
    for metric in METRICS:
        if workloads is not None and metric.workload not in workloads:
            continue
        row = [labelFor(metric, sizes), metric.unit]
        for key in COLUMNS:
            value = figure(results, metric.workload, key, metric.key)
            if value is None:
                row.append("-")
            elif isinstance(value, str):
                row.append(notes.cell(value))
            else:
                row.append(formatNumber(value))
        row.append(comparison(results, metric, "aq-thread"))
        row.append(comparison(results, metric, "aq-process"))
        row.append(goalCell(results, metric))
        rows.append(row)
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    if notes.reasons:
        lines += ["", *notes.lines()]
    return "\n".join(lines)


def genericTable(rows: list[dict[str, Any]]) -> str:
    """A markdown table of arbitrary dicts (the Dask rows)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    out = ["| " + " | ".join(keys) + " |", "| " + " | ".join(["---"] * len(keys)) + " |"]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k)
            if v is None:
                cells.append("-")
            elif isinstance(v, float):
                cells.append(formatNumber(v))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)

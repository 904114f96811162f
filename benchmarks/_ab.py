"""A/B in one process: two settings measured in alternating blocks, reported side by side."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from typing import Any


def alternating(sides: dict[str, Any], blocks: int) -> Iterator[tuple[str, Any]]:
    """Each side once per block, the order turned round every other block."""
    for block in range(blocks):
        order = list(sides) if block % 2 else list(reversed(sides))
        for name in order:
            yield name, sides[name]


def report(title: str, figures: dict[str, list[float]], show: Callable[[float], str]) -> None:
    """Print each side's median and its blocks, as *show* writes a figure."""
    print(title)
    width = max(map(len, figures))
    for name, values in figures.items():
        spread = "; ".join(show(v) for v in values)
        print(f"  {name:{width}} median {show(statistics.median(values)):>9}   [{spread}]")

"""
Tiny callables for trying ``asynqueue map``.

Each takes one input, as the command passes it::

    asynqueue map asynqueue.examples.demo:collatz 27 97 871
    asynqueue map --timeout 0.5 asynqueue.examples.demo:nap 0.1 2
"""

from __future__ import annotations

import time

__all__ = ["collatz", "nap"]


def collatz(n: int) -> int:
    """
    The number of Collatz steps that take *n* to 1.

    Args:
        n: a positive integer (a JSON number; a string of digits is accepted).

    Raises:
        ValueError: *n* is not a positive integer.
    """
    if isinstance(n, str) and n.strip().isdigit():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"not a positive integer: {n!r}")
    steps = 0
    while n != 1:
        n = 3 * n + 1 if n % 2 else n // 2
        steps += 1
    return steps


def nap(seconds: float) -> float:
    """Sleep *seconds* (a blocking stand-in for slow work) and return them."""
    time.sleep(float(seconds))
    return seconds

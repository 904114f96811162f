"""
The pipelining window's arithmetic (`_core._window`): the running average
of task times, kept per read of results (`smoothedOver`) as it would be per
result (`smoothed`), and the window it gives.
"""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from asynqueue._core._window import smoothed, smoothedOver, windowFor

times = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


@given(st.one_of(st.none(), times), st.lists(times, max_size=50))
def test_smoothing_a_read_is_smoothing_each_result(start: float | None, dts: list[float]) -> None:
    runs = [(dt, 123.0) for dt in dts]  # (the time each was sent does not count)
    expected = functools.reduce(smoothed, dts, start)
    got = smoothedOver(start, runs)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert abs(got - expected) <= 1e-12 * max(1.0, abs(expected))


def test_an_empty_read_keeps_the_average() -> None:
    assert smoothedOver(None, []) is None
    assert smoothedOver(0.5, []) == 0.5


@given(times, st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=8))
def test_the_window_is_at_least_one_task_and_at_most_the_maximum(
    averageRun: float, maxWindow: int, workers: int
) -> None:
    window = windowFor(averageRun, maxWindow, workers)
    assert 1 <= window <= maxWindow
    if averageRun >= 0.002 * workers:  # (a task is at least the work wanted in flight)
        assert window == 1

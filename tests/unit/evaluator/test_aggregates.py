"""Every window aggregate a threshold rule can use, on one window of samples."""

from __future__ import annotations

from collections import deque

import pytest

from signalfire.evaluator.engine import Points, aggregate

#: (time, value): a counter-like series with one reset (at t=40).
WINDOW: Points = deque([(0.0, 10.0), (10.0, 30.0), (20.0, 20.0), (30.0, 50.0), (40.0, 5.0)])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("last", 5.0),
        ("avg", 23.0),
        ("min", 5.0),
        ("max", 50.0),
        ("sum", 115.0),
        ("count", 5.0),
        ("delta", -5.0),  # last - first, as a gauge
        ("increase", 20.0 + 20.0 + 30.0 + 5.0),  # the drops are resets: 30→20 counts 20, 50→5 counts 5
        ("rate", 75.0 / 40.0),
        ("p50", 20.0),  # nearest rank over 5, 10, 20, 30, 50
        ("p95", 50.0),
        ("p99", 50.0),
    ],
)
def test_aggregate(name, expected):
    assert aggregate(name, WINDOW) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["rate", "increase", "delta"])
def test_change_aggregates_need_two_points(name):
    assert aggregate(name, deque([(0.0, 1.0)])) is None


def test_an_empty_window_has_no_value():
    assert aggregate("avg", deque()) is None


def test_percentiles_use_the_nearest_rank():
    points: Points = deque((float(t), float(t + 1)) for t in range(100))  # values 1..100
    assert [aggregate(q, points) for q in ("p50", "p95", "p99")] == [50.0, 95.0, 99.0]

"""Tick scheduling: aligned to the wall clock, no drift, missed ticks skipped."""

from __future__ import annotations

import pytest

from signalfire.collector.schedule import delay_until_aligned, next_tick


def test_delay_until_the_next_multiple() -> None:
    assert delay_until_aligned(1000.0, 5.0) == 0.0
    assert delay_until_aligned(1001.0, 5.0) == pytest.approx(4.0)
    assert delay_until_aligned(1004.9, 5.0) == pytest.approx(0.1)
    assert delay_until_aligned(1000.1, 0.2) == pytest.approx(0.1)


def test_next_tick_does_not_accumulate_drift() -> None:
    planned = 100.0
    for _ in range(1000):
        planned = next_tick(planned, planned + 0.3, 1.0)  # each collection took 0.3 s
    assert planned == pytest.approx(1100.0)


def test_overrun_skips_missed_ticks() -> None:
    assert next_tick(100.0, 100.5, 1.0) == 101.0
    assert next_tick(100.0, 101.0, 1.0) == 102.0
    assert next_tick(100.0, 103.7, 1.0) == 104.0

"""``step=auto`` and the data a query reads, as docs/gateway.md states them."""

from __future__ import annotations

import pytest

from signalfire.config import Duration
from signalfire.gateway.api.query import auto_step, data_source
from signalfire.gateway.config import RetentionConfig

HOUR = 3600.0
DAY = 86400.0


@pytest.mark.parametrize(
    ("span", "step"),
    [(HOUR, 10), (DAY, 300), (30 * DAY, 7200), (365 * DAY, DAY), (2 * 365 * DAY, 2 * DAY)],
)
def test_auto_steps_give_about_500_points_from_the_nice_steps_then_whole_days(
    span: float, step: float
) -> None:
    assert auto_step(span) == step
    assert span / step <= 500


def test_the_source_is_the_coarsest_data_whose_buckets_divide_the_step_and_still_kept() -> None:
    kept = RetentionConfig(raw=Duration(DAY), rollup_1m=Duration(7 * DAY), rollup_5m=Duration(30 * DAY))
    now = 100 * DAY
    assert data_source(kept, 10, now - HOUR, now) == "raw"
    assert data_source(kept, 60, now - HOUR, now) == "1m"
    assert data_source(kept, 90, now - HOUR, now) == "raw"  # not whole minutes
    assert data_source(kept, 420, now - HOUR, now) == "1m"  # 7 minutes: not whole 5 minutes
    assert data_source(kept, 300, now - HOUR, now) == "5m"
    assert data_source(kept, 1800, now - HOUR, now) == "5m"
    assert data_source(kept, HOUR, now - HOUR, now) == "1h"
    assert data_source(kept, 2 * HOUR, now - HOUR, now) == "1h"
    assert data_source(kept, 10, now - 2 * DAY, now) == "1m"  # raw samples dropped by then
    assert data_source(kept, 10, now - 10 * DAY, now) == "5m"  # minutes dropped too
    assert data_source(kept, 60, now - 10 * DAY, now) == "5m"
    assert data_source(kept, 300, now - 60 * DAY, now) == "1h"  # 5 minutes dropped too
    assert data_source(kept, HOUR, now - 400 * DAY, now) == "1h"  # nothing kept: the hours
    # the 5-minute rows begin at migration 0011 in a database that had rollups before it
    assert data_source(kept, 300, now - HOUR, now, since_5m=now - 2 * HOUR) == "5m"
    assert data_source(kept, 300, now - 3 * HOUR, now, since_5m=now - 2 * HOUR) == "1m"
    forever = RetentionConfig(raw=Duration(0), rollup_1m=Duration(0))
    assert data_source(forever, 10, 0, now) == "raw"
    assert data_source(forever, 300, 0, now) == "5m"

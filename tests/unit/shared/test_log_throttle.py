"""A repeating error is logged once per distinct error per period, not once per attempt."""

from __future__ import annotations

from signalfire.log import Throttle


def test_each_distinct_key_is_due_once_per_period() -> None:
    now = [0.0]
    throttle = Throttle(30.0, clock=lambda: now[0])
    assert throttle.due("nats away")
    assert not throttle.due("nats away")
    assert throttle.due("permission denied")  # another error is said at once
    now[0] = 29.9
    assert not throttle.due("nats away")
    now[0] = 30.0
    assert throttle.due("nats away")
    assert not throttle.due("nats away")

"""When the agent collects: on wall-clock multiples of the interval, kept by the monotonic clock.

Aligning ticks (``:00``, ``:05``, ``:10`` for 5 s) makes batches from different hosts line up;
scheduling each tick from the previous planned one, not from when the last collection
ended, keeps the cadence from drifting. Both are pure functions of the clocks passed in.
"""

from __future__ import annotations

import math


def delay_until_aligned(wall: float, interval: float) -> float:
    """Seconds from wall-clock time ``wall`` to the next multiple of ``interval``."""
    return (-wall) % interval


def next_tick(planned: float, now: float, interval: float) -> float:
    """The monotonic time of the tick after the one planned for ``planned``.

    Ticks missed because a collection overran (or the host was suspended) are skipped,
    not run in a burst: the result is the first planned tick after ``now``.
    """
    following = planned + interval
    if following > now:
        return following
    missed = math.floor((now - planned) / interval)
    return planned + (missed + 1) * interval

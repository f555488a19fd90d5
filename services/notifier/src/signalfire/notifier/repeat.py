"""Repeat: remind the route's channels every ``repeat`` while the alert fires and nobody
acknowledged it. Pure: a notifier that was down for three periods sends one reminder, not
three."""

from __future__ import annotations

import math

from signalfire.notifier.config import Route
from signalfire.notifier.tracking import Track


def due_repeat(track: Track, route: Route, now: float) -> int | None:
    """The number of the reminder to send now (1, 2, …), or None when none is due.

    After sending it, ``track.repeats_done`` becomes that number.
    """
    if route.repeat is None or track.acknowledged or track.alert.status != "firing":
        return None
    periods = math.floor((now - track.since) / float(route.repeat))
    return periods if periods > track.repeats_done else None

"""Escalation: steps that go out ``after`` a while when nobody acknowledged the alert.

Pure: the track, the route and the time in, the steps due out. ``after`` counts from the
alert's first message, or from the last ``unack`` (which starts the steps over).
"""

from __future__ import annotations

from signalfire.notifier.config import Route
from signalfire.notifier.tracking import Track


def due_steps(track: Track, route: Route, now: float) -> list[int]:
    """Indexes of the escalation steps to send now (in order), none when acknowledged or
    resolved. A notifier that was down sends every step it missed, once."""
    if track.acknowledged or track.alert.status != "firing":
        return []
    return [
        index
        for index, step in enumerate(route.escalate)
        if index >= track.steps_done and track.since + float(step.after) <= now
    ]


def next_step_at(track: Track, route: Route) -> float | None:
    """When the next escalation step is due, or None when there is none to come."""
    if track.acknowledged or track.alert.status != "firing" or track.steps_done >= len(route.escalate):
        return None
    return track.since + float(route.escalate[track.steps_done].after)

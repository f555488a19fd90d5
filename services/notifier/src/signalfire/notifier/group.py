"""Grouping and digests: firing alerts held in a :class:`Batch` and sent as one message.

``group_wait`` holds a route's first firing alert of a group (``group_by`` fields) for that
long and sends one message with everything that fired meanwhile; ``digest`` collects a
route's alerts and sends one message per channel at the end of each period (aligned to the
clock, so ``digest: 1h`` sends on the hour). Batches live in the ``sf_notify_state`` KV
bucket under ``batch.<route>.<group>``. Everything here is pure.
"""

from __future__ import annotations

import hashlib
import math

import msgspec

from signalfire.events import AlertEvent
from signalfire.notifier.config import Route
from signalfire.notifier.routing import alert_fields


class Batch(msgspec.Struct, kw_only=True):
    route: int
    group: dict[str, str]
    due: float
    digest: bool
    alerts: list[AlertEvent] = []


def batched(route: Route) -> bool:
    """Whether firing alerts on ``route`` wait in a batch instead of going out at once."""
    return route.digest is not None or route.group_wait > 0


def group_of(alert: AlertEvent, route: Route) -> dict[str, str]:
    """The ``group_by`` values of ``alert`` (empty for a digest: one batch per route)."""
    if route.digest is not None:
        return {}
    fields = alert_fields(alert)
    return {name: fields.get(name, "") for name in route.group_by}


def batch_key(index: int, group: dict[str, str]) -> str:
    encoded = msgspec.json.encode(sorted(group.items()))
    return f"batch.{index}.{hashlib.sha256(encoded).hexdigest()[:24]}"


def due_at(route: Route, now: float) -> float:
    """When a batch opened at ``now`` is sent: after ``group_wait``, or at the end of the
    digest period containing ``now``."""
    if route.digest is not None:
        period = float(route.digest)
        return (math.floor(now / period) + 1) * period
    return now + float(route.group_wait)


def add(batch: Batch | None, alert: AlertEvent, index: int, route: Route, now: float) -> Batch:
    """``batch`` with ``alert`` in it (a new batch when there is none); an alert already in
    it is replaced by its newer event."""
    if batch is None:
        batch = Batch(
            route=index, group=group_of(alert, route), due=due_at(route, now), digest=route.digest is not None
        )
    others = [a for a in batch.alerts if a.id != alert.id]
    return msgspec.structs.replace(batch, alerts=[*others, alert])


def remove(batch: Batch, alert_id: str) -> Batch:
    """``batch`` without the alert ``alert_id`` (it resolved before the batch was sent)."""
    return msgspec.structs.replace(batch, alerts=[a for a in batch.alerts if a.id != alert_id])

"""Silences from the ``sf_silences`` KV bucket: while a silence is active, alerts it matches
are not sent (they are still stored and still counted). Each key holds one
:class:`signalfire.events.Silence` as JSON; whoever creates silences (the gateway's API)
writes them, the notifier only reads.
"""

from __future__ import annotations

from collections.abc import Iterable

from signalfire.events import AlertEvent, Silence
from signalfire.matchers import matches
from signalfire.notifier.routing import alert_fields


def silenced_by(alert: AlertEvent, silences: Iterable[Silence], now: float) -> Silence | None:
    """The active silence that mutes ``alert`` at ``now``, or None."""
    fields = alert_fields(alert)
    for silence in silences:
        if silence.active(now) and matches(silence.matchers, fields):
            return silence
    return None


def reason(silence: Silence) -> str:
    """The ``DeliveryResult.reason`` of a silenced delivery."""
    text = f"silenced by {silence.id} ({silence.author}"
    return text + (f": {silence.comment})" if silence.comment else ")")

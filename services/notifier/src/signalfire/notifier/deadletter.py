"""Dead letters: a notification that will never be delivered is written to
``deadletter.<alert>.<tag>.<channel>`` in the ``sf_notify_state`` KV bucket, so an operator
can see what was lost and why (``nats kv ls``/``get``). The dispatcher also logs it at error
level, counts it (``dead_letters_total``) and publishes a ``failed`` DeliveryResult whose
``reason`` starts with ``dead letter:``.

``reason`` says why there is no further attempt: every attempt (and the fallback) failed,
the alert resolved before its firing notice could be sent, or JetStream gave up on the
alert event after ``max_deliver`` deliveries.
"""

from __future__ import annotations

import msgspec
from nats.js.kv import KeyValue

from signalfire.events import AlertEvent

#: ``reason`` when the channel (and its fallback) refused or failed every attempt.
ATTEMPTS_FAILED = "every attempt failed"
#: ``reason`` when a firing event came after its alert's resolved event (a redelivery after a crash).
SUPERSEDED = "the alert resolved before its firing notice was sent (the firing event was redelivered late)"
#: ``reason`` of the ``suppressed`` result of a firing event a grouped route got after its
#: resolved event: it is not batched (the group would page for an alert that has ended).
RESOLVED_BEFORE_BATCHED = (
    "the alert resolved before its firing event was handled (the event was redelivered late): not batched"
)
#: ``reason`` of the ``suppressed`` result of such a firing notice when the channel is sent
#: the alert's resolved notice instead (it says when the alert fired): not a dead letter.
RESOLVED_FIRST = (
    "the alert resolved before its firing notice was sent (the firing event was redelivered late): "
    "its resolved notice was sent instead"
)


def max_deliveries(deliveries: int) -> str:
    """``reason`` when JetStream stopped redelivering the alert event."""
    return f"JetStream gave up on the alert event after {deliveries} deliveries"


class DeadLetter(msgspec.Struct, kw_only=True):
    alert: AlertEvent
    transition: str
    channel: str
    attempts: int
    error: str
    time: float
    fallback: str | None = None
    reason: str = ATTEMPTS_FAILED


def dead_letter_key(alert_key: str, tag: str, channel: str) -> str:
    """``deadletter.<alert>.<tag>.<channel>``, next to the ledger's ``sent.<alert>.<tag>.<channel>``."""
    return f"deadletter.{alert_key}.{tag}.{channel}"


async def record_dead_letter(kv: KeyValue, key: str, letter: DeadLetter) -> None:
    await kv.put(key, msgspec.json.encode(letter))

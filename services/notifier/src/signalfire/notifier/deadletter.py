"""Dead letters: a notification no channel (nor its fallback) accepted after the last
attempt is written to ``deadletter.<alert>.<tag>.<channel>`` in the ``sf_notify_state`` KV
bucket, so an operator can see what was lost and why (``nats kv ls``/``get``)."""

from __future__ import annotations

import msgspec
from nats.js.kv import KeyValue

from signalfire.events import AlertEvent


class DeadLetter(msgspec.Struct, kw_only=True):
    alert: AlertEvent
    transition: str
    channel: str
    attempts: int
    error: str
    time: float
    fallback: str | None = None


async def record_dead_letter(kv: KeyValue, key: str, letter: DeadLetter) -> None:
    await kv.put(key, msgspec.json.encode(letter))

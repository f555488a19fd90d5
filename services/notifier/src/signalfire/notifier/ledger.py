"""The record of what was sent, in the ``sf_notify_state`` KV bucket: exactly-once delivery.

A key ``sent.<alert digest>.<status>.<channel>`` is written after a channel accepted a
notification and checked before every send, so an alert event that JetStream redelivers
(the notifier crashed before acking it) or that was published twice is not sent twice.
"""

from __future__ import annotations

import hashlib

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from signalfire.events import AlertEvent


class SentMark(msgspec.Struct, kw_only=True):
    """The value stored under a ledger key (for people inspecting the bucket)."""

    alert_id: str
    status: str
    channel: str
    time: float
    attempt: int


def ledger_key(alert: AlertEvent, channel: str) -> str:
    """The KV key for (alert instance, transition, channel).

    Alert ids may hold any character, KV keys only ``[-/_=.a-zA-Z0-9]``: the id is hashed.
    Channel names are already restricted to ``[A-Za-z0-9_-]`` by the config.
    """
    digest = hashlib.sha256(alert.id.encode()).hexdigest()[:32]
    return f"sent.{digest}.{alert.status}.{channel}"


class DeliveryLedger:
    """Reads and writes sent marks in one KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def was_sent(self, alert: AlertEvent, channel: str) -> bool:
        try:
            await self._kv.get(ledger_key(alert, channel))
        except KeyNotFoundError:  # also a deleted key
            return False
        return True

    async def mark_sent(self, alert: AlertEvent, channel: str, time: float, attempt: int) -> None:
        mark = SentMark(alert_id=alert.id, status=alert.status, channel=channel, time=time, attempt=attempt)
        await self._kv.put(ledger_key(alert, channel), msgspec.json.encode(mark))

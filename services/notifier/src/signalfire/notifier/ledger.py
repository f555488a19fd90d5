"""The record of what was sent, in the ``sf_notify_state`` KV bucket: exactly one message
per (alert, transition, channel), also with several replicas and after a crash.

Before sending, a replica *claims* the message: ``kv.create(sent.<alert>.<tag>.<channel>)``,
which fails when the key exists, so of two replicas racing for one message exactly one wins.
The claim says ``sending`` until the channel has answered, then ``sent`` (with the channel's
reference, e.g. a Slack ``ts``) or ``failed``. A ``sending`` claim older than the lease
belongs to a replica that died mid-send (kill -9): another replica may take it over, with a
revision-checked update so again only one does. The owner refreshes its claim between
retries, so a long retry is not mistaken for a dead replica.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

#: What :meth:`DeliveryLedger.claim` found: ``mine`` (go ahead and send), ``done`` (already
#: sent or given up on: do nothing), ``busy`` (another live replica is sending it now).
ClaimOutcome = Literal["mine", "done", "busy"]


class SentMark(msgspec.Struct, kw_only=True):
    """The value stored under a ledger key."""

    alert_id: str
    channel: str
    tag: str
    owner: str
    state: Literal["sending", "sent", "failed"]
    time: float
    attempt: int = 0
    reference: str | None = None


def ledger_key(alert_key: str, tag: str, channel: str) -> str:
    """``sent.<alert>.<tag>.<channel>``: ``alert_key`` is already KV-safe (a hash), ``tag`` is
    ``firing``, ``resolved``, ``esc0-1``, ``rep0-2``, ``ack1`` or ``batch-<due>``, channel
    names are restricted to ``[A-Za-z0-9_-]`` by the config."""
    return f"sent.{alert_key}.{tag}.{channel}"


class DeliveryLedger:
    """Claims and marks in one KV bucket, on behalf of one replica (``owner``)."""

    def __init__(self, kv: KeyValue, owner: str, lease: float, clock: Callable[[], float]) -> None:
        self._kv = kv
        self.owner = owner
        self._lease = lease
        self._clock = clock

    async def claim(self, key: str, alert_id: str, channel: str, tag: str) -> ClaimOutcome:
        mark = SentMark(
            alert_id=alert_id, channel=channel, tag=tag, owner=self.owner, state="sending", time=self._clock()
        )
        try:
            await self._kv.create(key, msgspec.json.encode(mark))
            return "mine"
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return "busy"  # deleted between our create and get: look again later
        found = msgspec.json.decode(entry.value or b"{}", type=SentMark)
        if found.state != "sending":
            return "done"
        if found.owner == self.owner or self._clock() - found.time < self._lease:
            return "busy"
        try:
            await self._kv.update(key, msgspec.json.encode(mark), last=entry.revision)
        except KeyWrongLastSequenceError:
            return "busy"
        return "mine"

    async def refresh(self, key: str, mark: SentMark) -> None:
        """Keep our ``sending`` claim fresh while retries wait."""
        await self._kv.put(key, msgspec.json.encode(msgspec.structs.replace(mark, time=self._clock())))

    async def finish(
        self, key: str, mark: SentMark, state: Literal["sent", "failed"], attempt: int, reference: str | None
    ) -> None:
        done = msgspec.structs.replace(
            mark, state=state, time=self._clock(), attempt=attempt, reference=reference
        )
        await self._kv.put(key, msgspec.json.encode(done))

    async def release(self, key: str) -> None:
        """Give a claim up without sending (the send was interrupted before it began)."""
        await self._kv.delete(key)

    async def mark(self, key: str) -> SentMark | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return msgspec.json.decode(entry.value or b"{}", type=SentMark)

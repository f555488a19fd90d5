"""The notifier's read-modify-writes of its KV state against real NATS JetStream: a change
that lost to another writer is made again from a fresh read, deletions included."""

from __future__ import annotations

from typing import Any

import msgspec

from signalfire.bus import NatsConfig, ensure_streams
from signalfire.notifier.group import Batch, remove
from signalfire.notifier.state import NotifyState
from tests.support.alerts import firing_alert


async def test_a_batch_emptied_while_an_alert_joins_keeps_the_alert_that_joined(
    nc: Any, nats_config: NatsConfig
) -> None:
    # A flush empties its batch (a compare-and-delete) just as a firing event adds an alert
    # to it. nats-py reports a refused delete as a plain BadRequestError, which used to fail
    # the flush after its message was sent; the next tick then found the message sent and
    # dropped the newcomer with the rest, never notified.
    js = nc.jetstream()
    await ensure_streams(js, nats_config)
    kv = await js.key_value(nats_config.subjects.bucket("notify_state"))
    state = NotifyState(kv, lambda key, error: None)
    await state.start()
    sent, joined = firing_alert("flushed"), firing_alert("joined")
    key = "batch.0.emptied"

    def batch(*alerts: Any) -> Batch:
        return Batch(route=0, group={}, due=60.0, digest=True, alerts=list(alerts))

    await state.update_batch(key, lambda _: batch(sent))
    read = kv.get
    reads = 0

    async def read_then_join(k: str) -> Any:
        # the other writer's add lands between the flush's first read and its delete
        nonlocal reads
        entry = await read(k)
        reads += 1
        if reads == 1:
            await kv.put(key, msgspec.json.encode(batch(sent, joined)))
        return entry

    def emptied(b: Batch | None) -> Batch | None:
        left = remove(b, sent.id) if b is not None else None
        return left if left is not None and left.alerts else None

    kv.get = read_then_join
    try:
        kept = await state.update_batch(key, emptied)
    finally:
        kv.get = read
        await state.stop()
    assert reads == 2, "the refused delete was not made again from a fresh read"
    assert kept is not None and [a.id for a in kept.alerts] == [joined.id]
    stored = msgspec.json.decode((await kv.get(key)).value, type=Batch)
    assert [a.id for a in stored.alerts] == [joined.id]

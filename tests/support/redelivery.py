"""Playing replicas that die holding a JetStream message."""

from __future__ import annotations

import asyncio
from typing import Any


async def die_holding_it(js: Any, stream: str, durable: str, times: int, ack_wait: float) -> None:
    """``times`` times: fetch the next message of the durable pull consumer ``durable`` and
    never acknowledge it, as a replica killed mid-delivery would, waiting past ``ack_wait`` so
    JetStream takes it back. With ``times`` equal to the consumer's ``max_deliver``, JetStream
    then gives up on the message."""
    dying = await js.pull_subscribe_bind(durable=durable, stream=stream)
    for _ in range(times):
        [msg] = await dying.fetch(1, timeout=5)
        assert msg.metadata.sequence.stream > 0
        await asyncio.sleep(ack_wait + 0.2)  # past ack_wait: JetStream takes it back
    await dying.unsubscribe()

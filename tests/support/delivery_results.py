"""The ``results`` fixture: every delivery result the notifiers publish during a test.

Import it into a test module (and name it in ``__all__``) to use it there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.msg import Msg

from signalfire.bus import NatsConfig
from signalfire.events import DeliveryResult, decode


@pytest.fixture
async def results(nc: Any, nats_config: NatsConfig) -> AsyncIterator[list[DeliveryResult]]:
    """Every ``DeliveryResult`` published on any channel's notification subject, in order."""
    seen: list[DeliveryResult] = []

    async def collect(msg: Msg) -> None:
        seen.append(decode(msg.data, DeliveryResult))

    sub = await nc.subscribe(nats_config.subjects.all_notifications, cb=collect)
    yield seen
    await sub.unsubscribe()

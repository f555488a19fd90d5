"""The ``results`` fixture: every delivery result the notifiers publish during a test.

Import it into a test module (and name it in ``__all__``) to use it there."""

from __future__ import annotations

from typing import Any

import pytest

from signalfire.bus import NatsConfig
from signalfire.events import DeliveryResult
from tests.support.subscriptions import collect


@pytest.fixture
async def results(nc: Any, nats_config: NatsConfig) -> list[DeliveryResult]:
    """Every ``DeliveryResult`` published on any channel's notification subject, in order."""
    return await collect(nc, nats_config.subjects.all_notifications, DeliveryResult)

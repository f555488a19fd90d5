"""Routes as an operator writes them, seen through ``log`` channels (one record per message):
an alert on two routes, an alert that resolves inside its group's wait, a config without routes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.notifier.channels.log import LogChannelConfig
from signalfire.notifier.config import NotifyConfig, Route
from tests.support.alerts import firing_alert, publish_alert
from tests.support.notifiers import notifier_services
from tests.support.polling import wait_until

T0 = 1_763_794_800.0
NOTIFICATIONS = "signalfire.notifications"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now


def _config(nats_config: NatsConfig, routes: list[Route]) -> NotifyConfig:
    channels: dict[str, Any] = {name: LogChannelConfig() for name in ("ops", "team")}
    return NotifyConfig(nats=nats_config, channels=channels, routes=routes, tick=Duration(0.02))


def _sent(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """(channel, alert id, transition) of every message the log channels wrote."""
    return [
        (r.channel, r.alert_id, r.transition)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == NOTIFICATIONS
    ]


async def test_an_alert_on_two_routes_goes_to_both(
    nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NOTIFICATIONS)
    routes = [Route(match={"severity": "high"}, channels=["ops"], continue_=True), Route(channels=["team"])]
    async with notifier_services(nc) as start:
        await start(_config(nats_config, routes))
        alert = firing_alert(now=T0)
        await publish_alert(nc, nats_config, alert)
        await wait_until(lambda: len(_sent(caplog)) == 2, "a message on each route")
    assert sorted(_sent(caplog)) == [("ops", alert.id, "firing"), ("team", alert.id, "firing")]


async def test_an_alert_that_resolves_within_group_wait_is_left_out_of_the_group(
    nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NOTIFICATIONS)
    clock = Clock()
    route = Route(channels=["ops"], group_wait=Duration(300), group_by=["rule"])
    async with notifier_services(nc, clock=clock.time) as start:
        service = await start(_config(nats_config, [route]))

        def waiting() -> set[str]:
            """The ids of the alerts the group's message waits for."""
            return {a.id for batch in service.state.batches.values() for a in batch.alerts}

        brief, lasting = firing_alert(now=T0, host="web-1"), firing_alert(now=T0, host="web-2")
        await publish_alert(nc, nats_config, brief)
        await publish_alert(nc, nats_config, lasting)
        await wait_until(lambda: waiting() == {brief.id, lasting.id}, "both alerts in the group")
        gone = msgspec.structs.replace(brief, status="resolved", ends_at=T0 + 60, seq=brief.seq + 1)
        await publish_alert(nc, nats_config, gone)
        await wait_until(lambda: waiting() == {lasting.id}, "the resolved alert left out of the group")
        assert _sent(caplog) == []
        clock.now = T0 + 300
        await wait_until(lambda: _sent(caplog), "the group's message")
        await asyncio.sleep(0.3)  # nothing more follows: no notice of the alert nobody was told of
    assert _sent(caplog) == [("ops", lasting.id, "firing")]
    [record] = [r for r in caplog.records if r.name == NOTIFICATIONS]
    assert not hasattr(record, "alerts")  # a group of one: no count of alerts


async def test_without_routes_alerts_are_taken_and_the_operator_warned(
    nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with notifier_services(nc) as start:
        await start(_config(nats_config, []))
        await publish_alert(nc, nats_config, firing_alert(now=T0))
        await asyncio.sleep(0.3)
    assert "no routes configured: alert events are acknowledged without notifying anyone" in [
        r.getMessage() for r in caplog.records
    ]
    assert _sent(caplog) == []

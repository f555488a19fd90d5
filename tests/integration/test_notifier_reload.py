"""A config reload while an alert fires: its resolved notice, owed to a channel the reload
removed (or renamed), is reported ``suppressed`` with the reason, never sent elsewhere and never
lost without a trace; the notifier goes on (a reported hang of this scenario did not reproduce:
the scenario runs under ``asyncio.wait_for`` so that a hang would fail the test)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import DeliveryResult
from signalfire.notifier.config import Route
from tests.integration.test_notifier_pipeline import (
    T0,
    Clock,
    alert,
    clock,
    hook,
    make_config,
    quiet,
    receivers,
    resolved,
    running,
)
from tests.support.alerts import publish_alert
from tests.support.delivery_results import results
from tests.support.polling import wait_until
from tests.support.webhook import WebhookReceiver

__all__ = ["clock", "receivers", "results", "running"]  # the shared fixtures

#: The whole scenario ends well inside pytest's timeout: a hang fails the test, it does not hang it.
SCENARIO = 30.0
REMOVED = "the channel was removed by a config reload"


def _of(results: list[DeliveryResult], alert_id: str, transition: str) -> list[tuple[str, str, str | None]]:
    return [
        (r.channel, r.status, r.reason)
        for r in results
        if r.alert_id == alert_id and r.transition == transition
    ]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("repeat", "renamed"),
    [(None, False), (Duration(3600), False), (None, True)],
    ids=["removed", "removed-with-a-reminder-due", "renamed"],
)
async def test_a_resolve_whose_channel_a_reload_removed_is_reported_suppressed(  # noqa: PLR0917
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    clock: Clock,
    running: Any,
    results: list[DeliveryResult],
    repeat: Duration | None,
    renamed: bool,
) -> None:
    # "ops2" is the same receiver under a new name: a rename, which the notifier cannot tell apart
    new_name, new_url = ("ops2", "ops") if renamed else ("team", "team")

    async def scenario() -> None:
        old = make_config(
            nats_config,
            {"ops": hook(receivers, "ops"), "team": hook(receivers, "team")},
            [Route(channels=["ops"], repeat=repeat)],
        )
        service = await running(old)
        a = alert()
        await publish_alert(nc, nats_config, a)
        await wait_until(lambda: receivers.transitions("ops") == [(a.id, "firing")], "the firing message")

        new = make_config(
            nats_config, {new_name: hook(receivers, new_url)}, [Route(channels=[new_name], repeat=repeat)]
        )
        await service.reload(new)
        if repeat is not None:
            clock.now = T0 + 3600  # a reminder is due as the alert resolves
        await publish_alert(nc, nats_config, resolved(a))
        await wait_until(lambda: _of(results, a.id, "resolved"), "the resolved notice's result")
        await quiet()
        assert _of(results, a.id, "resolved") == [("ops", "suppressed", REMOVED)]
        # nothing went out after the firing message: not to the old receiver, nor the new channel
        assert [(p.channel, p.transition) for p in receivers.posted()] == [("ops", "firing")]

        # the notifier goes on: the next alert reaches the new channel
        b = alert()
        await publish_alert(nc, nats_config, b)
        await wait_until(lambda: _of(results, b.id, "firing"), "the next alert's result")
        assert _of(results, b.id, "firing") == [(new_name, "sent", None)]
        assert receivers.transitions(new_url)[-1:] == [(b.id, "firing")]

    await asyncio.wait_for(scenario(), SCENARIO)

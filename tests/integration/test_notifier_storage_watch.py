"""Who watches storage: when the gateway's consumers take nothing while messages wait (every
gateway down, PostgreSQL unreachable or full), the notifier pages once about it, and sends
the resolve once the gateway stores again. Real NATS; the gateway's durable consumer made and
read here as the gateway does, so the test decides when it stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import MetricBatch, Sample, encode
from signalfire.notifier.channels.webhook import WebhookChannelConfig
from signalfire.notifier.config import NotifyConfig, Route
from signalfire.subjects import SELF_HOST
from tests.faults.support import alert_events, eventually
from tests.support.metrics import value
from tests.support.notifiers import notifier_services
from tests.support.webhook import WebhookReceiver

WATCH = 1.0


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def notify_config(nats: NatsConfig, receiver: WebhookReceiver) -> NotifyConfig:
    return NotifyConfig(
        nats=nats,
        channels={"oncall": WebhookChannelConfig(url=receiver.url("oncall"), retry_backoff=Duration(0.01))},
        routes=[Route(channels=["oncall"])],
        tick=Duration(0.05),
        evaluation_watch=Duration(0),
        storage_watch=Duration(WATCH),
    )


async def test_nothing_stored_while_messages_wait_pages_once_and_resolves_once(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    subjects = nats_config.subjects
    async with notifier_services(nc) as start:
        config = notify_config(nats_config, receiver)
        notifiers = [await start(config), await start(config)]

        def checks(result: str) -> float:
            return sum(
                value(n.registry, "signalfire_notifier_watch_checks_total", watch="storage", result=result)
                for n in notifiers
            )

        # No gateway has made its consumers yet: nothing to watch, nothing paged.
        await eventually(lambda: checks("ok") >= 4, "checks before any gateway", 5)
        await js.add_consumer(
            subjects.metrics_stream,
            ConsumerConfig(durable_name="gateway-metrics", ack_policy=AckPolicy.EXPLICIT),
        )
        # Made and idle, nothing waiting, for longer than the watch: no page either.
        await asyncio.sleep(WATCH * 2)
        assert receiver.posted() == [] and checks("trouble") == 0

        # Messages wait and the gateway takes none: paged once, naming the consumer.
        for i in range(3):
            batch = MetricBatch(host=f"st-{i}", time=time.time(), samples=[Sample(name="temp", value=1.0)])
            await js.publish(subjects.metrics(f"st-{i}"), encode(batch))
        waiting_since = time.monotonic()
        await eventually(lambda: len(receiver.posted("oncall")) >= 1, "the page about storage", 10)
        paged = receiver.posted("oncall")[0]
        assert paged.at - waiting_since >= WATCH - 0.3
        alert = paged.body["alert"]
        assert (paged.transition, alert["rule"], alert["host"], alert["severity"]) == (
            "firing",
            "StorageStalled",
            SELF_HOST,
            "critical",
        )
        assert "gateway-metrics took nothing while 3 messages wait" in alert["annotations"]["summary"]
        await asyncio.sleep(WATCH * 2)  # both replicas keep checking: no second page
        assert len(receiver.posted("oncall")) == 1

        # The gateway stores again (takes and acknowledges them): the resolve, once.
        taker = await js.pull_subscribe_bind("gateway-metrics", subjects.metrics_stream)
        for msg in await taker.fetch(3, timeout=5):
            await msg.ack_sync()
        await eventually(lambda: len(receiver.posted("oncall")) >= 2, "the resolve", 10)
        await asyncio.sleep(WATCH)
        assert [(p.alert_id, p.transition) for p in receiver.posted("oncall")] == [
            (paged.alert_id, "firing"),
            (paged.alert_id, "resolved"),
        ]
    ours = [(e.rule, e.status, e.seq) for e in await alert_events(js, nats_config)]
    assert ours == [("StorageStalled", "firing", 1), ("StorageStalled", "resolved", 2)]
    # 1 s is far shorter than the gateway holds a batch (its minute's merge): said once a replica.
    short = [r for r in caplog.records if r.getMessage().startswith("storage_watch is shorter")]
    assert len(short) == 2


async def test_a_gateway_that_keeps_storing_through_a_backlog_pages_nobody(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver
) -> None:
    """Messages wait the whole time (a backlog after an outage), but the floor moves."""
    js = nc.jetstream()
    subjects = nats_config.subjects
    await js.add_consumer(
        subjects.metrics_stream, ConsumerConfig(durable_name="gateway-metrics", ack_policy=AckPolicy.EXPLICIT)
    )
    for i in range(40):
        batch = MetricBatch(host="st-busy", time=time.time() + i, samples=[Sample(name="temp", value=1.0)])
        await js.publish(subjects.metrics("st-busy"), encode(batch))
    taker = await js.pull_subscribe_bind("gateway-metrics", subjects.metrics_stream)
    async with notifier_services(nc) as start:
        notifier = await start(notify_config(nats_config, receiver))
        for _ in range(12):  # one message stored every 0.3 s: 4 s of backlog, never stalled
            [msg] = await taker.fetch(1, timeout=5)
            await msg.ack_sync()
            await asyncio.sleep(0.3)
        assert value(notifier.registry, "signalfire_notifier_unstored_messages") > 0
        assert (
            value(
                notifier.registry, "signalfire_notifier_watch_checks_total", watch="storage", result="trouble"
            )
            == 0
        )
    assert receiver.posted() == []


async def test_a_share_of_the_hosts_nobody_stores_pages_naming_its_consumer(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver
) -> None:
    """With ingest workers each share of the hosts has a consumer of its own: the one whose
    worker stores nothing pages, though the other share's is stored."""
    js = nc.jetstream()
    subjects = nats_config.subjects
    for name in ("gateway-metrics-1of2", "gateway-metrics-2of2"):
        await js.add_consumer(
            subjects.metrics_stream, ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT)
        )
    for i in range(3):
        batch = MetricBatch(host=f"st-{i}", time=time.time(), samples=[Sample(name="temp", value=1.0)])
        await js.publish(subjects.metrics(f"st-{i}"), encode(batch))
    stored = await js.pull_subscribe_bind("gateway-metrics-1of2", subjects.metrics_stream)
    for msg in await stored.fetch(3, timeout=5):
        await msg.ack_sync()
    async with notifier_services(nc) as start:
        await start(notify_config(nats_config, receiver))
        await eventually(lambda: len(receiver.posted("oncall")) >= 1, "the page about storage", 10)
    summary = receiver.posted("oncall")[0].body["alert"]["annotations"]["summary"]
    assert "gateway-metrics-2of2 took nothing while 3 messages wait" in summary
    assert "1of2" not in summary

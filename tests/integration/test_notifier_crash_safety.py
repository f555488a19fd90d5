"""What a crashed notifier leaves behind, against real NATS JetStream and a real HTTP receiver:
another replica's claims taken over in order (firing before resolved), the same delivery id
on every attempt, no resolved notice for a firing notice nobody was sent, and a dead letter
(logged, counted, published) for what can no longer be delivered — also when JetStream
gives up on an event. A dead replica is played by writing the ledger entry it left behind."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import AlertEvent, DeliveryResult
from signalfire.notifier.channels.webhook import WebhookChannelConfig
from signalfire.notifier.config import EscalationStep, NotifyConfig, Route
from signalfire.notifier.deadletter import RESOLVED_BEFORE_BATCHED, RESOLVED_FIRST, SUPERSEDED, DeadLetter
from signalfire.notifier.group import Batch, batch_key, group_of
from signalfire.notifier.ledger import MarkState, SentMark, ledger_key
from signalfire.notifier.service import DURABLE
from signalfire.notifier.tracking import alert_key
from tests.support.alerts import firing_alert, publish_alert
from tests.support.delivery_results import results
from tests.support.metrics import value
from tests.support.notifiers import notifier_services
from tests.support.polling import wait_until
from tests.support.redelivery import die_holding_it
from tests.support.webhook import WebhookReceiver

__all__ = ["results"]  # the shared fixture


class Receiver(WebhookReceiver):
    """``/<channel>`` records each request and answers with the channel's scripted statuses,
    then 200."""

    def got(self, name: str) -> list[tuple[str, str, str]]:
        """(transition, alert id, idempotency key) of every request ``name`` got."""
        return [(p.transition, p.alert_id, p.idempotency_key) for p in self.posted(name)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
async def running(nc: Any) -> AsyncIterator[Callable[[NotifyConfig], Any]]:
    async with notifier_services(nc) as start:
        yield start


def config_for(nats_config: NatsConfig, receiver: Receiver, **more: Any) -> NotifyConfig:
    """One webhook channel ``ops``, every alert routed to it; ``ack_wait`` 1 s (so the lease,
    which follows it, is 1 s: a dead replica's claim expires within the test)."""
    return NotifyConfig(
        nats=nats_config,
        channels={"ops": WebhookChannelConfig(url=receiver.url("ops"), retry_backoff=Duration(0.01))},
        routes=[Route(channels=["ops"])],
        tick=Duration(0.05),
        ack_wait=Duration(1),
        **more,
    )


def alert(status: str = "firing", alert_id: str | None = None) -> AlertEvent:
    return firing_alert(alert_id, status=status, severity="critical")


async def kv_of(nc: Any, nats_config: NatsConfig) -> Any:
    return await nc.jetstream().key_value(nats_config.subjects.bucket("notify_state"))


async def mark_of(kv: Any, key: str) -> SentMark | None:
    try:
        entry = await kv.get(key)
    except Exception:
        return None
    return msgspec.json.decode(entry.value, type=SentMark) if entry.value else None


async def left_behind(
    kv: Any, fired: AlertEvent, owner: str, state: MarkState, ago: float = 0.0, **more: Any
) -> str:
    """Write the ``firing`` mark of ``fired`` for ``ops`` as replica ``owner`` left it
    ``ago`` seconds ago; its ledger key."""
    key = ledger_key(alert_key(fired.id), "firing", "ops")
    mark = SentMark(
        alert_id=fired.id,
        channel="ops",
        tag="firing",
        owner=owner,
        state=state,
        time=time.time() - ago,
        **more,
    )
    await kv.create(key, msgspec.json.encode(mark))
    return key


async def dead_letter(kv: Any, key: str, timeout: float = 10.0) -> DeadLetter:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return msgspec.json.decode((await kv.get(key)).value, type=DeadLetter)
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(f"no dead letter {key}") from None
            await asyncio.sleep(0.05)


async def test_a_resolved_event_sends_a_dead_replicas_firing_notice_first_with_its_delivery_id(
    nc: Any, nats_config: NatsConfig, receiver: Receiver, running: Any
) -> None:
    # A replica claimed the firing notice and was killed before it was sent; JetStream will
    # redeliver the firing event only later, and the resolved event arrives first.
    kv = await kv_of(nc, nats_config)
    fired = alert()
    firing_key = await left_behind(kv, fired, "dead", "sending", alert=fired)
    await running(config_for(nats_config, receiver))
    await publish_alert(nc, nats_config, msgspec.structs.replace(fired, status="resolved", seq=2))

    await wait_until(lambda: len(receiver.got("ops")) == 2, "the firing and the resolved notice")
    resolved_key = ledger_key(alert_key(fired.id), "resolved", "ops")
    assert receiver.got("ops") == [("firing", fired.id, firing_key), ("resolved", fired.id, resolved_key)]

    async def both_marked_sent() -> bool:
        # (the mark is written after the receiver answered: the notice can arrive first)
        marks = [await mark_of(kv, k) for k in (firing_key, resolved_key)]
        return [m.state if m else None for m in marks] == ["sent", "sent"]

    await wait_until(both_marked_sent, "both notices marked sent in the ledger")


async def test_a_resolved_notice_waits_while_the_firing_notice_is_in_flight(
    nc: Any, nats_config: NatsConfig, receiver: Receiver, running: Any
) -> None:
    # another (live) replica is sending the firing notice right now
    kv = await kv_of(nc, nats_config)
    fired = alert()
    firing_key = await left_behind(kv, fired, "other", "sending")
    service = await running(config_for(nats_config, receiver, claim_lease=Duration(60)))
    await publish_alert(nc, nats_config, msgspec.structs.replace(fired, status="resolved", seq=2))
    await wait_until(
        lambda: value(service.registry, "signalfire_notifier_busy_waits_total") >= 1,
        "the resolved event to wait",
    )
    assert receiver.got("ops") == []

    # the other replica's channel answered: the resolved notice follows
    claim = await mark_of(kv, firing_key)
    assert claim is not None
    await kv.put(firing_key, msgspec.json.encode(msgspec.structs.replace(claim, state="sent")))
    await wait_until(lambda: len(receiver.got("ops")) == 1, "the resolved notice")
    assert [t for t, _, _ in receiver.got("ops")] == ["resolved"]


async def test_a_firing_event_redelivered_after_its_resolved_sends_the_resolved_notice_not_a_late_page(
    nc: Any,
    nats_config: NatsConfig,
    receiver: Receiver,
    running: Any,
    *,
    results: list[DeliveryResult],
) -> None:
    kv = await kv_of(nc, nats_config)
    service = await running(config_for(nats_config, receiver))
    fired = alert()
    resolved = msgspec.structs.replace(fired, status="resolved", seq=2, ends_at=fired.starts_at + 42)
    # the resolved event comes first: nobody was sent the firing notice, so nobody is told it resolved
    await publish_alert(nc, nats_config, resolved)
    firing_key = ledger_key(alert_key(fired.id), "firing", "ops")

    async def superseded() -> bool:
        mark = await mark_of(kv, firing_key)
        return mark is not None and mark.state == "superseded"

    deadline = time.monotonic() + 10
    while not await superseded():
        assert time.monotonic() < deadline, "the firing notice was not marked superseded"
        await asyncio.sleep(0.05)
    assert receiver.got("ops") == []

    # The firing event, redelivered late (twice: a second crash): no page for an alert that
    # has ended, but the channel hears once that it fired and resolved, and when.
    await publish_alert(nc, nats_config, fired)
    await wait_until(lambda: len(receiver.got("ops")) == 1, "the resolved notice")
    await publish_alert(nc, nats_config, fired, msg_id=f"{fired.id}:firing:again")
    await wait_until(
        lambda: sum(r.transition == "firing" and r.status == "suppressed" for r in results) == 2,
        "both firing events handled",
    )
    await asyncio.sleep(0.3)
    [(transition, alert_id, key)] = receiver.got("ops")
    resolved_key = ledger_key(alert_key(fired.id), "resolved", "ops")
    assert (transition, alert_id, key) == ("resolved", fired.id, resolved_key)
    [body] = [p.body for p in receiver.posted("ops")]
    assert (body["alert"]["starts_at"], body["alert"]["ends_at"]) == (fired.starts_at, fired.starts_at + 42)
    firing_results = [r for r in results if r.transition == "firing"]
    assert {(r.status, r.reason) for r in firing_results} == {("suppressed", RESOLVED_FIRST)}
    assert [r.status for r in results if r.transition == "resolved"] == ["sent"]
    assert value(service.registry, "signalfire_notifier_dead_letters_total", channel="ops") == 0
    with pytest.raises(KeyNotFoundError):
        await kv.get(f"deadletter.{alert_key(fired.id)}.firing.ops")
    assert service.state.tracks_of(fired.id) == []  # no escalations or repeats for a resolved alert


async def test_a_firing_event_after_a_superseded_mark_without_its_resolved_event_is_a_dead_letter(
    nc: Any,
    nats_config: NatsConfig,
    receiver: Receiver,
    running: Any,
    *,
    results: list[DeliveryResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a ``superseded`` mark written by a notifier that did not keep the resolved event in it
    kv = await kv_of(nc, nats_config)
    fired = alert()
    await left_behind(kv, fired, "older", "superseded")
    service = await running(config_for(nats_config, receiver))
    with caplog.at_level(logging.ERROR, logger="signalfire.notifier"):
        await publish_alert(nc, nats_config, fired)
        letter = await dead_letter(kv, f"deadletter.{alert_key(fired.id)}.firing.ops")
        await wait_until(lambda: any(r.status == "failed" for r in results), "the failed result")
    assert (letter.alert.id, letter.transition, letter.reason) == (fired.id, "firing", SUPERSEDED)
    assert receiver.got("ops") == []
    [failed] = [r for r in results if r.status == "failed"]
    assert (failed.alert_id, failed.reason) == (fired.id, f"dead letter: {SUPERSEDED}")
    assert value(service.registry, "signalfire_notifier_dead_letters_total", channel="ops") == 1
    assert any("dead letter" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert service.state.tracks_of(fired.id) == []


async def test_a_firing_event_redelivered_after_its_resolved_is_not_batched_on_a_grouped_route(
    nc: Any,
    nats_config: NatsConfig,
    receiver: Receiver,
    running: Any,
    *,
    results: list[DeliveryResult],
) -> None:
    # The example's `high` route: grouped, with hourly reminders. A late firing event joining
    # the group would page for an ended alert and then remind of it every hour, for ever.
    route = Route(channels=["ops"], group_wait=Duration(0.5), group_by=["rule"], repeat=Duration(2))
    service = await running(msgspec.structs.replace(config_for(nats_config, receiver), routes=[route]))
    fired = alert()
    js = nc.jetstream()

    async def handled(ack: Any) -> bool:  # the notifier acknowledged the event
        info = await js.consumer_info(nats_config.subjects.alerts_stream, DURABLE)
        return bool(info.ack_floor.stream_seq >= ack.seq)

    resolved = await publish_alert(nc, nats_config, msgspec.structs.replace(fired, status="resolved", seq=2))
    await wait_until(lambda: handled(resolved), "the resolved event handled")
    late = await publish_alert(nc, nats_config, fired)
    await wait_until(lambda: handled(late), "the late firing event handled")
    await asyncio.sleep(3)  # past the group's wait and a reminder's interval
    assert receiver.got("ops") == []
    [result] = [r for r in results if r.transition == "firing"]
    assert (result.status, result.reason) == ("suppressed", RESOLVED_BEFORE_BATCHED)
    assert service.state.tracks_of(fired.id) == []
    assert service.state.firing() == []


async def test_a_flush_tried_again_after_its_message_went_out_keeps_the_alerts_that_joined_since(
    nc: Any, nats_config: NatsConfig, receiver: Receiver, running: Any
) -> None:
    # A replica sent a group's message covering `first` to `ops` (not yet to `ops2`), then
    # failed to empty the batch (NATS away, or killed); `second` joined the batch meanwhile.
    # The flush tried again sends `ops2` that same message, takes `first` out, and leaves
    # `second` for the next message, to both.
    kv = await kv_of(nc, nats_config)
    route = Route(channels=["ops", "ops2"], group_wait=Duration(0.5))
    first, second = alert(alert_id="in-the-message"), alert(alert_id="joined-after")
    key = batch_key(0, group_of(first, route))
    due = float(int(time.time()) - 1)
    waiting = Batch(route=0, group={}, due=due, digest=False, alerts=[first, second])
    await kv.create(key, msgspec.json.encode(waiting))
    tag = f"batch-{int(due)}"
    sent = SentMark(
        alert_id=first.id,
        channel="ops",
        tag=tag,
        owner="older",
        state="sent",
        time=time.time() - 1,
        covered=[first.id],
    )
    await kv.create(ledger_key(key.rsplit(".", 1)[-1], tag, "ops"), msgspec.json.encode(sent))

    config = config_for(nats_config, receiver)
    channels = {**config.channels, "ops2": WebhookChannelConfig(url=receiver.url("ops2"))}
    service = await running(msgspec.structs.replace(config, channels=channels, routes=[route]))
    await wait_until(lambda: len(receiver.posted("ops")) == 1, "the next message")
    await asyncio.sleep(1)  # a message more (or the first sent again) would come by now
    # a group message of one alert names it alone (`alert`, no `alerts` list)
    assert [(p.alert_id, p.body["alerts"]) for p in receiver.posted("ops")] == [(second.id, [])]
    assert [(p.alert_id, p.body["alerts"]) for p in receiver.posted("ops2")] == [
        (first.id, []),
        (second.id, []),
    ]
    assert service.state.batches.entries == {}
    assert sorted(a.id for a in service.state.firing()) == sorted([first.id, second.id])


async def test_every_attempt_carries_the_same_delivery_id(
    nc: Any, nats_config: NatsConfig, receiver: Receiver, running: Any
) -> None:
    receiver.statuses["ops"] = [503]
    await running(config_for(nats_config, receiver))
    fired = alert()
    await publish_alert(nc, nats_config, fired)
    await wait_until(lambda: len(receiver.got("ops")) == 2, "the retry")
    key = ledger_key(alert_key(fired.id), "firing", "ops")
    assert receiver.got("ops") == [("firing", fired.id, key)] * 2


async def test_an_event_jetstream_gives_up_on_becomes_a_dead_letter_and_frees_its_claim(
    nc: Any,
    nats_config: NatsConfig,
    receiver: Receiver,
    running: Any,
    results: list[DeliveryResult],
) -> None:
    # Two replicas in a row took the event, claimed its message and died (max_deliver 2).
    js = nc.jetstream()
    kv = await kv_of(nc, nats_config)
    stream = nats_config.subjects.alerts_stream
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=DURABLE,
            filter_subject=nats_config.subjects.all_alerts,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=1.0,
            max_deliver=2,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.now(UTC) - timedelta(seconds=60),
        ),
    )
    fired = alert()
    await publish_alert(nc, nats_config, fired)
    await die_holding_it(js, stream, DURABLE, times=2, ack_wait=1.0)
    firing_key = await left_behind(kv, fired, "dead", "sending", ago=5)

    service = await running(config_for(nats_config, receiver, max_deliver=2))
    letter = await dead_letter(kv, f"deadletter.{alert_key(fired.id)}.firing.ops")
    assert letter.reason == "JetStream gave up on the alert event after 2 deliveries"
    assert (await mark_of(kv, firing_key)).state == "failed"  # type: ignore[union-attr]
    assert value(service.registry, "signalfire_notifier_events_given_up_total", consumer=DURABLE) == 1
    await wait_until(lambda: any(r.status == "failed" for r in results), "the failed result")
    assert [r.reason for r in results if r.status == "failed"] == [f"dead letter: {letter.reason}"]
    assert receiver.got("ops") == []


async def test_a_resolved_notice_follows_an_escalation_step_another_replica_is_sending(
    nc: Any, nats_config: NatsConfig, receiver: Receiver, running: Any
) -> None:
    # another replica is sending the escalation step: it is not in the track yet
    kv = await kv_of(nc, nats_config)
    channels = {
        name: WebhookChannelConfig(url=receiver.url(name), retry_backoff=Duration(0.01))
        for name in ("ops", "oncall")
    }
    route = Route(channels=["ops"], escalate=[EscalationStep(after=Duration(3600), channels=["oncall"])])
    config = msgspec.structs.replace(config_for(nats_config, receiver), channels=channels, routes=[route])
    service = await running(config)
    fired = alert()
    await publish_alert(nc, nats_config, fired)
    await wait_until(lambda: len(service.state.tracks_of(fired.id)) == 1, "the track")
    step_key = ledger_key(alert_key(fired.id), "esc0-0", "oncall")
    claim = SentMark(
        alert_id=fired.id, channel="oncall", tag="esc0-0", owner="other", state="sending", time=time.time()
    )
    await kv.create(step_key, msgspec.json.encode(claim))

    await publish_alert(nc, nats_config, msgspec.structs.replace(fired, status="resolved", seq=2))
    await wait_until(
        lambda: value(service.registry, "signalfire_notifier_busy_waits_total") >= 1,
        "the resolved event to wait",
    )
    assert [t for t, _, _ in receiver.got("ops")] == ["firing"]
    await kv.put(step_key, msgspec.json.encode(msgspec.structs.replace(claim, state="sent")))
    await wait_until(lambda: len(receiver.got("oncall")) == 1, "the resolved notice to oncall")
    await wait_until(lambda: len(receiver.got("ops")) == 2, "the resolved notice to ops")
    assert [t for t, _, _ in receiver.got("oncall")] == ["resolved"]

"""Ledger writes whose answer never came back, against real NATS JetStream: when a JetStream
leader node dies, a write the bucket stored may still fail at the writer (its reply was on
the dead node's connection), and a write may fail outright while the bucket elects a leader.
The same notifier, trying the event again, must neither wait for ever on its own claim (a
lost notification) nor send a message twice (tests/faults/test_nats_leader_load.py found
both: four resolved notices never sent after a leader kill).

An unanswered claim is played by writing the mark the notifier's create would have stored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.config import Duration
from signalfire.events import DeliveryResult, decode
from signalfire.notifier.channels.webhook import WebhookChannelConfig
from signalfire.notifier.config import NotifyConfig, Route
from signalfire.notifier.ledger import DeliveryLedger, SentMark, ledger_key
from tests.support.alerts import firing_alert, publish_alert
from tests.support.metrics import value
from tests.support.notifiers import notifier_services
from tests.support.polling import wait_until
from tests.support.private_nats import private_nats
from tests.support.streams import stream_messages
from tests.support.webhook import WebhookReceiver

OWNER = "notifier-test-a"


def ledger_of(kv: Any, owner: str = OWNER) -> DeliveryLedger:
    return DeliveryLedger(kv, owner, lease=30.0, clock=time.time)


def sending(owner: str, tag: str = "firing") -> bytes:
    """The claim ``owner``'s create writes (see :meth:`DeliveryLedger.claim`)."""
    mark = SentMark(alert_id="a-1", channel="ops", tag=tag, owner=owner, state="sending", time=time.time())
    return msgspec.json.encode(mark)


async def notify_state(nc: Any, nats_config: NatsConfig) -> Any:
    return await nc.jetstream().key_value(nats_config.subjects.bucket("notify_state"))


async def test_a_claim_of_ours_whose_create_went_unanswered_is_taken_back(
    nc: Any, nats_config: NatsConfig
) -> None:
    kv = await notify_state(nc, nats_config)
    ledger = ledger_of(kv)
    key = ledger_key("lost-create", "firing", "ops")
    await kv.create(key, sending(OWNER))  # stored, but the answer never reached the ledger

    claim = await ledger.claim(key, "a-1", "ops", "firing")

    # Before the fix: "busy" with the whole lease to wait, and again on every try after it
    # (a replica's own claims never expired), so the notice was never sent.
    assert claim.outcome == "mine"
    stored = msgspec.json.decode((await kv.get(key)).value, type=SentMark)
    assert (stored.owner, stored.state) == (OWNER, "sending")


async def test_a_claim_being_sent_or_another_replicas_live_claim_stays_busy(
    nc: Any, nats_config: NatsConfig
) -> None:
    kv = await notify_state(nc, nats_config)
    ledger = ledger_of(kv)
    ours = ledger_key("held", "firing", "ops")
    assert (await ledger.claim(ours, "a-1", "ops", "firing")).outcome == "mine"
    # the same message asked for again while our delivery of it is under way: not twice
    assert (await ledger.claim(ours, "a-1", "ops", "firing")).outcome == "busy"
    both = await asyncio.gather(
        *(ledger.claim(ledger_key("racing", "firing", "ops"), "a-1", "ops", "firing") for _ in range(2))
    )
    assert sorted(c.outcome for c in both) == ["busy", "mine"]
    theirs = ledger_key("other-replica", "firing", "ops")
    await kv.create(theirs, sending("notifier-test-b"))
    claim = await ledger.claim(theirs, "a-1", "ops", "firing")
    assert claim.outcome == "busy" and claim.wait > 25


@pytest.mark.slow
async def test_an_answer_that_could_not_be_recorded_is_recorded_not_sent_again(tmp_path: Path) -> None:
    server, nats_config = await private_nats(tmp_path / "nats", "lostanswer")
    nc = await connect(nats_config, "test-ledger")
    try:
        kv = await notify_state(nc, nats_config)
        ledger = ledger_of(kv)
        key = ledger_key("lost-finish", "firing", "ops")
        claim = await ledger.claim(key, "a-1", "ops", "firing")
        assert claim.outcome == "mine" and claim.mark is not None
        # the channel answered "sent"; the bus is away when that is to be recorded
        server.stop()
        with pytest.raises(Exception):  # noqa: B017 - whichever error the client raises
            await ledger.finish(key, claim.mark, "sent", 1, "ref-1")
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(nc.flush(), 20)  # reconnected

        again = await ledger.claim(key, "a-1", "ops", "firing")

        # "done" with the channel's answer: the message is not sent again
        assert again.outcome == "done" and again.mark is not None
        assert (again.mark.state, again.mark.reference) == ("sent", "ref-1")
        stored = msgspec.json.decode((await kv.get(key)).value, type=SentMark)
        assert (stored.state, stored.reference) == ("sent", "ref-1")
    finally:
        await nc.close()
        server.stop()


async def test_a_sent_result_that_could_not_be_published_is_published_once_the_bus_answers(
    nc: Any, nats_config: NatsConfig
) -> None:
    js = nc.jetstream()
    subjects = nats_config.subjects
    fired = firing_alert(severity="critical")
    with WebhookReceiver() as receiver:
        config = NotifyConfig(
            nats=nats_config,
            channels={"ops": WebhookChannelConfig(url=receiver.url("ops"))},
            routes=[Route(channels=["ops"])],
            ack_wait=Duration(3),
        )
        async with notifier_services(nc) as start:
            service = await start(config)
            # No stream takes delivery results for a while: their publish finds no responder,
            # as while the alerts stream elects a leader.
            alerts = (await js.stream_info(subjects.alerts_stream)).config
            alerts.subjects = [subjects.all_alerts, subjects.actions]
            await js.update_stream(alerts)
            await publish_alert(nc, nats_config, fired)
            await wait_until(lambda: len(receiver.posted("ops")) == 1, "the notice sent")

            def waits() -> float:
                return value(service.registry, "signalfire_notifier_bus_waits_total")

            await wait_until(lambda: waits() >= 2, "the result's publish failing, then tried again")
            await ensure_streams(js, nats_config)  # the results are taken again
            await wait_until(
                lambda: (
                    value(service.registry, "signalfire_notifier_duplicates_skipped_total", channel="ops")
                    >= 1
                ),
                "the event tried again",
            )
            await wait_until(lambda: _results(js, nats_config), "the result stored")
            await asyncio.sleep(1)
        assert len(receiver.posted("ops")) == 1  # not sent again
    stored = await _results(js, nats_config)
    # Before the fix: none (the dashboard never learnt the notice went out).
    assert [(r.alert_id, r.channel, r.status, r.transition) for r in stored] == [
        (fired.id, "ops", "sent", "firing")
    ]


async def _results(js: Any, nats_config: NatsConfig) -> list[DeliveryResult]:
    prefix = nats_config.subjects.all_notifications[:-1]
    return [
        decode(data, DeliveryResult)
        for _, data in await stream_messages(js, nats_config.subjects.alerts_stream, prefix)
    ]

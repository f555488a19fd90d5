"""JetStream's max-deliveries advisories as the notifier meets them (an action given up on,
a stored event nobody can decode, an advisory that names nothing, a look-up that meets NATS
trouble first), and an event whose work the bus refuses, left for redelivery."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.notifier.config import NotifyConfig
from signalfire.notifier.intake import ACTIONS_DURABLE, DURABLE, GiveUps, Intake, max_deliveries_subject
from signalfire.notifier.ledger import DeliveryLedger
from signalfire.notifier.pipeline import Pipeline
from signalfire.telemetry import Registry
from tests.integration.gateway_support import eventually
from tests.support.metrics import value

LOGGER = "signalfire.notifier.intake"
#: None of these advisories reaches the pipeline (an action, or an event that cannot be
#: decoded): a call into it would fail the test with an AttributeError.
NO_PIPELINE = cast(Pipeline, None)


def _advisory(stream: str, consumer: str, seq: int) -> bytes:
    return msgspec.json.encode({"stream": stream, "consumer": consumer, "stream_seq": seq, "deliveries": 5})


async def _given_up(
    nc: Any, nats_config: NatsConfig, payload: bytes, consumer: str, js: Any = None
) -> tuple[Registry, GiveUps]:
    registry = Registry("signalfire_test")
    stream = nats_config.subjects.alerts_stream
    give_ups = GiveUps(js or nc.jetstream(), stream, NO_PIPELINE, registry)
    await give_ups.subscribe(nc)
    await nc.publish(max_deliveries_subject(stream, consumer), payload)
    await nc.flush()
    return registry, give_ups


async def _counted_once(nc: Any, nats_config: NatsConfig, seq: int, durable: str) -> None:
    """The max-deliveries advisory of message ``seq`` of ``durable`` is counted once as given up."""
    advisory = _advisory(nats_config.subjects.alerts_stream, durable, seq)
    registry, give_ups = await _given_up(nc, nats_config, advisory, durable)

    async def counted() -> None:
        assert value(registry, "signalfire_test_events_given_up_total", consumer=durable) == 1

    try:
        await eventually(counted, timeout=5)
    finally:
        await give_ups.close()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_action_given_up_on_is_counted_and_logged_with_its_subject(
    nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    ack = await nc.jetstream().publish(nats_config.subjects.actions, b'{"action": "ack"}')
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await _counted_once(nc, nats_config, ack.seq, ACTIONS_DURABLE)
    [record] = [r for r in caplog.records if "gave up on an alert action" in r.getMessage()]
    assert record.__dict__["seq"] == ack.seq and record.__dict__["subject"] == nats_config.subjects.actions


async def test_a_stored_event_that_cannot_be_decoded_is_counted_and_makes_no_dead_letters(
    nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    ack = await nc.jetstream().publish(nats_config.subjects.alerts("web-1"), b"{not an alert event")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await _counted_once(nc, nats_config, ack.seq, DURABLE)
    assert _errors(caplog) == []  # already counted and terminated when it was first delivered


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"{not json", id="advisory-not-json"),
        pytest.param(b"SEQ", id="message-gone"),
    ],
)
async def test_an_advisory_whose_message_cannot_be_looked_up_is_logged_not_counted(
    payload: bytes, nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    if payload == b"SEQ":  # a sequence the stream never held
        payload = _advisory(nats_config.subjects.alerts_stream, DURABLE, 999_999)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        registry, give_ups = await _given_up(nc, nats_config, payload, DURABLE)

        async def logged() -> None:
            assert "JetStream gave up on a message that could not be looked up" in _errors(caplog)

        await eventually(logged, timeout=5)
    await give_ups.close()
    assert value(registry, "signalfire_test_events_given_up_total", consumer=DURABLE) == 0


async def test_a_look_up_that_meets_no_jetstream_is_retried_until_it_answers(
    nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # The JetStream API behind a prefix nothing answers yet (as while a stream elects its
    # leader); a relay to the real API then comes up, and the look-up goes through.
    ack = await nc.jetstream().publish(nats_config.subjects.actions, b'{"action": "ack"}')
    relay_prefix = f"{nats_config.prefix}-jsapi"
    lookups: list[str] = []

    async def relay(msg: Msg) -> None:
        lookups.append(msg.subject)
        answer = await nc.request("$JS.API" + msg.subject[len(relay_prefix) :], msg.data, timeout=5)
        await msg.respond(answer.data)

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        advisory = _advisory(nats_config.subjects.alerts_stream, ACTIONS_DURABLE, ack.seq)
        registry, give_ups = await _given_up(
            nc, nats_config, advisory, ACTIONS_DURABLE, js=nc.jetstream(prefix=relay_prefix)
        )
        await nc.flush()
        # Long enough for the first look-ups to meet no responders (retried 0.25 s, 0.5 s later).
        await asyncio.sleep(0.5)
        assert value(registry, "signalfire_test_events_given_up_total", consumer=ACTIONS_DURABLE) == 0
        await nc.subscribe(relay_prefix + ".>", cb=relay)

        async def counted() -> None:
            assert value(registry, "signalfire_test_events_given_up_total", consumer=ACTIONS_DURABLE) == 1

        await eventually(counted, timeout=10)
    await give_ups.close()
    assert len(lookups) == 1
    assert "JetStream gave up on a message that could not be looked up" not in _errors(caplog)


async def test_work_the_bus_refuses_is_counted_logged_and_left_for_redelivery(
    nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    config = NotifyConfig(nats=nats_config, ack_wait=Duration(3.0))  # heartbeat: 1 s
    registry = Registry("signalfire_test")
    js = nc.jetstream()
    intake = Intake(config, js, NO_PIPELINE, cast(DeliveryLedger, None), registry)
    subject = nats_config.subjects.alerts("web-1")
    sub = await js.pull_subscribe(subject, durable="settle-test", stream=nats_config.subjects.alerts_stream)
    await js.publish(subject, b'{"the": "event"}')
    [msg] = await sub.fetch(1, timeout=5)

    async def refused() -> None:
        raise nats.js.errors.BadRequestError()  # a refusal, not trouble to wait out

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await asyncio.wait_for(intake._settle(msg, "alert-1", "fp-1", refused), timeout=5)
    assert value(registry, "signalfire_test_processing_errors_total") == 1
    [record] = [r for r in caplog.records if r.getMessage() == "left for redelivery"]
    assert record.__dict__["alert_id"] == "alert-1" and "BadRequestError" in record.__dict__["reason"]
    # Nak'ed with the heartbeat's delay: JetStream delivers it again, and nothing was acked.
    [again] = await sub.fetch(1, timeout=5)
    assert again.data == msg.data and again.metadata.num_delivered == 2
    await again.ack()

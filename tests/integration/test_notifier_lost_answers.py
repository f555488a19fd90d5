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

from signalfire.bus import NatsConfig, connect
from signalfire.notifier.ledger import DeliveryLedger, SentMark, ledger_key
from tests.support.private_nats import private_nats

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

"""A batch its publisher sends again because the stream's acknowledgement was lost (the
agent's outbox, the gateway's HTTP ingest) reaches every core subscriber twice: the stream
stores it once (its ``Nats-Msg-Id``), and the evaluator judges it once. Real NATS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.evaluator.partitions import host_partition
from signalfire.evaluator.service import JUDGED_KEEP, EvaluatorConfig, EvaluatorService
from signalfire.events import Event, EventBatch, MetricBatch, Sample, encode
from tests.faults.support import alert_events, eventually
from tests.support.evaluator import replica, running_evaluator
from tests.support.metrics import value

RULES = """\
rules:
  - {name: Burst, kind: event_count, event: auth.login_failed, window: 1m, condition: "> 2",
     severity: high}
  - {name: BurstTwice, kind: event_count, event: auth.login_failed, window: 1m, condition: "> 3",
     severity: high}
  - {name: Spent, metric: spend, aggregate: sum, window: 1m, condition: "> 15", severity: high}
  - {name: SpentTwice, metric: spend, aggregate: sum, window: 1m, condition: "> 25", severity: high}
"""


async def test_a_batch_published_again_after_a_lost_acknowledgement_is_judged_once(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    subjects = nats_config.subjects
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = EvaluatorConfig(
        nats=nats_config, rules=[str(rules)], tick_interval=Duration(0.1), watch_interval=Duration(0)
    )
    logins = EventBatch(
        host="dup-web", time=time.time(), events=[Event(type="auth.login_failed", time=time.time())] * 2
    )
    spend = MetricBatch(host="dup-web", time=time.time(), samples=[Sample(name="spend", value=10.0)])

    async def publish_twice(subject: str, data: bytes, msg_id: str) -> None:
        """As a publisher whose acknowledgement did not come back: the same bytes, the same id."""
        first = await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        again = await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        assert not first.duplicate and again.duplicate  # the stream stored it once

    async with running_evaluator(config) as evaluator:
        registry = evaluator.registry

        def count(name: str, kind: str) -> float:
            return value(registry, f"signalfire_evaluator_{name}_total", kind=kind)

        await publish_twice(subjects.events("dup-web"), encode(logins), "agent-run-1")
        await publish_twice(subjects.metrics("dup-web"), encode(spend), "agent-run-2")
        await eventually(
            lambda: count("duplicate_batches", "events") == 1 and count("duplicate_batches", "metrics") == 1,
            "the second copies recognised",
            5,
        )
        assert count("batches", "events") == 1 and count("batches", "metrics") == 1
        await asyncio.sleep(0.5)  # ticks: two logins and 10 spent hold no condition
        assert await alert_events(js, nats_config) == []

        # New batches, one login and 10 more spent: each condition holds now, the "twice" ones
        # would only had the repeats been counted.
        await js.publish(
            subjects.events("dup-web"),
            encode(EventBatch(host="dup-web", time=time.time(), events=[Event(type="auth.login_failed")])),
            headers={"Nats-Msg-Id": "agent-run-3"},
        )
        await js.publish(
            subjects.metrics("dup-web"),
            encode(MetricBatch(host="dup-web", time=time.time(), samples=[Sample(name="spend", value=10.0)])),
            headers={"Nats-Msg-Id": "agent-run-4"},
        )

        async def fired() -> bool:
            return len(await alert_events(js, nats_config)) >= 2

        await eventually(fired, "the alerts of the new batches", 5)
        await asyncio.sleep(0.5)  # room for a "twice" rule to show up
        events = sorted((e.rule, e.status) for e in await alert_events(js, nats_config))
        assert events == [("Burst", "firing"), ("Spent", "firing")]
        assert count("batches", "events") == 2 and count("batches", "metrics") == 2


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_copy_arriving_after_its_judge_died_is_not_judged_again_by_the_taker(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    """Replica a judged the batch and died; replica b takes a's partitions, reading their
    history; then the publisher's second copy arrives (its acknowledgement had been lost)."""
    js = nc.jetstream()
    subjects = nats_config.subjects
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    host = "dup-moved"

    def batch(count: int) -> bytes:
        events = [Event(type="auth.login_failed", time=time.time())] * count
        return encode(EventBatch(host=host, time=time.time(), events=events))

    copied = batch(2)
    a, b = (replica(nats_config, rules, name, partitions=16, failover_after=2) for name in ("a", "b"))
    await a.start()
    try:
        await js.publish(subjects.events(host), copied, headers={"Nats-Msg-Id": "agent-run-1"})
        judged = a.registry
        name = "signalfire_evaluator_batches_total"
        await eventually(lambda: value(judged, name, kind="events") == 1, "a to judge it", 5)
        await asyncio.sleep(0.5)
        assert a._nc is not None and a._lease_nc is not None  # dies: no renewal, no release
        await a._lease_nc.close()
        await a._nc.close()
        await b.start()
        partition = host_partition(host, 16)
        await eventually(lambda: partition in b.describe()["replica"]["judged"], "b took a's partition", 20)
        again = await js.publish(subjects.events(host), copied, headers={"Nats-Msg-Id": "agent-run-1"})
        assert again.duplicate
        await eventually(
            lambda: value(b.registry, "signalfire_evaluator_duplicate_batches_total", kind="events") == 1,
            "the second copy recognised by b",
            5,
        )
        await js.publish(subjects.events(host), batch(1), headers={"Nats-Msg-Id": "agent-run-2"})

        async def fired() -> bool:
            return bool(await alert_events(js, nats_config))

        await eventually(fired, "Burst to fire on the third login", 5)
        await asyncio.sleep(0.5)  # room for BurstTwice, had the copy been counted
        assert [(e.rule, e.status) for e in await alert_events(js, nats_config)] == [("Burst", "firing")]
    finally:
        await b.stop()
        await a.stop()


async def test_what_was_judged_is_forgotten_after_the_duplicate_window(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    """Past the stream's two minutes the same bytes are no retry the stream would have caught:
    judged again, and the memory of the first copy is gone."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    offset = [0.0]
    service = EvaluatorService(
        EvaluatorConfig(nats=nats_config, rules=[str(rules)], tick_interval=Duration(0.05)),
        clock=lambda: time.time() + offset[0],
    )
    data = encode(MetricBatch(host="dup-late", time=time.time(), samples=[Sample(name="spend", value=1.0)]))
    subject = nats_config.subjects.metrics("dup-late")
    await service.start()
    try:

        def judged() -> float:
            return value(service.registry, "signalfire_evaluator_batches_total", kind="metrics")

        await nc.publish(subject, data)
        await eventually(lambda: judged() == 1, "the first copy judged", 5)
        assert len(service._seen) == 1
        offset[0] = JUDGED_KEEP + 1.0
        await eventually(lambda: not service._seen, "the first copy forgotten", 5)
        await nc.publish(subject, data)
        await eventually(lambda: judged() == 2, "the same bytes judged again", 5)
        assert value(service.registry, "signalfire_evaluator_duplicate_batches_total", kind="metrics") == 0
    finally:
        await service.stop()

"""An alert decided while its state could not be written, whose partition lapsed meanwhile and
was taken back, is announced once, by the decision the replica made after taking it back,
and its resolve names the same alert.

In a three-node cluster's leader election (tests/faults/test_nats_leader_load.py) the writer
of such an alert kept retrying with the outbox it had before the partition lapsed: it
published that old firing, then dropped the new outbox — so the firing that the later
resolve named was never announced, and an alert absent from the bucket stayed "revoked"
after the partition came back: none of its transitions was written or published again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from signalfire.bus import NatsConfig, ensure_streams
from signalfire.evaluator.partitions import host_partition
from signalfire.evaluator.service import EvaluatorService
from signalfire.events import MetricBatch, Sample, encode
from tests.faults.support import alert_events, events_after_resolve, eventually
from tests.integration.test_evaluator_partitions import PARTITIONS, config
from tests.support.metrics import value

HOST = "lost-write-1"
RULES = 'rules:\n  - {name: LostWriteHot, metric: temp, condition: "> 50", resolve: "< 40", severity: high}\n'


async def send(nc: Any, nats: NatsConfig, value: float) -> None:
    batch = MetricBatch(host=HOST, time=time.time(), samples=[Sample(name="temp", value=value)])
    await nc.jetstream().publish(nats.subjects.metrics(HOST), encode(batch))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_decision_unwritten_when_its_partition_lapsed_is_not_announced_over_the_new_one(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service = EvaluatorService(config(nats_config, rules, "lw"))  # 16 partitions, failover_after 2 s
    partition = host_partition(HOST, PARTITIONS)
    await service.start()
    try:
        # The alert state bucket gone: every state write fails, and is retried with back-off.
        await js.delete_stream(f"KV_{nats_config.subjects.bucket('alert_state')}")
        await send(nc, nats_config, 95.0)

        def retrying() -> bool:
            # five failures: its next waits are 1.6 s, then 3.2 s
            return value(service.registry, "signalfire_evaluator_kv_failures_total") >= 5

        await eventually(retrying, "the state write to fail and be retried", 10)
        # The partition lapses meanwhile (its lease not renewed in time), the bucket returns,
        # and the replica takes the partition back while the write still waits to retry.
        service._lose([partition], "not renewed in time (the test)")
        await ensure_streams(js, nats_config)

        def judged() -> bool:
            return partition in service.describe()["replica"]["judged"]

        await eventually(judged, "the partition to be taken back", 10)
        await send(nc, nats_config, 95.0)  # judged afresh: it fires (what the bucket never held)

        async def fired() -> bool:
            return any(e.status == "firing" for e in await alert_events(js, nats_config))

        await eventually(fired, "the alert to fire after the partition was taken back", 15)
        await send(nc, nats_config, 30.0)

        events = await events_after_resolve(js, nats_config, "the alert to resolve", 15)
    finally:
        await service.stop()
    statuses = [(e.status, e.id) for e in events if e.host == HOST]
    assert [s for s, _ in statuses] == ["firing", "resolved"], statuses
    assert statuses[0][1] == statuses[1][1], "the resolve names an alert that was never announced"

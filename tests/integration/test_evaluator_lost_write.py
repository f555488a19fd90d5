"""An alert decided while its state could not be written, whose partition lapsed meanwhile and
was taken back, is announced once, by the decision the replica made after taking it back,
and its resolve names the same alert.

In a three-node cluster's leader election (tests/faults/test_nats_leader_load.py) the writer
of such an alert kept retrying with the outbox it had before the partition lapsed: it
published that old firing, then dropped the new outbox — so the firing that the later
resolve named was never announced, and an alert absent from the bucket stayed "revoked"
after the partition came back: none of its transitions was written or published again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from signalfire.bus import NatsConfig, bucket_entries, ensure_streams
from signalfire.evaluator.partitions import host_partition
from signalfire.evaluator.service import EvaluatorService, StoredAlert
from signalfire.events import MetricBatch, Sample, decode, encode
from tests.faults.support import alert_events, events_after_resolve, eventually
from tests.integration.test_evaluator_partitions import PARTITIONS, config
from tests.support.metrics import value

HOST = "lost-write-1"
RULES = 'rules:\n  - {name: LostWriteHot, metric: temp, condition: "> 50", resolve: "< 40", severity: high}\n'


async def send(nc: Any, nats: NatsConfig, value: float) -> None:
    batch = MetricBatch(host=HOST, time=time.time(), samples=[Sample(name="temp", value=value)])
    await nc.jetstream().publish(nats.subjects.metrics(HOST), encode(batch))


async def started(nats: NatsConfig, tmp_path: Path, replica: str) -> tuple[EvaluatorService, str]:
    """A started replica judging :data:`RULES` (16 partitions, failover_after 2 s), and the
    partition of :data:`HOST`."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service = EvaluatorService(config(nats, rules, replica))
    await service.start()
    return service, host_partition(HOST, PARTITIONS)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_decision_unwritten_when_its_partition_lapsed_is_not_announced_over_the_new_one(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    service, partition = await started(nats_config, tmp_path, "lw")
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


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_state_another_writer_changed_is_continued_not_written_over(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    """The replica writes alert states by compare-and-set on the revision it last wrote or
    read. Here the state of its firing alert is changed behind it (as by the replica that took
    the partition over while this one was cut off, or by this one's own write sent late from
    the NATS client's buffer): its next decision is not written over the newer state; it drops
    the partition, takes it back from the bucket, and goes on from what the other wrote (an
    acknowledgement, which the resolve carries). One firing and one resolve, of one alert."""
    js = nc.jetstream()
    service, partition = await started(nats_config, tmp_path, "cas")
    try:
        await send(nc, nats_config, 95.0)

        async def fired() -> bool:
            return any(e.status == "firing" for e in await alert_events(js, nats_config))

        await eventually(fired, "the alert to fire", 15)
        kv = await js.key_value(nats_config.subjects.bucket("alert_state"))

        async def stored_firing() -> bool:
            return any(
                decode(e.value or b"", StoredAlert).state.status == "firing"
                for e in (await bucket_entries(kv)).values()
            )

        await eventually(stored_firing, "the firing state in the bucket", 10)
        [(fp, entry)] = list((await bucket_entries(kv)).items())
        theirs = decode(entry.value or b"", StoredAlert)
        acked = msgspec.structs.replace(theirs.state, acked_by="replica-b", acked_at=time.time())
        await kv.update(fp, msgspec.json.encode(StoredAlert(state=acked)), last=entry.revision)

        await send(nc, nats_config, 20.0)  # resolved here, on the state the replica had

        def conflicted() -> bool:
            return value(service.registry, "signalfire_evaluator_state_conflicts_total") == 1

        await eventually(conflicted, "the write over the newer state to be refused", 10)

        async def cooled_and_resolved() -> bool:
            await send(nc, nats_config, 20.0)  # judged again once the partition is back
            return any(e.status == "resolved" for e in await alert_events(js, nats_config))

        await eventually(cooled_and_resolved, "the alert to resolve on the partition taken back", 15)
        await asyncio.sleep(1)
        events = [e for e in await alert_events(js, nats_config) if e.host == HOST]
        final = decode((await kv.get(fp)).value or b"", StoredAlert).state
        judged = partition in service.describe()["replica"]["judged"]
    finally:
        await service.stop()
    assert [(e.status, e.id) for e in events] == [
        ("firing", theirs.state.alert_id),
        ("resolved", theirs.state.alert_id),
    ]
    assert events[1].annotations.get("acknowledged_by") == "replica-b", events[1].annotations
    assert final.status == "inactive" and final.resolved_at is not None and final.acked_by == "replica-b"
    assert judged
    assert value(service.registry, "signalfire_evaluator_state_conflicts_total") == 1

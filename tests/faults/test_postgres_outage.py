"""PostgreSQL stopped for longer than ack_wait x max_deliver while the bus keeps publishing:
once it is back, every sample, alert event and delivery result is stored exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from devstack import free_port, private_postgres

from signalfire.bus import NatsConfig
from signalfire.events import DeliveryResult, MetricBatch, Sample, encode
from tests.faults.support import (
    consumer_numbers,
    eventually,
    fetch_count,
    gateway_process,
    report,
    service_env,
)
from tests.support.alerts import firing_alert
from tests.support.metrics import scrape, total

ACK_WAIT = 2.0
MAX_DELIVER = 3
OUTAGE = 12.0  # seconds: twice ack_wait x max_deliver, so a consumer that kept naking would lose data
SAMPLES_PER_BATCH = 50
HOST = "fault-pg"


async def publish_all_kinds(js: Any, nats: NatsConfig, counts: dict[str, int], stop: asyncio.Event) -> None:
    """Ten metric batches a second, and an alert event and a delivery result each second."""
    start = time.time() - 3600
    n = 0
    while not stop.is_set():
        batch = MetricBatch(
            host=HOST,
            time=start + n * 0.1,
            samples=[
                Sample(name="fault.pg", value=float(i), labels={"i": str(i)})
                for i in range(SAMPLES_PER_BATCH)
            ],
        )
        await js.publish(nats.subjects.metrics(HOST), encode(batch), headers={"Nats-Msg-Id": f"pg-m-{n}"})
        counts["samples"] += SAMPLES_PER_BATCH
        if n % 10 == 0:
            now = time.time()
            k = n // 10
            alert = firing_alert(
                f"pg-alert-{k}", now=now, fingerprint=f"pg-fp-{k}", rule="FaultPg", severity="low", host=HOST
            )
            await js.publish(nats.subjects.alerts(HOST), encode(alert), headers={"Nats-Msg-Id": f"pg-a-{k}"})
            result = DeliveryResult(alert_id=alert.id, channel="hook", status="sent", attempt=1, time=now)
            await js.publish(
                nats.subjects.notifications("hook"), encode(result), headers={"Nats-Msg-Id": f"pg-d-{k}"}
            )
            counts["alerts"] += 1
            counts["deliveries"] += 1
        n += 1
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_postgres_down_longer_than_ack_wait_times_max_deliver_loses_nothing(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    cleanup = contextlib.ExitStack()
    postgres = await asyncio.to_thread(cleanup.enter_context, private_postgres())
    database_url = await asyncio.to_thread(postgres.create_database, "signalfire")
    port = free_port()
    env = service_env(
        nats_config,
        database_url,
        identity="gateway",
        # A 2 s x 3 redelivery budget instead of 30 s x 10, so a 12 s outage outlasts it; the
        # database is probed at least every 2 s (instead of up to 30 s) so recovery is quick.
        SF_ACK_WAIT=f"{ACK_WAIT:g}s",
        SF_MAX_DELIVER=str(MAX_DELIVER),
        SF_MAX_BACKOFF="2s",
        SF_FETCH_TIMEOUT="0.2s",
    )
    gateway = await gateway_process(env, port, tmp_path)
    counts = {"samples": 0, "alerts": 0, "deliveries": 0}
    stop = asyncio.Event()
    publisher = asyncio.create_task(publish_all_kinds(js, nats_config, counts, stop))
    try:

        async def flowing() -> bool:
            return await fetch_count(database_url, "SELECT count(*) FROM samples") > 0

        await eventually(flowing, "the first samples to be stored", 30, gateway)
        before = counts["samples"]
        await asyncio.to_thread(postgres.stop)
        down_at = time.monotonic()
        await asyncio.sleep(OUTAGE)
        during = counts["samples"] - before
        await asyncio.to_thread(postgres.start)
        outage = time.monotonic() - down_at
        await asyncio.sleep(2)  # and a little more traffic after the restart
        stop.set()
        await asyncio.wait_for(publisher, 10)

        async def caught_up() -> bool:
            merged = await fetch_count(database_url, "SELECT sum(count) FROM samples_1m")
            alerts = await fetch_count(database_url, "SELECT count(*) FROM alerts")
            deliveries = await fetch_count(database_url, "SELECT count(*) FROM notifications")
            return (
                merged >= counts["samples"]
                and alerts >= counts["alerts"]
                and deliveries >= counts["deliveries"]
            )

        caught = True
        try:
            await eventually(caught_up, "everything to be stored after the outage", 45, gateway)
        except AssertionError:
            caught = False
        await asyncio.sleep(ACK_WAIT + 1)  # any late redelivery would show as a duplicate now
        messages = sum(
            [
                (await js.stream_info(nats_config.subjects.metrics_stream)).state.messages,
                (await js.stream_info(nats_config.subjects.alerts_stream)).state.messages,
            ]
        )
        rows = await fetch_count(database_url, "SELECT count(*) FROM samples")
        distinct = await fetch_count(database_url, "SELECT count(DISTINCT (series_id, time)) FROM samples")
        rollup_1m = await fetch_count(database_url, "SELECT sum(count) FROM samples_1m")
        alerts = await fetch_count(database_url, "SELECT count(*) FROM alerts")
        deliveries = await fetch_count(database_url, "SELECT count(*) FROM notifications")
        metrics = scrape(f"http://127.0.0.1:{port}/metrics")
        consumers = {
            name: await consumer_numbers(js, stream, name)
            for name, stream in (
                ("gateway-metrics", nats_config.subjects.metrics_stream),
                ("gateway-alerts", nats_config.subjects.alerts_stream),
                ("gateway-notifications", nats_config.subjects.alerts_stream),
            )
        }
    finally:
        stop.set()
        publisher.cancel()
        gateway.stop()
        await asyncio.to_thread(cleanup.close)
    report(
        "postgres-outage",
        outage_s=f"{outage:.1f}",
        budget_s=f"{ACK_WAIT * MAX_DELIVER:g}",
        published_samples=counts["samples"],
        published_during_outage=during,
        stored=rows,
        distinct=distinct,
        rollup_1m=rollup_1m,
        alerts=f"{alerts}/{counts['alerts']}",
        deliveries=f"{deliveries}/{counts['deliveries']}",
        # deliveries beyond the first: rounds fetched while the database was away, fetched again
        refetched=int(total(metrics, "signalfire_gateway_ingest_fetched_messages_total")) - messages,
        db_errors=int(total(metrics, "signalfire_gateway_db_errors_total")),
        rejected=int(total(metrics, "signalfire_gateway_ingest_rejected_total")),
        ack_pending=sum(c["ack_pending"] for c in consumers.values()),
    )
    assert caught, "not everything published during the outage was stored"
    assert rows == distinct == rollup_1m == counts["samples"], "samples lost or stored twice"
    assert alerts == counts["alerts"], "alert events lost"
    assert deliveries == counts["deliveries"], "delivery results lost or stored twice"
    assert all(c["ack_pending"] == 0 and c["pending"] == 0 for c in consumers.values()), consumers

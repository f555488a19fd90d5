"""The gateway stores what arrives on the bus: exactly once, and never stalls on bad input."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import asyncpg
import pytest

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import (
    AgentStatus,
    AlertEvent,
    Event,
    EventBatch,
    MetricBatch,
    Sample,
    encode,
)
from signalfire.gateway.ingest import METRICS_CONSUMER
from signalfire.gateway.migrate import migrate, migrations
from tests.integration.gateway_support import eventually, gateway_config, running_gateway


def batch(host: str = "web-1", when: float | None = None, value: float = 12.5) -> MetricBatch:
    return MetricBatch(
        host=host,
        time=when if when is not None else time.time(),
        labels={"env": "prod"},
        samples=[
            Sample(name="cpu.usage_percent", value=value),
            Sample(name="disk.used_percent", value=71.2, labels={"mount": "/"}),
            Sample(name="disk.used_percent", value=33.0, labels={"mount": "/var"}),
        ],
    )


async def count(database_url: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def test_a_duplicate_batch_adds_no_rows(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    subject = nats_config.subjects.metrics("web-1")
    sent = batch()
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await js.publish(subject, encode(sent))
        await js.publish(subject, encode(sent))  # e.g. an agent replaying its buffer

        async def both_handled() -> None:
            assert gw.counter("ingest_messages_total", kind="metrics") == 2

        await eventually(both_handled)
        assert await count(database_url, "SELECT count(*) FROM samples") == 3
        assert await count(database_url, "SELECT count(*) FROM series") == 3
        assert gw.counter("ingest_samples_total") == 3
        assert gw.counter("ingest_duplicate_samples_total") == 3


async def test_a_redelivered_stream_adds_no_rows(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    config = gateway_config(nats_config, database_url, tmp_path)
    now = time.time()
    for i in range(5):
        await js.publish(nats_config.subjects.metrics("web-1"), encode(batch(when=now - 10 + i)))
    async with running_gateway(config):

        async def stored() -> None:
            assert await count(database_url, "SELECT count(*) FROM samples") == 15

        await eventually(stored)
    # Forget every acknowledgement: the next gateway gets the whole stream delivered again.
    await js.delete_consumer(nats_config.subjects.metrics_stream, METRICS_CONSUMER)
    async with running_gateway(config) as gw:

        async def redelivered() -> None:
            assert gw.counter("ingest_messages_total", kind="metrics") == 5

        await eventually(redelivered)
        assert gw.counter("ingest_samples_total") == 0
        assert gw.counter("ingest_duplicate_samples_total") == 15
    assert await count(database_url, "SELECT count(*) FROM samples") == 15


@pytest.mark.parametrize(
    "case",
    [
        (b"{not json", "invalid_payload"),
        (b'{"host":"web-1","time":1,"samples":[{"name":"cpu","value":"high"}]}', "invalid_payload"),
        (b'{"host":"web-1","samples":[]}', "invalid_payload"),
        (b'{"host":"web-1","time":1,"samples":[{"name":"1bad name","value":1}]}', "invalid_payload"),
        (b'{"host":"web-2","time":1,"samples":[{"name":"cpu","value":1}]}', "host_mismatch"),
        # Valid JSON the database refuses: jsonb has no NUL character.
        (
            b'{"host":"web-1","time":1,"samples":[{"name":"cpu","value":1,"labels":{"a":"\\u0000"}}]}',
            "db_rejected",
        ),
    ],
)
async def test_a_bad_message_is_terminated_counted_and_the_next_one_stored(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path, case: tuple[bytes, str]
) -> None:
    payload, reason = case
    js = nc.jetstream()
    subject = nats_config.subjects.metrics("web-1")
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await js.publish(subject, encode(batch(value=1.0)))
        await js.publish(subject, payload)
        await js.publish(subject, encode(batch(value=2.0, when=time.time() + 1)))

        async def handled() -> None:
            assert gw.counter("ingest_rejected_total", reason=reason) == 1
            assert gw.counter("ingest_messages_total", kind="metrics") == 2

        await eventually(handled)
        assert await count(database_url, "SELECT count(*) FROM samples") == 6

        async def all_acknowledged() -> None:  # the good ones after their rollup merge
            info = await js.consumer_info(nats_config.subjects.metrics_stream, METRICS_CONSUMER)
            assert info.num_ack_pending == 0
            assert info.num_redelivered == 0

        await eventually(all_acknowledged)
        assert await count(database_url, "SELECT sum(count) FROM samples_1m") == 6


async def test_events_and_agent_status_are_stored(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    s = nats_config.subjects
    now = time.time()
    events = EventBatch(
        host="web-1",
        time=now,
        events=[Event(type="auth.login_failed", message="user bob"), Event(type="deploy", value=42.0)],
    )
    online = AgentStatus(host="web-1", status="online", time=now - 1, interval=5.0, labels={"role": "web"})
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await js.publish(s.agents("web-1"), encode(online))
        await js.publish(s.events("web-1"), encode(events))
        await js.publish(s.events("web-1"), encode(events))

        async def stored() -> None:
            assert gw.counter("ingest_messages_total", kind="events") == 2
            assert gw.counter("ingest_messages_total", kind="agents") == 1

        await eventually(stored)
        assert await count(database_url, "SELECT count(*) FROM events") == 2
        assert (
            await count(database_url, "SELECT count(*) FROM hosts WHERE interval = 5 AND status = 'online'")
            == 1
        )


async def test_firing_then_resolved_is_one_resolved_alert(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    subject = nats_config.subjects.alerts("web-1")
    now = time.time()
    firing = AlertEvent(
        id="a-1",
        fingerprint="fp-1",
        rule="HighCPU",
        status="firing",
        severity="high",
        host="web-1",
        starts_at=now - 60,
        time=now - 60,
        value=91.0,
        threshold=80.0,
        annotations={"summary": "CPU 91% on web-1"},
        seq=1,
    )
    resolved = AlertEvent(
        id="a-1",
        fingerprint="fp-1",
        rule="HighCPU",
        status="resolved",
        severity="high",
        host="web-1",
        starts_at=now - 60,
        ends_at=now,
        time=now,
        value=42.0,
        threshold=80.0,
        seq=2,
    )
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await js.publish(subject, encode(firing))
        await js.publish(subject, encode(resolved))
        await js.publish(subject, encode(firing))  # late redelivery of the older event
        await js.publish(subject, b'{"id":"a-2","status":"exploded"}')

        async def handled() -> None:
            assert gw.counter("ingest_messages_total", kind="alerts") == 3
            assert gw.counter("ingest_rejected_total", reason="invalid_payload") == 1

        await eventually(handled)
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT status, seq, value, extract(epoch FROM ends_at)::float8 AS ends FROM alerts"
            )
            history = await conn.fetch("SELECT event, seq FROM alert_history ORDER BY seq")
        finally:
            await conn.close()
        assert len(rows) == 1
        assert rows[0]["status"] == "resolved"
        assert rows[0]["seq"] == 2
        assert rows[0]["value"] == 42.0
        assert rows[0]["ends"] == pytest.approx(now, abs=1e-3)
        assert [(h["event"], h["seq"]) for h in history] == [("firing", 1), ("resolved", 2)]


async def test_migrations_run_twice_are_a_no_op(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        # three gateways starting together: one applies everything, the others nothing
        assert sorted(len(a) for a in applied) == [0, 0, len(migrations())]
        assert await migrate(conns[0]) == []
        versions = await conns[0].fetch("SELECT version FROM schema_migrations")
        assert [v["version"] for v in versions] == [m.version for m in migrations()]
        for table in ("series", "samples", "events", "hosts", "alerts", "alert_history", "api_tokens"):
            assert await conns[0].fetchval("SELECT to_regclass($1) IS NOT NULL", table), table
    finally:
        for c in conns:
            await c.close()


async def test_the_raw_samples_are_hypertables_when_timescaledb_is_there(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        if not available:
            pytest.skip("this PostgreSQL has no TimescaleDB")
        tables = {
            r["hypertable_name"]
            for r in await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        assert {"sample_rows", "sample_batches"} <= tables
    finally:
        await conn.close()


async def test_a_database_outage_loses_nothing_on_plain_postgresql(
    nc, nats_config: NatsConfig, tmp_path: Path
) -> None:
    from devstack import private_postgres

    # A private server without TimescaleDB that this test may stop and start.
    cleanup = contextlib.ExitStack()
    server = await asyncio.to_thread(cleanup.enter_context, private_postgres(timescaledb=False))
    try:
        database_url = await asyncio.to_thread(server.create_database, "outage")
        config = gateway_config(nats_config, database_url, tmp_path, max_backoff=Duration(0.5))
        js = nc.jetstream()
        subject = nats_config.subjects.metrics("web-1")
        now = time.time()
        async with running_gateway(config) as gw:
            await js.publish(subject, encode(batch(when=now - 2)))
            await eventually(lambda: _stored(database_url, 3))
            await asyncio.to_thread(server.stop)
            for i in range(3):
                await js.publish(subject, encode(batch(when=now + i)))

            async def failed() -> None:
                assert gw.counter("db_errors_total", consumer="gateway-metrics") >= 1

            await eventually(failed)
            await asyncio.to_thread(server.start)
            await eventually(lambda: _stored(database_url, 12), timeout=30)
        conn = await asyncpg.connect(database_url)
        try:
            hypertable = await conn.fetchval(
                "SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL"
            )
            brin = await conn.fetchval("SELECT to_regclass('samples_time_brin') IS NOT NULL")
        finally:
            await conn.close()
        assert not hypertable
        assert brin
    finally:
        await asyncio.to_thread(cleanup.close)


async def _stored(database_url: str, expected: int) -> None:
    assert await count(database_url, "SELECT count(*) FROM samples") == expected


async def test_a_busy_stream_is_written_several_batches_a_transaction(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    """Batches arriving 20 ms apart wait ``ingest_linger`` for each other: fewer transactions
    than batches, every sample stored once."""
    js = nc.jetstream()
    config = gateway_config(
        nats_config, database_url, tmp_path, ingest_linger=Duration(0.15), ingest_writers=1
    )
    async with running_gateway(config) as gw:
        start = time.time() - 600
        for i in range(30):
            await js.publish(nats_config.subjects.metrics("web-1"), encode(batch(when=start + i)))
            await asyncio.sleep(0.02)

        async def stored() -> None:
            assert gw.counter("ingest_messages_total", kind="metrics") == 30

        await eventually(stored)
        assert await count(database_url, "SELECT count(*) FROM samples") == 90
        rounds = gw.counter("ingest_rounds_total", consumer=METRICS_CONSUMER)
        assert 1 <= rounds <= 15, rounds  # one round per batch without the linger


async def test_a_minutes_rollups_are_merged_once_it_ended_its_messages_kept_in_progress(
    nc, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    """``rollup_merge: minute`` (the default): a minute's batches wait for it to end and are
    merged once, so each 1-minute row is written once. Their messages stay unacknowledged that
    long, far past ``ack_wait``, without being redelivered (they are kept in progress), and a
    query already shows them meanwhile, from the raw samples."""
    js = nc.jetstream()
    subject = nats_config.subjects.metrics("web-1")
    config = gateway_config(
        nats_config, database_url, tmp_path, rollup_merge="minute", ack_wait=Duration(1.0)
    )
    # room for the batches to be stored before their minute ends: at most 17.5 s of waiting
    # (waiting for the next minute from within its first 2 s left too little of the 120 s)
    phase = time.time() % 60
    if phase < 2:
        await asyncio.sleep(2.5 - phase)
    elif phase > 45:
        await asyncio.sleep(62.5 - phase)
    async with running_gateway(config) as gw:
        sent = time.time() - 1  # the samples' times: past, as an agent's
        minute = sent - sent % 60
        # all in one minute, also when the gateway took long to start (a loaded machine)
        first = minute + min(sent % 60, 55.0)
        for i in range(4):
            await js.publish(subject, encode(batch(when=first + i * 0.1, value=float(i))))

        async def committed() -> None:
            assert gw.counter("ingest_committed_samples_total") == 12

        await eventually(committed)
        if time.time() < minute + 60:  # the minute is still going on: nothing merged yet
            assert await count(database_url, "SELECT count(*) FROM samples_1m") == 0
            assert gw.counter("ingest_samples_total") == 0
        async with gw.client() as client:
            answer = (
                await client.get(
                    "/api/v1/query",
                    params={"metric": "cpu.usage_percent", "step": "1m", "agg": "count", "from": "-5m"},
                )
            ).json()
        assert sum(v for _, v in answer["series"][0]["points"]) == 4  # from the raw samples

        async def merged() -> None:
            assert await count(database_url, "SELECT coalesce(sum(count), 0) FROM samples_1m") == 12

        await eventually(merged, timeout=90)
        assert gw.counter("ingest_samples_total") == 12
        assert gw.counter("ingest_duplicate_samples_total") == 0
        info = await js.consumer_info(nats_config.subjects.metrics_stream, METRICS_CONSUMER)
        assert info.num_redelivered == 0 and info.num_ack_pending == 0
        assert time.time() - sent > 3 * float(config.ack_wait)  # held well past ack_wait
        rows = await count(database_url, "SELECT count(*) FROM samples_1m")
        assert rows == 3  # one per series, written once

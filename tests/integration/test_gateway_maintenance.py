"""The gateway's maintenance loop as an operator meets it: one replica runs retention at a
time, a failing round is logged and tried again, and where TimescaleDB's licensed policies
cannot be set the gateway says so and keeps dropping old data itself."""

from __future__ import annotations

import logging
import time

import asyncpg
import pytest

from signalfire.config import Duration
from signalfire.events import MetricBatch, Sample
from signalfire.gateway.config import RetentionConfig
from signalfire.gateway.maintenance import (
    _RETENTION_LOCK_KEY,
    Maintenance,
    configure_policies,
    detect_edition,
)
from signalfire.gateway.rollup import Rollups
from signalfire.gateway.store import Store
from tests.support.polling import wait_until

DAY = 86400.0
LOGGER = "signalfire.gateway.maintenance"


async def _store_one_sample(pool: asyncpg.Pool, when: float) -> None:
    await Store(pool).write_metrics(
        [MetricBatch(host="old", time=when, samples=[Sample(name="cpu.usage_percent", value=1.0)])],
        rollups=Rollups.round(),
    )


async def test_retention_waits_while_another_replica_runs_it(pool: asyncpg.Pool) -> None:
    now = time.time()
    await _store_one_sample(pool, now - 40 * DAY)
    maintenance = Maintenance(pool, RetentionConfig(), Rollups(pool), clock=lambda: now)
    async with pool.acquire() as other, other.transaction():
        assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RETENTION_LOCK_KEY)
        assert await maintenance.run_once() == {}
        assert await pool.fetchval("SELECT count(*) FROM samples") == 1
    assert (await maintenance.run_once())["sample_batches"] >= 1
    assert await pool.fetchval("SELECT count(*) FROM samples") == 0


async def test_a_failing_round_is_logged_and_the_next_one_runs(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    now = time.time()
    await _store_one_sample(pool, now - 40 * DAY)
    # Both tables gone for a while: as if an operator's migration were half done.
    await pool.execute("ALTER TABLE events RENAME TO events_away")
    await pool.execute("ALTER TABLE rollup_pending RENAME TO rollup_pending_away")
    maintenance = Maintenance(
        pool, RetentionConfig(check_every=Duration(0.05)), Rollups(pool), clock=lambda: now
    )
    await maintenance.start()
    try:
        await wait_until(
            lambda: (
                {"retention failed; trying again later", "rollup repair failed; trying again later"}
                <= {r.getMessage() for r in caplog.records if r.name == LOGGER}
            ),
            "both failures logged",
        )
        assert await pool.fetchval("SELECT count(*) FROM samples") == 1
        await pool.execute("ALTER TABLE events_away RENAME TO events")
        await pool.execute("ALTER TABLE rollup_pending_away RENAME TO rollup_pending")
        await wait_until(
            lambda: any(r.getMessage() == "retention dropped old data" for r in caplog.records),
            "the next round to drop the old sample",
        )
    finally:
        await maintenance.stop()
    assert await pool.fetchval("SELECT count(*) FROM samples") == 0


async def test_without_the_timescale_license_policies_are_refused_and_said_so(
    pool: asyncpg.Pool, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    if "timescaledb" not in request.node.callspec.id:
        pytest.skip("the policies are TimescaleDB's")
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with pool.acquire() as conn:
        # The test server builds TimescaleDB's Apache edition, which has no compression or
        # retention policies: as when the license setting says timescale but the module is missing.
        assert await configure_policies(conn, RetentionConfig()) is False
        compressed = await conn.fetchval(
            "SELECT compression_enabled FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'sample_rows'"
        )
    assert compressed is False
    [warning] = [r for r in caplog.records if r.name == LOGGER]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == "cannot set TimescaleDB policies; the gateway runs retention itself"


async def test_timescaledb_installed_but_samples_a_plain_table_is_run_as_plain_postgresql(
    database_url: str,
) -> None:
    # A database where the extension exists but the samples table was made without it (an
    # operator's restore, the extension added later): TimescaleDB's chunk dropping would find
    # nothing there, so the gateway deletes old rows itself.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await conn.execute("CREATE TABLE sample_rows (time timestamptz NOT NULL, value double precision)")
        assert await detect_edition(conn) == "postgresql"
        await conn.execute("SELECT create_hypertable('sample_rows', 'time')")
        assert await detect_edition(conn) == "apache"
    finally:
        await conn.close()

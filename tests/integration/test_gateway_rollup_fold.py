"""The 1-hour rollups made from closed minutes (the fold), and the migration that brought it."""

from __future__ import annotations

import time

import asyncpg
from devstack import PostgresServer

from signalfire.events import MetricBatch, Sample
from signalfire.gateway.migrate import migrate, migrations
from signalfire.gateway.rollup import Rollups, fold
from signalfire.gateway.rollup.fold import FOLD_DELAY, KEEP_MINUTES
from signalfire.gateway.store import Store
from tests.integration.gateway_support import write_held

HOUR = 1_763_700_000.0 - 1_763_700_000.0 % 3600  # long past
COLUMNS = "count, sum, min, max, last, extract(epoch FROM last_time)::float8 AS last_time, hist::text AS hist"


def batch(when: float, value: float, host: str = "web-1") -> MetricBatch:
    return MetricBatch(
        host=host,
        time=when,
        samples=[Sample(name="cpu.usage_percent", value=value), Sample(name="load", value=value / 10)],
    )


async def totals(pool: asyncpg.Pool) -> tuple[int, int]:
    """Samples counted in the 1-minute and in the 1-hour rollups."""
    minutes = await pool.fetchval("SELECT coalesce(sum(count), 0) FROM samples_1m")
    hours = await pool.fetchval("SELECT coalesce(sum(count), 0) FROM samples_1h")
    return int(minutes), int(hours)


async def test_an_hour_gets_each_minute_once_it_ended_and_late_samples_at_once(pool: asyncpg.Pool) -> None:
    minute = HOUR + 600
    now = [minute + 30]
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0])
    data = [batch(minute + i, float(i)) for i in range(40)]  # 80 samples: past the exact values
    await write_held(store, rollups, data, list(range(1, 41)))
    await rollups.flush()
    assert await totals(pool) == (80, 0)  # the minute is still going on: its hour waits
    assert not rollups.fold_due()

    now[0] = minute + 60 + FOLD_DELAY
    assert rollups.fold_due()
    assert await rollups.flush() == {}  # nothing waited, but the minute ended: folded
    assert await totals(pool) == (80, 80)
    assert not rollups.fold_due()
    hour_rows = await pool.fetch(f"SELECT series_id, {COLUMNS} FROM samples_1h ORDER BY series_id")
    minute_rows = await pool.fetch(f"SELECT series_id, {COLUMNS} FROM samples_1m ORDER BY series_id")
    assert [dict(r) for r in hour_rows] == [dict(r) for r in minute_rows]  # one minute: the same

    # a late batch of the folded minute goes into both at once, and a later fold adds nothing
    await write_held(store, rollups, [batch(minute + 45, 1000.0)], [41])
    await rollups.flush()
    now[0] += 600
    await rollups.flush()
    assert await totals(pool) == (82, 82)
    assert await pool.fetchval("SELECT max(max) FROM samples_1h") == 1000.0
    assert await pool.fetchval("SELECT bool_and(folded) FROM rollup_minutes") is True


async def test_maintenance_folds_what_no_gateway_did_and_keeps_the_minute_list_to_a_day(
    pool: asyncpg.Pool,
) -> None:
    """A gateway that stopped (or a fleet gone quiet) leaves an ended minute open: the rollups'
    maintenance round folds it. The list of folded minutes is pruned to a day, and a late sample
    of a pruned minute still reaches the hour exactly once."""
    minute = HOUR + 1800
    now = [minute + 30]
    store, gone = Store(pool), Rollups(pool, clock=lambda: now[0])
    await write_held(store, gone, [batch(minute + 1, 1.0), batch(minute + 2, 3.0)], [1, 2])
    await gone.flush()
    assert await totals(pool) == (4, 0)  # its minute still going on when this gateway stopped

    other = Rollups(pool, clock=lambda: now[0])  # another gateway, with nothing to merge
    now[0] = minute + 60 + FOLD_DELAY
    await other.repair()
    assert await totals(pool) == (4, 4)
    assert await pool.fetchval("SELECT count(*) FROM rollup_minutes") == 1

    now[0] = minute + KEEP_MINUTES + 120
    await other.repair()
    assert await pool.fetchval("SELECT count(*) FROM rollup_minutes") == 0
    horizon = await pool.fetchval("SELECT extract(epoch FROM horizon)::float8 FROM rollup_fold")
    assert horizon == now[0] - KEEP_MINUTES
    # a late batch of the pruned minute: before the horizon, so merged into both tables once
    await write_held(store, other, [batch(minute + 50, 5.0)], [3])
    await other.flush()
    now[0] += 3600
    await other.repair()
    assert await totals(pool) == (6, 6)


async def test_pruning_never_moves_the_horizon_past_an_open_minute(pool: asyncpg.Pool) -> None:
    minute = HOUR + 2400
    now = [minute + 30]
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0])
    await write_held(store, rollups, [batch(minute + 1, 1.0)], [1])
    await rollups.flush()
    async with pool.acquire() as conn, conn.transaction():
        assert await fold.prune(conn, now=minute + 10 * KEEP_MINUTES) == 0  # open: kept, not folded
    horizon = await pool.fetchval("SELECT extract(epoch FROM horizon)::float8 FROM rollup_fold")
    assert horizon <= minute
    now[0] = minute + 60 + FOLD_DELAY
    await rollups.flush()
    assert await totals(pool) == (2, 2)


async def test_a_redelivered_round_merges_its_new_samples_into_the_open_minute_only(
    pool: asyncpg.Pool,
) -> None:
    """The write path that merges in the samples' own transaction (a redelivery with some
    samples stored before) leaves the hour to the fold as well."""
    minute = HOUR + 1200
    store = Store(pool)
    await store.write_metrics([batch(minute + 1, 1.0)], rollups=Rollups.round())
    # the same batch again with one more: only the new sample is stored and merged
    again = batch(minute + 1, 1.0)
    again.samples.append(Sample(name="extra", value=5.0))
    written = await store.write_metrics([again], rollups=Rollups.round(), redelivered=True)
    assert written.samples == 1
    minutes, hours = await totals(pool)
    assert (minutes, hours) == (3, 3)  # minute + 1 is long past on the machine's clock: folded
    assert await pool.fetchval("SELECT count(*) FROM rollup_minutes WHERE NOT folded") == 0


async def test_a_database_migrated_with_rollups_keeps_every_sample_once_in_its_hours(
    postgres: PostgresServer,
) -> None:
    """A database whose rollups an older gateway merged into both tables: minutes before the
    migration are never folded again, minutes after it are folded once."""
    url = postgres.create_database(f"fold_{int(time.time() * 1000) % 10**9}")
    conn = await asyncpg.connect(url)
    try:
        # the database as the gateway before migration 0008 left it
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in migrations():
            if migration.version < 8:
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        old = time.time() - 3600
        old_minute = old - old % 60
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            for name, value in (("cpu.usage_percent", 7.0), ("load", 0.7)):
                await conn.execute(
                    "WITH s AS (INSERT INTO series (host, name, labels, unit) VALUES ('web-1', $1, '{}', '')"
                    " RETURNING id) INSERT INTO samples (time, series_id, value)"
                    " SELECT to_timestamp($2), id, $3 FROM s",
                    name,
                    old_minute + 1,
                    value,
                )
            for table, width in (("samples_1m", 60), ("samples_1h", 3600)):  # merged into both
                await conn.execute(
                    f"INSERT INTO {table} (series_id, bucket, count, sum, min, max, last, last_time, hist)"
                    " SELECT series_id, to_timestamp(floor(extract(epoch FROM time) / $1) * $1), 1, value,"
                    " value, value, value, time, jsonb_build_object('v', jsonb_build_array(value))"
                    " FROM samples",
                    width,
                )
            assert [m.version for m in await migrate(conn)] == [
                m.version for m in migrations() if m.version >= 8
            ]
            horizon = await conn.fetchval("SELECT extract(epoch FROM horizon)::float8 FROM rollup_fold")
            assert old_minute < horizon <= time.time() + 60

            store, now = Store(pool), [time.time()]
            rollups = Rollups(pool, clock=lambda: now[0])
            # a late batch of the minute merged before the migration: into both tables, once
            await write_held(store, rollups, [batch(old_minute + 20, 9.0)], [1])
            await rollups.flush()
            assert await totals(pool) == (4, 4)
            # a minute after the horizon: folded once it ended
            new_minute = horizon + 120
            await write_held(store, rollups, [batch(new_minute + 5, 3.0)], [2])
            now[0] = new_minute + 10
            await rollups.flush()
            assert await totals(pool) == (6, 4)
            now[0] = new_minute + 60 + FOLD_DELAY
            await rollups.flush()
            now[0] += 3600
            await rollups.flush()
            assert await totals(pool) == (6, 6)
            per_hour = await conn.fetch(
                "SELECT bucket, sum(count) AS n FROM samples_1h GROUP BY bucket ORDER BY bucket"
            )
            raw = await conn.fetch(
                "SELECT date_trunc('hour', time) AS bucket, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1"
            )
            assert [tuple(r) for r in per_hour] == [tuple(r) for r in raw]
        finally:
            await pool.close()
    finally:
        await conn.close()
        postgres.drop_database(url.rsplit("/", 1)[1])

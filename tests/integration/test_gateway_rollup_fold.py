"""The 1-hour rollups made once per hour from its 1-minute rows (the fold), the open hours as
queries read them, and the migrations that brought it."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import cast

import asyncpg
import msgspec
from devstack import PostgresServer

from signalfire.config import Duration
from signalfire.events import MetricBatch, Sample
from signalfire.gateway import rollup
from signalfire.gateway.api import query
from signalfire.gateway.api.resources import Resources
from signalfire.gateway.config import GatewayConfig, RetentionConfig
from signalfire.gateway.migrate import migrate, migrations
from signalfire.gateway.rollup import Rollups
from signalfire.gateway.rollup.fold import FOLD_DELAY, MAX_SPAN
from signalfire.gateway.store import Store
from tests.integration.gateway_support import write_held

HOUR = 1_763_700_000.0 - 1_763_700_000.0 % 3600  # long past
COLUMNS = "count, sum, min, max, last, extract(epoch FROM last_time)::float8 AS last_time, hist::text AS hist"


def resources(pool: asyncpg.Pool, clock: Callable[[], float], config: GatewayConfig) -> Resources:
    """What a range query reads of the API's resources: the pool, its heavy-read slots, the
    clock and the config."""
    res = cast(
        Resources,
        SimpleNamespace(
            pool=pool, clock=clock, config=config, query_slots=asyncio.Semaphore(config.query_connections)
        ),
    )
    res.reading = functools.partial(Resources.reading, res)  # type: ignore[method-assign]
    return res


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


async def queried_hours(pool: asyncpg.Pool) -> dict[float, int]:
    """Samples per hour as a query with 1-hour steps reads them (folded hours from their 1-hour
    rows, open hours from their 1-minute rows)."""
    rows = await pool.fetch(
        "SELECT extract(epoch FROM date_bin('1 hour', bucket, 'epoch'))::float8 AS h, sum(count) AS n"
        f" FROM {query.HOURS} AS r GROUP BY 1 ORDER BY 1"
    )
    return {row["h"]: int(row["n"]) for row in rows}


async def migrated_through(conn: asyncpg.Connection, last: int) -> None:
    """The migrations up to ``last`` applied, as a gateway of that version left the database."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for migration in migrations():
        if migration.version <= last:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )


async def test_an_hour_gets_its_rows_once_it_ended_and_late_samples_at_once(pool: asyncpg.Pool) -> None:
    minute = HOUR + 600
    now = [minute + 30]
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0])
    data = [batch(minute + i, float(i)) for i in range(40)]  # 80 samples: past the exact values
    await write_held(store, rollups, data, list(range(1, 41)))
    await rollups.flush()
    assert await totals(pool) == (80, 0)  # the hour is still going on: its rows wait
    assert await queried_hours(pool) == {HOUR: 80}  # ... and queries read it from its minutes
    await write_held(store, rollups, [batch(minute + 1800, 7.0)], [41])  # another minute
    await rollups.flush()
    assert not rollups.fold_due()

    now[0] = HOUR + 3600 + FOLD_DELAY
    assert rollups.fold_due()
    assert await rollups.flush() == {}  # nothing waited, but the hour ended: folded
    assert await totals(pool) == (82, 82)
    assert await queried_hours(pool) == {HOUR: 82}  # the same answer, now from the hour's rows
    assert not rollups.fold_due()
    assert await pool.fetchval("SELECT count(*) FROM samples_1h") == 2  # one per series
    hour = dict(await pool.fetchrow(f"SELECT {COLUMNS} FROM samples_1h ORDER BY series_id LIMIT 1"))
    assert hour["count"] == 41 and hour["min"] == 0.0 and hour["max"] == 39.0 and hour["last"] == 7.0
    assert hour["sum"] == sum(range(40)) + 7.0
    assert "v" not in msgspec.json.decode(hour["hist"])  # 41 samples: bucket counts

    # a late batch of the folded hour goes into both at once, and a later fold adds nothing
    await write_held(store, rollups, [batch(minute + 45, 1000.0)], [42])
    await rollups.flush()
    now[0] += 7200
    await rollups.flush()
    assert await totals(pool) == (84, 84)
    assert await queried_hours(pool) == {HOUR: 84}
    assert await pool.fetchval("SELECT max(max) FROM samples_1h") == 1000.0


async def cells_of(pool: asyncpg.Pool, table: str) -> dict[tuple[int, float], tuple[object, ...]]:
    """A rollup table's rows as (count, sum, min, max, last, last time, bucket counts); sums to 9
    decimals (added in another order, they differ in their last bits)."""
    rows = await pool.fetch(
        f"SELECT series_id, extract(epoch FROM bucket)::float8 AS b, {COLUMNS} FROM {table}"
    )
    return {
        (r["series_id"], r["b"]): (
            r["count"], round(r["sum"], 9), r["min"], r["max"], r["last"], r["last_time"],
            rollup.counts(msgspec.json.decode(r["hist"])),
        )
        for r in rows
    }  # fmt: skip


async def raw_cells_of(pool: asyncpg.Pool, width: int) -> dict[tuple[int, float], tuple[object, ...]]:
    """The rows the raw samples make for buckets of ``width`` seconds, as ingest computes them
    (the 5-minute rows without a histogram)."""
    rows = await pool.fetch("SELECT series_id, extract(epoch FROM time)::float8 AS t, value FROM samples")
    cells = rollup.aggregate(((r["series_id"], r["t"], r["value"]) for r in rows), width)
    return {
        key: (
            c.count,
            round(c.sum, 9),
            c.min,
            c.max,
            c.last,
            c.last_time,
            rollup.counts(c.hist) if width != 300 else {},
        )
        for key, c in cells.items()
    }


async def horizon_5m(pool: asyncpg.Pool) -> float:
    return float(await pool.fetchval("SELECT extract(epoch FROM horizon_5m)::float8 FROM rollup_fold"))


async def test_five_minutes_get_their_rows_once_ended_and_late_samples_at_once(
    pool: asyncpg.Pool,
) -> None:
    """5 minutes get their rows (totals, no histogram) from their minutes once they ended
    FOLD_DELAY ago; a late sample of folded 5 minutes goes into them at once. Every table
    equals what the raw samples make (180 samples a series in the hour: counted)."""
    now = [HOUR + 30]
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0])
    data = [batch(HOUR + 20 * i + 3, float(i % 23)) for i in range(180)]  # the hour, every 20 s
    await write_held(store, rollups, data[:45], list(range(1, 46)))  # its first 15 minutes
    now[0] = HOUR + 900 + FOLD_DELAY
    await rollups.flush()
    assert await horizon_5m(pool) == HOUR + 900
    assert await cells_of(pool, "samples_5m") == await raw_cells_of(pool, 300)
    assert {b for _, b in await cells_of(pool, "samples_5m")} == {HOUR, HOUR + 300, HOUR + 600}
    # the next minutes: merged into the 1-minute rows only until their 5 minutes end
    await write_held(store, rollups, data[45:60], list(range(46, 61)))
    await rollups.flush()
    assert {b for _, b in await cells_of(pool, "samples_5m")} == {HOUR, HOUR + 300, HOUR + 600}
    # a late sample of the first 5 minutes (folded): into their rows at once, counted once
    await write_held(store, rollups, [batch(HOUR + 61.5, 99.0)], [500])
    await rollups.flush()
    five = await cells_of(pool, "samples_5m")
    assert five == {k: v for k, v in (await raw_cells_of(pool, 300)).items() if k[1] < HOUR + 900}
    assert sum(int(cast(int, v[0])) for v in five.values()) == 2 * 46
    # the rest of the hour, then the hour's fold
    await write_held(store, rollups, data[60:], list(range(61, 181)))
    now[0] = HOUR + 3600 + FOLD_DELAY
    await rollups.flush()
    assert await horizon_5m(pool) == HOUR + 3600
    assert await cells_of(pool, "samples_5m") == await raw_cells_of(pool, 300)
    hours = await cells_of(pool, "samples_1h")
    assert hours == await raw_cells_of(pool, 3600)
    assert {b for _, b in hours} == {HOUR} and all(v[0] == 181 for v in hours.values())


async def test_an_hour_of_few_samples_keeps_their_values(pool: asyncpg.Pool) -> None:
    """Minutes that kept their values make an hour that keeps them, while they total at most
    EXACT_MAX: its percentiles stay exact."""
    now = [HOUR + 30]
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0])
    await write_held(store, rollups, [batch(HOUR + 60 * i, float(i)) for i in range(5)], [1, 2, 3, 4, 5])
    await rollups.flush()
    now[0] = HOUR + 3600 + FOLD_DELAY
    await rollups.flush()
    hist = await pool.fetchval(
        "SELECT hist::text FROM samples_1h h JOIN series s ON s.id = h.series_id WHERE s.name = 'load'"
    )
    assert sorted(msgspec.json.decode(hist)["v"]) == [0.0, 0.1, 0.2, 0.3, 0.4]


async def test_maintenance_folds_what_no_gateway_did(pool: asyncpg.Pool) -> None:
    """A gateway that stopped (or a fleet gone quiet) leaves an ended hour open: the rollups'
    maintenance round folds it, skipping the hours without samples in one go."""
    minute = HOUR + 1800
    now = [minute + 30]
    store, gone = Store(pool), Rollups(pool, clock=lambda: now[0])
    await write_held(store, gone, [batch(minute + 1, 1.0), batch(minute + 2, 3.0)], [1, 2])
    await gone.flush()
    assert await totals(pool) == (4, 0)  # its hour still going on when this gateway stopped

    other = Rollups(pool, clock=lambda: now[0])  # another gateway, with nothing to merge
    now[0] = HOUR + 3600 + FOLD_DELAY + 86400 * 30  # a month later
    await other.repair()
    assert await totals(pool) == (4, 4)
    horizon = await pool.fetchval("SELECT extract(epoch FROM horizon)::float8 FROM rollup_fold")
    assert horizon == (now[0] - FOLD_DELAY) // 3600 * 3600  # every empty hour since: folded
    # a late batch of that hour: before the horizon, so merged into both tables once
    await write_held(store, other, [batch(minute + 50, 5.0)], [3])
    await other.flush()
    now[0] += 3600
    await other.repair()
    assert await totals(pool) == (6, 6)


async def test_a_fold_takes_at_most_a_day_of_hours_at_a_time(pool: asyncpg.Pool) -> None:
    now = [HOUR]
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0])
    hours = MAX_SPAN // 3600 + 6
    for i in range(hours):
        await write_held(store, rollups, [batch(HOUR + 3600 * i + 5, float(i))], [i + 1])
    await rollups.flush()
    now[0] = HOUR + 3600 * (hours + 2)
    await rollups.flush()
    assert await pool.fetchval("SELECT count(DISTINCT bucket) FROM samples_1h") == MAX_SPAN // 3600
    assert rollups.fold_due()  # hours are left: the next flush goes on
    await rollups.flush()
    assert await totals(pool) == (2 * hours, 2 * hours)
    assert await queried_hours(pool) == {HOUR + 3600 * i: 2 for i in range(hours)}


async def test_a_redelivered_round_merges_its_new_samples_into_the_open_hour_only(
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
    assert await queried_hours(pool) == {HOUR: 3}


async def test_a_batch_naming_a_series_twice_is_stored_a_row_per_sample_once_each(
    pool: asyncpg.Pool,
) -> None:
    """A batch whose layout names a series twice cannot be one row of ``sample_batches`` (its
    reads would see the series twice): it is stored a row per sample, the repeat refused."""
    when = HOUR + 1801
    twice = batch(when, 1.0)
    twice.samples.append(Sample(name="load", value=9.0))
    written = await Store(pool).write_metrics([twice], rollups=Rollups.round())
    assert (written.samples, written.duplicate_samples) == (2, 1)
    assert await pool.fetchval("SELECT count(*) FROM sample_batches WHERE time = to_timestamp($1)", when) == 0
    loads = await pool.fetchval(
        "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id"
        " WHERE s.name = 'load' AND x.time = to_timestamp($1)",
        when,
    )
    assert loads == 1


async def test_a_database_migrated_with_rollups_keeps_every_sample_once_in_its_hours(
    postgres: PostgresServer,
) -> None:
    """A database whose rollups an older gateway merged into both tables: minutes before the
    migration are never folded again, minutes after it are folded once."""
    url = postgres.create_database(f"fold_{int(time.time() * 1000) % 10**9}")
    conn = await asyncpg.connect(url)
    try:
        await migrated_through(conn, 7)  # the database as the gateway before migration 0008 left it
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
            migrated_at = time.time()
            assert [m.version for m in await migrate(conn)] == [
                m.version for m in migrations() if m.version >= 8
            ]
            horizon = await conn.fetchval("SELECT extract(epoch FROM horizon)::float8 FROM rollup_fold")
            assert old_minute < horizon <= time.time() and horizon % 3600 == 0  # the current hour
            # the 5-minute rows begin with the current 5 minutes: older minutes are not folded
            since = await conn.fetchval("SELECT extract(epoch FROM since_5m)::float8 FROM rollup_fold")
            assert migrated_at - migrated_at % 300 <= since <= time.time() and since % 300 == 0
            assert await horizon_5m(pool) == since

            store, now = Store(pool), [time.time()]
            rollups = Rollups(pool, clock=lambda: now[0])
            # a late batch of the minute merged before the migration: into both tables, once
            await write_held(store, rollups, [batch(old_minute + 20, 9.0)], [1])
            await rollups.flush()
            assert await totals(pool) == (4, 4)
            # a minute of the open hour, and one after the 5-minute rows begin: the hour made
            # once it ended, the 5 minutes from `since` on
            new_minute = horizon + 120
            await write_held(store, rollups, [batch(new_minute + 5, 3.0), batch(since + 5, 4.0)], [2, 3])
            now[0] = new_minute + 10
            await rollups.flush()
            assert await totals(pool) == (8, 4)
            now[0] = horizon + 3600 + FOLD_DELAY
            await rollups.flush()
            assert await totals(pool) == (8, 8)
            fives = await cells_of(pool, "samples_5m")
            assert {b for _, b in fives} == {since}  # nothing before it
            assert sum(int(cast(int, v[0])) for v in fives.values()) == (4 if new_minute >= since else 2)
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


async def test_the_minute_fold_of_migration_0008_becomes_the_hourly_fold_with_nothing_twice(
    postgres: PostgresServer,
) -> None:
    """A database an 0008 gateway left with one minute of an hour folded (in its 1-hour row) and
    one not: migration 0009 puts the horizon at that hour, whose rows the next fold remakes from
    both minutes, once each."""
    url = postgres.create_database(f"fold9_{int(time.time() * 1000) % 10**9}")
    conn = await asyncpg.connect(url)
    try:
        await migrated_through(conn, 8)
        series = await conn.fetchval(
            "INSERT INTO series (host, name, labels, unit) VALUES ('web-1', 'load', '{}', '') RETURNING id"
        )
        folded, open_ = HOUR + 60, HOUR + 120
        for minute, value in ((folded, 1.0), (open_, 2.0)):
            await conn.execute(
                "INSERT INTO samples (time, series_id, value) VALUES (to_timestamp($1), $2, $3)",
                minute + 1,
                series,
                value,
            )
            await conn.execute(
                "INSERT INTO samples_1m (series_id, bucket, count, sum, min, max, last, last_time, hist)"
                " VALUES ($1, to_timestamp($2), 1, $3, $3, $3, $3, to_timestamp($2 + 1),"
                " jsonb_build_object('v', jsonb_build_array($3::float8)))",
                series,
                minute,
                value,
            )
        # the 0008 fold added the first minute to the hour's row, not yet the second
        await conn.execute(
            "INSERT INTO samples_1h SELECT series_id, to_timestamp($1), count, sum, min, max, last,"
            " last_time, hist FROM samples_1m WHERE bucket = to_timestamp($2)",
            HOUR,
            folded,
        )
        await conn.execute("UPDATE rollup_fold SET horizon = to_timestamp($1)", HOUR)
        await conn.execute(
            "INSERT INTO rollup_minutes (bucket, folded)"
            " VALUES (to_timestamp($1), true), (to_timestamp($2), false)",
            folded,
            open_,
        )
        assert [m.version for m in await migrate(conn)] == [9, 10, 11]
        assert await conn.fetchval("SELECT extract(epoch FROM horizon)::float8 FROM rollup_fold") == HOUR
        assert await conn.fetchval("SELECT to_regclass('rollup_minutes')") is None
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            assert await queried_hours(pool) == {HOUR: 2}  # open: read from its two minutes
            await Rollups(pool).repair()  # maintenance: the hour ended long ago
            row = await conn.fetchrow("SELECT count, sum, hist::text FROM samples_1h")
            assert (row["count"], row["sum"]) == (2, 3.0)
            assert sorted(msgspec.json.decode(row["hist"])["v"]) == [1.0, 2.0]
            assert await queried_hours(pool) == {HOUR: 2}
        finally:
            await pool.close()
    finally:
        await conn.close()
        postgres.drop_database(url.rsplit("/", 1)[1])


async def test_range_queries_count_each_sample_once_across_the_folded_hours_and_the_fresh_minutes(
    pool: asyncpg.Pool,
) -> None:
    """Buckets wholly before the open rows are read from one table, the rest from the folded
    hours, the open hours' minutes and the last minutes' raw samples: every answer equals the
    raw samples' own aggregates, whichever side of the fold horizon and the fresh minutes a
    bucket falls on."""
    now = [HOUR + 2 * 3600 + 1515]  # 25 minutes into the third hour
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0])
    times = [HOUR + 30.0 * i for i in range(int((now[0] - 15 - HOUR) // 30) + 1)]  # every 30 s
    raw = [(t, float(i % 17)) for i, t in enumerate(times)]
    await write_held(store, rollups, [batch(t, v) for t, v in raw], list(range(1, len(raw) + 1)))
    await rollups.flush()  # the first two hours folded, the minutes that ended merged
    horizon = await pool.fetchval("SELECT extract(epoch FROM horizon)::float8 FROM rollup_fold")
    assert horizon == HOUR + 2 * 3600
    assert await horizon_5m(pool) == HOUR + 2 * 3600 + 1200  # 20 minutes into the third hour
    # the minutes up to the one going on have their 1-minute rows (the flush merged them all):
    # the last minutes are then in both their raw samples and those rows, and count once
    newest = await pool.fetchval("SELECT extract(epoch FROM max(bucket))::float8 FROM samples_1m")
    assert newest == max(times) == now[0] - 15
    cpu = await pool.fetchval("SELECT id FROM series WHERE name = 'cpu.usage_percent'")
    res = resources(
        pool,
        lambda: now[0],
        GatewayConfig(database_url="postgresql://unused", retention=RetentionConfig(raw=Duration(0))),
    )
    expect: dict[str, Callable[[list[tuple[float, float]]], float]] = {
        "avg": lambda vs: sum(v for _, v in vs) / len(vs),
        "max": lambda vs: max(v for _, v in vs),
        "count": lambda vs: float(len(vs)),
        "last": lambda vs: max(vs)[1],
    }
    cases: tuple[tuple[query.Source, float], ...] = (
        ("1m", 300.0), ("5m", 300.0), ("5m", 900.0), ("1h", 3600.0), ("1h", 7200.0),
    )  # fmt: skip
    for source, width in cases:
        for agg, of in expect.items():
            points = await query._bucketed(res, [cpu], HOUR, now[0], width=width, source=source, agg=agg)
            buckets: dict[float, list[tuple[float, float]]] = {}
            for t, v in raw:
                buckets.setdefault(t - t % width, []).append((t, v))
            wanted = [(b, of(vs)) for b, vs in sorted(buckets.items())]
            got = msgspec.json.decode(points[cpu])
            assert [b for b, _ in got] == [b for b, _ in wanted], (source, width, agg)
            for (b, value), (_, want) in zip(got, wanted, strict=True):
                assert value is not None and math.isclose(value, want, rel_tol=1e-9), (source, width, agg, b)


async def test_a_range_query_over_many_series_shared_among_connections_answers_every_series_once(
    pool: asyncpg.Pool,
) -> None:
    """70 series dealt among 3 statements (``query_parallelism``) answer as one statement does:
    every series, each with its own buckets, none missing or mixed up."""
    hosts = [f"fleet-{i:02}" for i in range(70)]
    now = [HOUR + 3600 + 600]
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0])
    # values of 17 significant digits (i / 3): read back exactly from PostgreSQL's text
    data = [batch(HOUR + 60.0 * m, i / 3, host=h) for i, h in enumerate(hosts) for m in range(0, 60, 5)]
    await write_held(store, rollups, data, list(range(1, len(data) + 1)))
    await rollups.flush()
    ids = {
        row["host"]: row["id"]
        for row in await pool.fetch("SELECT id, host FROM series WHERE name = 'cpu.usage_percent'")
    }
    assert len(ids) == len(hosts)
    answers = []
    for parallelism in (1, 3):
        res = resources(
            pool,
            lambda: now[0],
            GatewayConfig(database_url="postgresql://unused", query_parallelism=parallelism),
        )
        # at least 32 series a statement: 70 make two statements, not three
        assert len(query.split_ids(list(ids.values()), parallelism)) == {1: 1, 3: 2}[parallelism]
        cases: tuple[tuple[query.Source, float], ...] = (("raw", 600.0), ("1m", 900.0), ("5m", 900.0))
        for source, width in cases:
            encoded = await query._bucketed(
                res, list(ids.values()), HOUR, HOUR + 3600, width=width, source=source, agg="max"
            )
            points = {series_id: msgspec.json.decode(text) for series_id, text in encoded.items()}
            assert set(points) == set(ids.values()), (parallelism, source)
            for i, host in enumerate(hosts):
                assert points[ids[host]] == [[HOUR + width * b, i / 3] for b in range(int(3600 // width))]
            answers.append(points)
    assert answers[:3] == answers[3:]

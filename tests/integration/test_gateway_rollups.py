"""Rollups and retention on TimescaleDB (Apache edition) and on plain PostgreSQL."""

from __future__ import annotations

import random
import time

import asyncpg
import msgspec
import pytest

from signalfire.config import Duration
from signalfire.events import MetricBatch, Sample
from signalfire.gateway.config import RetentionConfig
from signalfire.gateway.maintenance import Maintenance, apply_retention, detect_edition
from signalfire.gateway.rollup import Rollups
from signalfire.gateway.rollup.pending import MERGE_GRACE
from signalfire.gateway.store import Store
from tests.integration.gateway_support import write_held

DAY = 86400.0


def batches(start: float, hosts: int, points: int, step: float, seed: int) -> list[MetricBatch]:
    rng = random.Random(seed)
    return [
        MetricBatch(
            host=f"web-{h}",
            time=start + i * step,
            samples=[
                Sample(name="cpu.usage_percent", value=rng.uniform(0, 100)),
                Sample(name="net.errors_per_second", value=rng.choice([0.0, 0.0, 1.5, -2.0, 1e6])),
            ],
        )
        for h in range(hosts)
        for i in range(points)
    ]


async def test_the_edition_is_detected(pool: asyncpg.Pool, request: pytest.FixtureRequest) -> None:
    async with pool.acquire() as conn:
        edition = await detect_edition(conn)
    expected = "apache" if "timescaledb" in request.node.callspec.id else "postgresql"
    assert edition == expected


async def test_rollups_equal_aggregates_of_the_raw_samples(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    start = 1_763_700_000.0  # two hours of 7 s samples across minute and hour boundaries
    data = batches(start, hosts=3, points=1100, step=7.0, seed=1)
    random.Random(2).shuffle(data)  # late data: buckets are revisited by later writes
    for i in range(0, len(data), 250):
        await store.write_metrics(data[i : i + 250], rollups=Rollups.round())
    again = await store.write_metrics(data[:300], rollups=Rollups.round())  # a redelivery adds nothing
    assert again.samples == 0
    assert again.duplicate_samples == 600
    # ... and a mixed round (some new, some redelivered) counts only the new samples
    extra = batches(start + 7.0 * 1100, hosts=3, points=10, step=7.0, seed=3)
    mixed = await store.write_metrics(data[300:310] + extra, rollups=Rollups.round())
    assert mixed.samples == len(extra) * 2

    for table, width in (("samples_1m", 60), ("samples_1h", 3600)):
        mismatches = await pool.fetch(
            f"""
            WITH raw AS (
                SELECT series_id, to_timestamp(floor(extract(epoch FROM time) / {width}) * {width}) AS bucket,
                       count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
                       (array_agg(value ORDER BY time DESC))[1] AS last
                FROM samples GROUP BY 1, 2
            )
            SELECT raw.*, r.count AS r_count FROM raw FULL JOIN {table} r USING (series_id, bucket)
            WHERE r.count IS DISTINCT FROM raw.count
               OR abs(r.sum - raw.sum) > 1e-6 * greatest(1, abs(raw.sum))
               OR r.min IS DISTINCT FROM raw.min OR r.max IS DISTINCT FROM raw.max
               OR r.last IS DISTINCT FROM raw.last
            """
        )
        assert [dict(m) for m in mismatches] == [], table
        total = await pool.fetchval(f"SELECT sum(count) FROM {table}")
        assert total == await pool.fetchval("SELECT count(*) FROM samples") == 3 * 1110 * 2


async def test_percentiles_from_rollups_are_within_two_percent(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    start = 1_763_700_000.0 - 1_763_700_000.0 % 3600
    await store.write_metrics(batches(start, hosts=1, points=500, step=7.0, seed=5), rollups=Rollups.round())
    series = await pool.fetchval("SELECT id FROM series WHERE name = 'cpu.usage_percent'")
    raw = await pool.fetchrow(
        """
        SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY value) AS p50,
               percentile_disc(0.95) WITHIN GROUP (ORDER BY value) AS p95,
               percentile_disc(0.99) WITHIN GROUP (ORDER BY value) AS p99
        FROM samples WHERE series_id = $1 AND time < to_timestamp($2)
        """,
        series,
        start + 3600,
    )
    from signalfire.gateway import rollup

    hist = await pool.fetchval(
        "SELECT hist::text FROM samples_1h WHERE series_id = $1 AND bucket = to_timestamp($2)", series, start
    )
    import msgspec

    merged = msgspec.json.decode(hist)
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        estimate = rollup.quantile(merged, q)
        assert estimate == pytest.approx(raw[name], rel=0.03), name


async def rollup_percentile(
    pool: asyncpg.Pool, table: str, series: int, span: tuple[float, float], q: float
) -> float:
    """What ``GET /api/v1/query?agg=pXX`` answers from a rollup for one step ``[start, end)``."""
    from signalfire.gateway import rollup

    texts = await pool.fetchval(
        f"SELECT array_agg(hist::text) FROM {table} "
        "WHERE series_id = $1 AND bucket >= to_timestamp($2) AND bucket < to_timestamp($3)",
        series,
        *span,
    )
    hist: rollup.Hist = {}
    for text in texts:
        rollup.merge(hist, msgspec.json.decode(text), limit=None)
    value = rollup.quantile(hist, q)
    assert value is not None
    return value


async def raw_percentile(pool: asyncpg.Pool, series: int, start: float, end: float, q: float) -> float:
    value: float = await pool.fetchval(
        "SELECT percentile_disc($4::float8) WITHIN GROUP (ORDER BY value) FROM samples "
        "WHERE series_id = $1 AND time >= to_timestamp($2) AND time < to_timestamp($3)",
        series,
        start,
        end,
        q,
    )
    return value


async def test_rollup_percentiles_are_the_raw_ones_for_few_samples_and_within_the_bound_beyond(
    pool: asyncpg.Pool,
) -> None:
    from signalfire.gateway.rollup import EXACT_MAX, RELATIVE_ERROR

    store = Store(pool)
    start = 1_763_700_000.0 - 1_763_700_000.0 % 3600
    rng = random.Random(7)

    def sample(host: str, when: float, value: float) -> MetricBatch:
        return MetricBatch(host=host, time=when, samples=[Sample(name="latency_ms", value=value)])

    # few: the reported case, three samples in one minute (each its own round: merged in SQL);
    # some: 20 a minute for 10 minutes; many: 200 in one minute, in several rounds.
    few = [sample("few", start + t, v) for t, v in ((5.0, 201.5), (25.0, 276.97), (45.0, 238.74))]
    some = [sample("some", start + i * 3.0, rng.lognormvariate(5, 1)) for i in range(200)]
    many = [sample("many", start + i * 0.25, rng.uniform(-50, 500)) for i in range(200)]
    rounds = (
        [[b] for b in few]
        + [some[i : i + 7] for i in range(0, 200, 7)]
        + [many[i : i + 60] for i in range(0, 200, 60)]
    )
    for batch in rounds:
        await store.write_metrics(batch, rollups=Rollups.round())

    ids = {
        r["host"]: r["id"] for r in await pool.fetch("SELECT host, id FROM series WHERE name = 'latency_ms'")
    }
    assert await raw_percentile(pool, ids["few"], start, start + 60, 0.95) == 276.97
    for host, per_minute in (("few", 3), ("some", 20), ("many", 200)):
        for table, width in (("samples_1m", 60.0), ("samples_1h", 3600.0)):
            for step in (60.0, 600.0):  # one row, and a query step spanning ten
                for q in (0.5, 0.95, 0.99):
                    exact = await raw_percentile(pool, ids[host], start, start + max(step, width), q)
                    got = await rollup_percentile(
                        pool, table, ids[host], (start, start + max(step, width)), q
                    )
                    # every row read kept its values: 1-minute rows of up to EXACT_MAX samples,
                    # and the one hour of "few"
                    if per_minute <= EXACT_MAX and (width == 60.0 or host == "few"):
                        assert got == exact, (host, table, step, q)
                    else:
                        assert abs(got - exact) <= RELATIVE_ERROR * abs(exact) * (1 + 1e-9), (host, table, q)


async def test_rollup_rows_written_before_values_were_kept_still_merge_and_read(pool: asyncpg.Pool) -> None:
    from signalfire.gateway import rollup

    store = Store(pool)
    start = 1_763_700_000.0 - 1_763_700_000.0 % 3600
    await store.write_metrics(
        [MetricBatch(host="old", time=start, samples=[Sample(name="x", value=100.0)])],
        rollups=Rollups.round(),
    )
    series = await pool.fetchval("SELECT id FROM series WHERE host = 'old'")
    # As the row was stored before migration 0006: counts only.
    await pool.execute(
        "UPDATE samples_1m SET hist = $2::jsonb WHERE series_id = $1",
        series,
        msgspec.json.encode({rollup.hist_key(100.0): 1}).decode(),
    )
    await store.write_metrics(
        [MetricBatch(host="old", time=start + 10, samples=[Sample(name="x", value=200.0)])],
        rollups=Rollups.round(),
    )
    hist = msgspec.json.decode(
        await pool.fetchval("SELECT hist::text FROM samples_1m WHERE series_id = $1", series)
    )
    assert "v" not in hist and sum(hist.values()) == 2
    assert rollup.quantile(hist, 1.0) == pytest.approx(200.0, rel=rollup.RELATIVE_ERROR)


async def test_retention_drops_only_what_is_older_than_configured(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    now = time.time()
    ages = {"ancient": 500 * DAY, "old": 100 * DAY, "month": 40 * DAY, "recent": 10 * DAY}
    for label, age in ages.items():
        await store.write_metrics(
            [MetricBatch(host=label, time=now - age, samples=[Sample(name="cpu.usage_percent", value=1.0)])],
            rollups=Rollups.round(),
        )
    async with pool.acquire() as conn:
        edition = await detect_edition(conn)
        dropped = await apply_retention(conn, edition, RetentionConfig(), now=now)
        assert dropped["sample_batches"] >= 3  # chunks or rows

        async def hosts(table: str) -> set[str]:
            rows = await conn.fetch(
                f"SELECT DISTINCT s.host FROM {table} x JOIN series s ON s.id = x.series_id"
            )
            return {r["host"] for r in rows}

        assert await hosts("samples") == {"recent"}  # raw: 30 days
        assert await hosts("samples_1m") == {"recent", "month"}  # 90 days
        assert await hosts("samples_5m") == {"recent", "month", "old"}  # 180 days
        assert await hosts("samples_1h") == {"recent", "month", "old"}  # 1 year
        # nothing more to drop the second time; keeping forever (0s) drops nothing
        again = await apply_retention(conn, edition, RetentionConfig(), now=now)
        assert not any(again.values())
        forever = RetentionConfig(
            raw=Duration(0), rollup_1m=Duration(0), rollup_5m=Duration(0), rollup_1h=Duration(0)
        )
        assert await apply_retention(conn, edition, forever, now=now + 1000 * DAY) == {}


async def test_deferred_rollups_count_every_batch_once(pool: asyncpg.Pool) -> None:
    """Ingest's path: samples now, rollups merged later; a gateway that died before the merge
    leaves the batch to its redelivery, and two gateways holding the same batch merge it once."""
    start = 1_763_700_000.0
    data = batches(start, hosts=2, points=50, step=7.0, seed=4)
    sequences = list(range(1, len(data) + 1))
    first = Store(pool)
    died = Rollups(pool)  # the rollups of a gateway killed before its merge
    written, waiting = await write_held(first, died, data, sequences)
    assert written.samples == len(data) * 2
    assert set(waiting) == set(sequences)
    assert await pool.fetchval("SELECT count(*) FROM samples_1m") == 0

    # the redelivered messages: nothing stored twice, every batch waits for its merge again
    second, other = Store(pool), Store(pool)
    held, also_held = Rollups(pool), Rollups(pool)
    again, _ = await write_held(second, held, data, sequences, redelivered=True)
    assert again.samples == 0
    assert again.duplicate_samples == len(data) * 2
    await write_held(other, also_held, data[:10], sequences[:10], redelivered=True)
    assert set(await held.flush()) == set(sequences)
    assert set(await also_held.flush()) == set(sequences[:10])  # merged already: no-op
    assert len(held) == len(also_held) == 0

    total = await pool.fetchval("SELECT count(*) FROM samples")
    assert total == len(data) * 2
    for table in ("samples_1m", "samples_1h"):
        assert await pool.fetchval(f"SELECT sum(count) FROM {table}") == total, table
    assert await pool.fetchval("SELECT count(*) FROM rollup_pending") == 0


async def test_maintenance_measures_age_by_the_gateways_clock(pool: asyncpg.Pool) -> None:
    """Retention runs as of the clock the gateway was given, not the machine's."""
    store = Store(pool)
    now = time.time()
    await store.write_metrics(
        [MetricBatch(host="recent", time=now - DAY, samples=[Sample(name="cpu.usage_percent", value=1.0)])],
        rollups=Rollups.round(),
    )
    maintenance = Maintenance(pool, RetentionConfig(), Rollups(pool), clock=lambda: now + 60 * DAY)
    async with pool.acquire() as conn:
        maintenance.edition = await detect_edition(conn)
    dropped = await maintenance.run_once()
    assert dropped["sample_batches"] >= 1  # 61 days old by the gateway's clock: past the raw 30 days
    assert await pool.fetchval("SELECT count(*) FROM samples") == 0


async def test_a_flush_of_ended_minutes_leaves_the_open_minutes_batches_waiting(pool: asyncpg.Pool) -> None:
    """``rollup_merge: minute``: a flush merges the batches whose minutes ended MERGE_GRACE ago,
    so a minute's 1-minute rows are written once; past ``max_waiting`` it merges them all."""
    minute = 1_763_700_000.0 - 1_763_700_000.0 % 60
    now = [minute + 30]
    store, rollups = Store(pool), Rollups(pool, clock=lambda: now[0], max_waiting=3)

    def one(when: float) -> MetricBatch:
        return MetricBatch(host="web-1", time=when, samples=[Sample(name="load", value=when % 60)])

    await write_held(store, rollups, [one(minute - 30), one(minute + 10)], [1, 2])
    assert await rollups.flush(ended_only=True) == {1: 1}  # the minute before: merged
    assert len(rollups) == 1
    now[0] = minute + 60 + MERGE_GRACE - 1
    assert await rollups.flush(ended_only=True) == {}
    now[0] = minute + 60 + MERGE_GRACE
    await write_held(store, rollups, [one(minute + 20), one(minute + 61)], [3, 4])
    assert await rollups.flush(ended_only=True) == {2: 1, 3: 1}  # the minute's two: one merge
    assert await pool.fetchval("SELECT count FROM samples_1m WHERE bucket = to_timestamp($1)", minute) == 2
    assert len(rollups) == 1

    # more than max_waiting waiting: all merged at once, their minute still going on
    await write_held(store, rollups, [one(minute + 62 + i) for i in range(3)], [5, 6, 7])
    assert await rollups.flush(ended_only=True) == {4: 1, 5: 1, 6: 1, 7: 1}
    assert len(rollups) == 0
    assert await pool.fetchval("SELECT sum(count) FROM samples_1m") == 7

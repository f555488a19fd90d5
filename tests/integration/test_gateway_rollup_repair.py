"""Orphaned batches: stored, their rollup merge never happened, and their message never comes
back (max_deliver used up, or the stream discarded it). Maintenance recomputes the rollups they
are missing from the raw samples, on TimescaleDB (Apache edition) and on plain PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import MetricBatch, Sample
from signalfire.gateway import rollup
from signalfire.gateway.config import GatewayConfig, RetentionConfig
from signalfire.gateway.migrate import migrate
from signalfire.gateway.rollup import PendingBatch, RollupRepair, Rollups, plan_repair, repair_rollups
from signalfire.gateway.store import Store
from tests.integration.gateway_support import eventually, gateway_config, running_gateway, write_held
from tests.support.metrics import samples, total

HOUR = 3600.0
Cells = dict[tuple[int, float], rollup.Cell]


def hour_start(ago: float) -> float:
    """The start of the hour ``ago`` seconds back (well inside every retention)."""
    when = time.time() - ago
    return when - when % HOUR


def metrics(host: str, when: float, seed: int, times: list[float] | None = None) -> MetricBatch:
    """Two samples per series kinds whose values cover the histogram's cases (zero, negative,
    large); with ``times``, one ``cpu`` sample per time instead of one time for all."""
    rng = random.Random(seed)
    samples = [
        Sample(name="net.errors_per_second", value=rng.choice([0.0, 1.5, -2.0, 1e6, 1e-12])),
        Sample(name="disk.used_percent", value=rng.uniform(0, 100), labels={"mount": "/"}),
    ]
    if times is None:
        samples.append(Sample(name="cpu.usage_percent", value=rng.uniform(0, 100)))
    else:
        samples += [Sample(name="cpu.usage_percent", value=rng.uniform(-5, 100), time=t) for t in times]
    return MetricBatch(host=host, time=when, samples=samples)


async def stored_cells(pool: asyncpg.Pool, table: str) -> Cells:
    rows = await pool.fetch(
        f"""
        SELECT series_id, extract(epoch FROM bucket)::float8 AS bucket, count, sum, min, max, last,
               extract(epoch FROM last_time)::float8 AS last_time, hist::text AS hist
        FROM {table}
        """
    )
    return {
        (r["series_id"], r["bucket"]): rollup.Cell(
            r["count"],
            r["sum"],
            r["min"],
            r["max"],
            r["last"],
            r["last_time"],
            msgspec.json.decode(r["hist"]),
        )
        for r in rows
    }


async def raw_cells(pool: asyncpg.Pool, width: int) -> Cells:
    """The rollups the raw samples make, computed the way ingest computes them."""
    rows = await pool.fetch("SELECT series_id, extract(epoch FROM time)::float8 AS t, value FROM samples")
    return rollup.aggregate(((r["series_id"], r["t"], r["value"]) for r in rows), width)


def canonical(hist: rollup.Hist) -> rollup.Hist:
    """A histogram's values are kept in no particular order (the order rows were merged in)."""
    return {**hist, "v": sorted(hist["v"])} if "v" in hist else hist


def assert_same(stored: Cells, expected: Cells) -> None:
    assert sorted(stored) == sorted(expected)
    for key, want in expected.items():
        got = stored[key]
        assert (got.count, got.min, got.max, got.last, canonical(got.hist)) == (
            want.count,
            want.min,
            want.max,
            want.last,
            canonical(want.hist),
        ), key
        assert got.sum == pytest.approx(want.sum, rel=1e-12, abs=1e-12), key
        assert got.last_time == pytest.approx(want.last_time, abs=1e-6), key


async def assert_rollups_match_raw(pool: asyncpg.Pool) -> None:
    for width, table in rollup.TABLES.items():
        expected = await raw_cells(pool, width)
        if width == 300:  # the 5-minute rows keep no histogram
            for cell in expected.values():
                cell.hist = {}
        assert_same(await stored_cells(pool, table), expected)


async def orphan(store: Store, batches: list[MetricBatch], sequences: list[int]) -> None:
    """Store ``batches`` as ingest does but never merge their rollups (the gateway died and the
    messages never came back), and make their pending rows two hours old."""
    _, waiting = await write_held(store, Rollups(store.pool), batches, sequences)
    assert set(waiting) == set(sequences)
    await store.pool.execute(
        "UPDATE rollup_pending SET created_at = created_at - interval '2 hours' WHERE seq = ANY($1)",
        sequences,
    )


async def merged(store: Store, batches: list[MetricBatch], sequences: list[int]) -> None:
    """Store ``batches`` and merge their rollups, as ingest does."""
    rollups = Rollups(store.pool)
    await write_held(store, rollups, batches, sequences)
    assert set(await rollups.flush()) == set(sequences)


async def repair(pool: asyncpg.Pool, retention: RetentionConfig | None = None) -> RollupRepair:
    """Repair the orphans older than an hour (the default ``rollup_repair_after``)."""
    async with pool.acquire() as conn:
        return await repair_rollups(conn, older_than=HOUR, retention=retention, now=time.time())


async def test_an_orphan_is_repaired_from_the_raw_samples_and_other_batches_count_once(
    pool: asyncpg.Pool,
) -> None:
    store = Store(pool)
    top = hour_start(3 * HOUR)  # an hour boundary, with batches on both sides of it
    # merged batches of two hosts every 7 s across the boundary: their rollups are in place
    merged_batches = [
        metrics(host, top - 200 + 7 * i, seed=i) for host in ("web-1", "web-2") for i in range(60)
    ]
    await merged(store, merged_batches, list(range(1, len(merged_batches) + 1)))
    before = await stored_cells(pool, "samples_1m")
    # orphans of web-1 in the same minutes: one time for all, and one time per sample reaching
    # from before the hour boundary to after it
    spread = [top - 95.25, top - 30.5, top + 20.125]
    orphans = [metrics("web-1", top - 3.5, seed=1000), metrics("web-1", top + 1.5, seed=1001, times=spread)]
    await orphan(store, orphans, [500, 501])

    pending = await pool.fetch("SELECT seq, host, t_min, t_max FROM rollup_pending ORDER BY seq")
    assert [tuple(r) for r in pending] == [
        (500, "web-1", top - 3.5, top - 3.5),
        (501, "web-1", top - 95.25, top + 20.125),
    ]
    with pytest.raises(AssertionError):  # the orphans' samples are missing from the rollups
        await assert_rollups_match_raw(pool)

    done = await repair(pool)
    assert done == RollupRepair(repaired=2, unrepairable=0, deferred=0)
    assert await pool.fetchval("SELECT count(*) FROM rollup_pending") == 0
    await assert_rollups_match_raw(pool)  # every batch exactly once, merged or repaired
    after = await stored_cells(pool, "samples_1m")
    untouched = {key for key in before if key[1] < top - 120 or key[1] >= top + 60}
    assert untouched and all(after[key] == before[key] for key in untouched)  # outside the orphans' minutes

    # (d) a second run finds nothing; repairing the same range again (as if a second orphan
    # covered it) rewrites exactly the same rows
    tables = {table: await stored_cells(pool, table) for table in rollup.TABLES.values()}
    assert await repair(pool) == RollupRepair()
    await pool.execute(
        "INSERT INTO rollup_pending (seq, host, t_min, t_max, created_at)"
        " VALUES (900, 'web-1', $1, $2, now() - interval '2 hours')",
        top - 95.25,
        top + 20.125,
    )
    assert await repair(pool) == RollupRepair(repaired=1)
    for table, cells in tables.items():
        assert await stored_cells(pool, table) == cells, table


async def test_repairs_run_by_several_gateways_at_once_repair_each_orphan_once(pool: asyncpg.Pool) -> None:
    # Every gateway's maintenance runs the repair on its schedule; with several gateways (and
    # their ingest workers merging meanwhile) they may run at the same moment.
    store = Store(pool)
    top = hour_start(3 * HOUR)
    await merged(store, [metrics("web-1", top + 7 * i, seed=i) for i in range(20)], list(range(1, 21)))
    orphans = [metrics(f"web-{h}", top + 30 + h, seed=100 + h) for h in range(1, 5)]
    await orphan(store, orphans, [101, 102, 103, 104])
    done = await asyncio.gather(*(repair(pool) for _ in range(3)))
    assert sum(d.repaired for d in done) == 4
    assert await pool.fetchval("SELECT count(*) FROM rollup_pending") == 0
    await assert_rollups_match_raw(pool)


async def test_an_orphan_waits_for_a_younger_batch_of_its_host_in_the_same_minutes(
    pool: asyncpg.Pool,
) -> None:
    store = Store(pool)
    top = hour_start(3 * HOUR)
    await orphan(store, [metrics("web-1", top + 10, seed=1), metrics("web-2", top + 10, seed=2)], [1, 2])
    # web-1's next batch, in the same minute, is stored and waits for its merge (still young)
    rollups = Rollups(pool)
    await write_held(store, rollups, [metrics("web-1", top + 17, seed=3)], [3])
    # a younger batch of web-1 in another minute holds nothing up
    await write_held(store, Rollups(pool), [metrics("web-1", top + 600, seed=4)], [4])

    assert await repair(pool) == RollupRepair(repaired=1, deferred=1)  # web-2's only
    assert await pool.fetchval("SELECT array_agg(seq ORDER BY seq) FROM rollup_pending") == [1, 3, 4]
    assert await repair(pool) == RollupRepair(deferred=1)

    assert await rollups.flush() == {3: 3}  # the younger batch's merge (its three new samples)
    assert await repair(pool) == RollupRepair(repaired=1)
    assert await pool.fetchval("SELECT array_agg(seq ORDER BY seq) FROM rollup_pending") == [4]
    # every sample counts once except those of batch 4, whose merge is still to come
    await pool.execute("DELETE FROM sample_batches WHERE time = to_timestamp($1)", top + 600)
    await assert_rollups_match_raw(pool)


async def test_orphans_that_cannot_be_repaired_are_dropped_and_counted(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    # a row written before migration 0005: no host, no range
    await pool.execute("INSERT INTO rollup_pending (seq, created_at) VALUES (7, now() - interval '2 hours')")
    # a batch whose raw samples are past retention.raw (dropped or about to be)
    old = time.time() - 40 * 86400
    await orphan(store, [metrics("web-1", old, seed=1)], [8])
    # a young legacy row holds up every repair: its host and minutes are unknown
    await pool.execute("INSERT INTO rollup_pending (seq) VALUES (9)")
    top = hour_start(3 * HOUR)
    await orphan(store, [metrics("web-2", top, seed=2)], [10])

    assert await repair(pool) == RollupRepair(unrepairable=2, deferred=1)
    assert await pool.fetchval("SELECT array_agg(seq ORDER BY seq) FROM rollup_pending") == [9, 10]
    assert await pool.fetchval("SELECT count(*) FROM samples_1m") == 0  # nothing recomputed
    await pool.execute("DELETE FROM rollup_pending WHERE seq = 9")
    assert await repair(pool) == RollupRepair(repaired=1)
    # with a shorter raw retention the same kind of orphan cannot be repaired either
    await orphan(store, [metrics("web-3", top, seed=3)], [11])
    short = RetentionConfig(raw=Duration(HOUR))
    assert await repair(pool, retention=short) == RollupRepair(unrepairable=1)


async def test_histogram_keys_in_sql_equal_those_in_python(pool: asyncpg.Pool) -> None:
    rng = random.Random(7)
    values = [
        0.0,
        -0.0,
        1.0,
        100.0,
        0.5,
        1e-8,
        1e-9,
        0.99e-9,
        1.02,
        2.0,
        1e300,
        5e-324,
        1.7976931348623157e308,
    ]
    for i in range(-1200, 1200):  # around every bucket bound from ~5e-11 to ~2e10
        bound = rollup.GAMMA**i
        values += [bound, math.nextafter(bound, 0), math.nextafter(bound, math.inf)]
    values += [10 ** rng.uniform(-9, 12) for _ in range(20_000)]
    values += [float(n) for n in range(-1000, 1001)] + [n / 100 for n in range(-10_000, 10_001)]
    values += [-v for v in values]
    keys = await pool.fetch(
        "SELECT sf_hist_key(v) AS k FROM unnest($1::float8[]) WITH ORDINALITY AS t(v, i) ORDER BY i", values
    )
    different = [
        (v, r["k"], rollup.hist_key(v))
        for v, r in zip(values, keys, strict=True)
        if r["k"] != rollup.hist_key(v)
    ]
    assert different == []


def test_the_plan_skips_only_overlapping_minutes_of_the_same_host() -> None:
    orphans = [
        PendingBatch(1, "a", 60.0, 61.0),  # minute 60
        PendingBatch(2, "a", 130.0, 250.0),  # minutes 120 to 240
        PendingBatch(3, "b", 60.0, 70.0),
        PendingBatch(4, None),
    ]
    younger = [PendingBatch(5, "a", 200.0, 200.0), PendingBatch(6, "c", 60.0, 60.0)]
    plan = plan_repair(orphans, younger)
    assert [b.seq for b in plan.repair] == [1, 3]
    assert [b.seq for b in plan.deferred] == [2]
    assert [b.seq for b, _ in plan.unrepairable] == [4]
    assert plan.minutes == {"a": [(60.0, 120.0)], "b": [(60.0, 120.0)]}


def test_the_repair_waits_longer_than_a_redelivery_can_take() -> None:
    assert float(GatewayConfig().rollup_repair_after) == HOUR
    with pytest.raises(ValueError, match="rollup_repair_after"):
        GatewayConfig(ack_wait=Duration(60), max_deliver=100)
    GatewayConfig(ack_wait=Duration(60), max_deliver=100, rollup_repair_after=Duration(2 * HOUR))


async def test_the_gateway_repairs_orphans_and_counts_them(
    nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with db.acquire() as conn:
            await migrate(conn)
        top = hour_start(3 * HOUR)
        await orphan(Store(db), [metrics("web-1", top + 5, seed=1)], [1])
        await db.execute(
            "INSERT INTO rollup_pending (seq, created_at) VALUES (2, now() - interval '2 hours')"
        )
        async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:

            async def counted() -> str:
                assert gw.counter("rollup_repairs_total") == 1
                assert gw.counter("rollup_orphans_unrepairable_total") == 1
                async with httpx.AsyncClient(base_url=gw.url) as client:
                    return (await client.get("/metrics")).text

            text = await eventually(counted)
        page = samples(text)
        assert total(page, "signalfire_gateway_rollup_repairs_total") == 1
        assert total(page, "signalfire_gateway_rollup_orphans_unrepairable_total") == 1
        assert await db.fetchval("SELECT count(*) FROM rollup_pending") == 0
        assert await db.fetchval("SELECT sum(count) FROM samples_1m") == 3
    finally:
        await db.close()

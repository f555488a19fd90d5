"""What the rollup folds cost PostgreSQL: an hour made from its 60 one-minute rows (the
reference, as before migration 0011) against twelve 5-minute folds and the hour made from
their rows (now), per series and minute, on the same rows in the same run.

Starts a private PostgreSQL + TimescaleDB (devstack; run ``deploy/dev/provision-postgres.sh``
first) and writes, server-side, one hour of 1-minute rows for ``--series`` series with
``--per-minute`` samples each (as ingest leaves them: the values kept in a row of at most 32,
else the bucket counts). Each way is run ``--repeat`` times in a transaction that is rolled
back, the statements exactly the gateway's (``signalfire.gateway.rollup.fold``), and timed by
the CPU of the PostgreSQL backend that runs them (its ``/proc`` times through psutil). The
1-hour rows of both ways are compared (count, sum, min, max, newest value, bucket counts).

    uv run python bench/fold.py [--series 20000] [--per-minute 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

import asyncpg
import msgspec
import psutil
from devstack import private_postgres

from signalfire.gateway import rollup
from signalfire.gateway.migrate import migrate
from signalfire.gateway.rollup import fold

HOUR = 1_763_700_000 - 1_763_700_000 % 3600  # long past

_SERIES = """
    INSERT INTO series (host, name, labels, unit)
    SELECT 'host-' || (s / 20), 'metric' || (s % 20), '{}', '' FROM generate_series(0, $1 - 1) s
"""

# Each series' 60 minutes of the hour, the values of minute m: (id * 7 + m * n + k) % 100.
_MINUTES = f"""
    INSERT INTO samples_1m (series_id, bucket, count, sum, min, max, last, last_time, hist)
    SELECT s.id, to_timestamp($1 + 60 * m), a.n, a.su, a.mi, a.ma, a.la, to_timestamp($1 + 60 * m + 59), h.hist
    FROM series s CROSS JOIN generate_series(0, 59) m
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, sum(v) AS su, min(v) AS mi, max(v) AS ma,
               (array_agg(v ORDER BY k DESC))[1] AS la,
               jsonb_build_object('v', jsonb_agg(v ORDER BY k)) AS kept,
               (SELECT jsonb_object_agg(key, c) FROM (
                    SELECT sf_hist_key(((s.id * 7 + m * $2 + j) % 100)::float8) AS key, count(*) AS c
                    FROM generate_series(0, $2 - 1) j GROUP BY 1) t) AS counted
        FROM (SELECT k, ((s.id * 7 + m * $2 + k) % 100)::float8 AS v FROM generate_series(0, $2 - 1) k) x
    ) a
    CROSS JOIN LATERAL (SELECT CASE WHEN a.n <= {rollup.EXACT_MAX} THEN a.kept ELSE a.counted END AS hist) h
"""

_HOURS = "SELECT series_id, count, sum, min, max, last, hist::text AS hist FROM samples_1h ORDER BY 1"


async def cpu_of(conn: asyncpg.Connection, pid: int, step: Callable[[], Awaitable[object]]) -> float:
    """CPU seconds of backend ``pid`` while ``step`` runs."""
    backend = psutil.Process(pid)
    before = backend.cpu_times()
    await step()
    after = backend.cpu_times()
    return (after.user - before.user) + (after.system - before.system)


Hours = dict[int, tuple[object, ...]]


def hours_of(rows: list[asyncpg.Record]) -> Hours:
    return {
        r["series_id"]: (
            r["count"], round(r["sum"], 6), r["min"], r["max"], r["last"],
            rollup.counts(msgspec.json.decode(r["hist"])),
        )
        for r in rows
    }  # fmt: skip


async def from_minutes(conn: asyncpg.Connection, pid: int) -> tuple[dict[str, float], Hours]:
    """The hour from its 1-minute rows (the reference), rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(fold.PLANNER)
        cpu = await cpu_of(conn, pid, lambda: conn.execute(fold.fold_sql(fold.HOURS, "samples_1m"), HOUR))
        return {"hour from 1-minute rows": cpu}, hours_of(await conn.fetch(_HOURS))
    finally:
        await tx.rollback()


async def from_five_minutes(conn: asyncpg.Connection, pid: int) -> tuple[dict[str, float], Hours]:
    """Twelve 5-minute folds, then the hour from their rows (now), rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(fold.PLANNER)

        async def fives() -> None:
            for i in range(12):
                await conn.execute(fold.fold_sql(fold.FIVE_MINUTES), HOUR + 300 * i)

        five = await cpu_of(conn, pid, fives)
        hour = await cpu_of(conn, pid, lambda: conn.execute(fold.fold_sql(fold.HOURS, "samples_5m"), HOUR))
        costs = {"twelve 5-minute folds": five, "hour from 5-minute rows": hour}
        return costs, hours_of(await conn.fetch(_HOURS))
    finally:
        await tx.rollback()


async def main(args: argparse.Namespace) -> None:
    with private_postgres() as postgres:
        url = postgres.create_database("fold")
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            await conn.execute(_SERIES, args.series)
            print(f"loading {args.series:,} series x 60 minutes x {args.per_minute} samples", flush=True)
            await conn.execute(_MINUTES, HOUR, args.per_minute)
            await conn.execute("VACUUM ANALYZE samples_1m")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            costs: dict[str, list[float]] = {}
            results: list[Hours] = []
            for _ in range(args.repeat):
                for way in (from_minutes, from_five_minutes):
                    spent, hours = await way(conn, pid)
                    results.append(hours)
                    for name, cpu in spent.items():
                        costs.setdefault(name, []).append(cpu)
        finally:
            await conn.close()
    assert all(r == results[0] for r in results[1:]), "the two ways made different 1-hour rows"
    assert len(results[0]) == args.series
    per = args.series * 60 / 1e6  # series-minutes, in millions: seconds / per = µs per series-minute
    medians = {name: statistics.median(cpu) for name, cpu in costs.items()}
    for name, cpu in medians.items():
        print(f"{name:<28} {cpu:7.2f} CPU s   {cpu / per:6.1f} µs per series and minute")
    before = medians["hour from 1-minute rows"]
    now = medians["twelve 5-minute folds"] + medians["hour from 5-minute rows"]
    print(f"{'both tiers now':<28} {now:7.2f} CPU s   {now / per:6.1f} µs per series and minute")
    print(f"{'now / before':<28} {now / before:7.2f} x   (1-hour rows equal: {len(results[0]):,} series)")
    if not math.isfinite(now / before):
        raise SystemExit("no CPU time measured")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20_000)
    parser.add_argument("--per-minute", type=int, default=12, help="samples per series and minute")
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))

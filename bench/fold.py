"""What the rollup folds cost PostgreSQL per series and minute: the hour's fold (its 1-hour
rows, histograms included, from its sixty 1-minute rows: the reference) and the twelve
5-minute folds of the same hour (totals only, migration 0011), on the same rows in the same run.

Starts a private PostgreSQL + TimescaleDB (devstack; run ``deploy/dev/provision-postgres.sh``
first) and writes, server-side, one hour of 1-minute rows for ``--series`` series with
``--per-minute`` samples each (as ingest leaves them: the values kept in a row of at most 32,
else the bucket counts). Each fold is run ``--repeat`` times in a transaction that is rolled
back, the statements exactly the gateway's (``signalfire.gateway.rollup.fold``), and timed by
the CPU of the PostgreSQL backend that runs them (its ``/proc`` times through psutil). The
5-minute rows are checked against the 1-hour rows (their counts, sums, minima, maxima and
newest values add up to the hour's).

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
    SELECT s.id, to_timestamp($1 + 60 * m), a.n, a.su, a.mi, a.ma, a.la,
           to_timestamp($1 + 60 * m + 59), h.hist
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

# Per series: the hour's totals, from the 1-hour rows and from the 5-minute rows.
_CHECK = """
    SELECT h.series_id, h.count, round(h.sum::numeric, 6) AS sum, h.min, h.max, h.last,
           f.count AS f_count, round(f.sum::numeric, 6) AS f_sum, f.min AS f_min, f.max AS f_max,
           f.last AS f_last
    FROM samples_1h h JOIN (
        SELECT series_id, sum(count) AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max,
               (array_agg(last ORDER BY last_time DESC))[1] AS last
        FROM samples_5m GROUP BY 1) f USING (series_id)
"""


async def cpu_of(conn: asyncpg.Connection, pid: int, step: Callable[[], Awaitable[object]]) -> float:
    """CPU seconds of backend ``pid`` while ``step`` runs."""
    backend = psutil.Process(pid)
    before = backend.cpu_times()
    await step()
    after = backend.cpu_times()
    return float((after.user - before.user) + (after.system - before.system))


async def both(conn: asyncpg.Connection, pid: int) -> dict[str, float]:
    """The hour's fold and its twelve 5-minute folds, checked against each other, rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(fold.PLANNER)
        hour = await cpu_of(conn, pid, lambda: conn.execute(fold.fold_sql(fold.HOURS), HOUR))

        async def fives() -> None:
            for i in range(12):
                await conn.execute(fold.fold_sql(fold.FIVE_MINUTES), HOUR + 300 * i)

        five = await cpu_of(conn, pid, fives)
        rows = await conn.fetch(_CHECK)
        assert rows and all(
            (r["count"], r["sum"], r["min"], r["max"], r["last"])
            == (r["f_count"], r["f_sum"], r["f_min"], r["f_max"], r["f_last"])
            for r in rows
        ), "the 5-minute rows do not add up to the hour's"
        return {"hour (histograms)": hour, "twelve 5-minute folds": five, "series": float(len(rows))}
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
            for _ in range(args.repeat):
                for name, cpu in (await both(conn, pid)).items():
                    costs.setdefault(name, []).append(cpu)
        finally:
            await conn.close()
    assert costs.pop("series") == [float(args.series)] * args.repeat
    per = args.series * 60 / 1e6  # series-minutes, in millions: seconds / per = µs per series-minute
    medians = {name: statistics.median(cpu) for name, cpu in costs.items()}
    for name, cpu in medians.items():
        print(f"{name:<24} {cpu:7.2f} CPU s   {cpu / per:6.1f} µs per series and minute")
    ratio = medians["twelve 5-minute folds"] / medians["hour (histograms)"]
    print(f"{'5-minute folds / hour':<24} {ratio:7.2f} x   (adding up to the hour's, {args.series:,} series)")
    if not math.isfinite(ratio):
        raise SystemExit("no CPU time measured")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20_000)
    parser.add_argument("--per-minute", type=int, default=12, help="samples per series and minute")
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))

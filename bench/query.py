"""Gateway query latency on a loaded database, through a real ``signalfire gateway`` over HTTP.

Starts a private nats-server and PostgreSQL + TimescaleDB (devstack; run
``deploy/dev/provision-postgres.sh`` first), creates ``hosts x series`` series and loads,
entirely server-side (``INSERT … SELECT generate_series``, no rows cross the wire):

* the 1-hour rollups for ``--days`` days and the 1-minute and 5-minute rollups for
  ``--rollup-days`` days (the folds' horizons where a gateway would have left them), with
  exactly the content the gateway's ingest would have written for raw samples every
  ``--interval`` seconds (count, sum, min, max, newest value and percentile histogram; the
  per-bucket aggregates are computed once in Python with :mod:`signalfire.gateway.rollup` and
  joined in, since every bucket's values follow from the value formula);
* the raw samples of the last ``--raw-hours`` hours, a row per host and time in
  ``sample_batches`` as the gateway stores agents' batches (``--raw-rows``: a row per sample in
  ``sample_rows``, as before migration 0010 and for batches with per-sample times).

A sample of series ``id`` at unix second ``t`` has the value ``(id * 7 + t / 10) % 100``.
Then a real gateway process serves the data and the bench times over HTTP on 127.0.0.1, each
``--repeat`` times (median and p95):

* one host's 20 series over 24 h (``/api/v1/query``, ``step=auto`` → 5 min steps from the
  5-minute rollups);
* the fleet-wide CPU overview over 24 h (every host's ``cpu.usage_percent``), the same at
  4-minute steps (which the 5-minute rows do not divide: from the 1-minute rollups, five
  times the rows), each beside the time PostgreSQL takes to count the rows it reads; and the
  5-minute query asked in turn of that gateway (its series dealt among ``query_parallelism`` 2
  statements) and of a second one started with ``SF_QUERY_PARALLELISM=1`` (one statement);
* the latest value of every series (``/api/v1/latest``).

The reference, in the same run, is a ``SELECT 1`` round trip through asyncpg and a
``GET /healthz`` round trip through the same HTTP client; the ratios are printed.

The issue's size is 200 hosts x 100 series x 7 days at 10 s (1.2 billion raw rows); the
defaults load its 1-hour rollups in full, the 1-minute rollups of the last 2 days (what
every query up to ~2 days reads) and the last 2 hours of raw samples: the full 1-minute
rollups would be 200 M rows (~50 GB) and the full raw set 1.2 B rows.

    uv run python bench/query.py [--hosts 200] [--series 100] [--days 7] [--rollup-days 2]
                                 [--raw-hours 2] [--raw-rows] [--repeat 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

import asyncpg
import httpx
import msgspec
from devstack import ServiceProcess, free_port, private_servers, start_gateway

from signalfire.gateway import rollup
from signalfire.gateway.auth import create_token
from signalfire.gateway.migrate import migrate

#: Distinct first values of a bucket: the value formula cycles with period 100.
_CYCLE = 100


def metric_name(index: int) -> str:
    return "cpu.usage_percent" if index == 0 else f"metric{index}.value"


def bucket_table(width: int, interval: int) -> list[tuple[Any, ...]]:
    """For each possible first value ``b`` of a ``width``-second bucket, the rollup cell the
    gateway computes from that bucket's samples ``(b + k) % 100``, as a row
    ``(b, count, sum, min, max, last, last offset, hist json)``."""
    rows = []
    per_bucket = width // interval
    for base in range(_CYCLE):
        cell = rollup.Cell()
        for k in range(per_bucket):
            cell.add(float(k * interval), float((base + k) % _CYCLE))
        hist = rollup.upsert_args({(0, 0.0): cell})[8][0] if width != 300 else "{}"  # 5 min: totals
        rows.append((base, cell.count, cell.sum, cell.min, cell.max, cell.last, cell.last_time, hist))
    return rows


async def create_series(conn: asyncpg.Connection, hosts: int, series: int, end: int, interval: int) -> None:
    await conn.execute(
        """
        INSERT INTO series (host, name, labels, unit)
        SELECT 'host-' || h, CASE WHEN s = 0 THEN 'cpu.usage_percent' ELSE 'metric' || s || '.value' END,
               '{}', '' FROM generate_series(0, $1 - 1) h, generate_series(0, $2 - 1) s
        ORDER BY h, s
        """,
        hosts,
        series,
    )
    await conn.execute(
        """
        INSERT INTO hosts (host, first_seen, last_seen, status, status_at, interval)
        SELECT DISTINCT host, to_timestamp($1), to_timestamp($2), 'online', to_timestamp($1), $3::float8
        FROM series
        """,
        end - 7 * 86400,
        end - interval,
        float(interval),
    )
    for width in rollup.TABLES:
        name = cells_table(width)
        await conn.execute(
            f"""
            CREATE TABLE {name} (base int PRIMARY KEY, count bigint, sum float8, min float8,
                                 max float8, last float8, last_offset float8, hist jsonb)
            """
        )
        await conn.executemany(
            f"INSERT INTO {name} VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
            bucket_table(width, interval),
        )


def cells_table(width: int) -> str:
    """The table of :func:`bucket_table`'s rows for ``width``-second buckets."""
    return rollup.TABLES[width].replace("samples_", "cells_")


def rollup_sql(width: int) -> str:
    """The full buckets of ``width`` seconds in [$1, $2) of every series, time-major like the
    gateway's own writes (each bucket's rows of all series together)."""
    return f"""
        INSERT INTO {rollup.TABLES[width]} (series_id, bucket, count, sum, min, max, last, last_time, hist)
        SELECT s.id, to_timestamp(b), c.count, c.sum, c.min, c.max, c.last,
               to_timestamp(b + c.last_offset), c.hist
        FROM generate_series($1::bigint, $2::bigint - {width}, {width}) b
        CROSS JOIN LATERAL (SELECT id FROM series WHERE b IS NOT NULL ORDER BY id) s
        JOIN {cells_table(width)} c ON c.base = (s.id * 7 + b / $3) % {_CYCLE}
    """


_RAW_SQL = f"""
    INSERT INTO sample_rows (time, series_id, value)
    SELECT to_timestamp(t), s.id, ((s.id * 7 + t / $3) % {_CYCLE})::float8
    FROM generate_series($1::bigint, $2::bigint - $3, $3) t
    CROSS JOIN LATERAL (SELECT id FROM series WHERE t IS NOT NULL ORDER BY id) s
"""

#: Each host's series as one batch layout (its series in id order), as the gateway makes them
#: for an agent's batches (migration 0010; the digest only needs to be unique here).
_LAYOUTS_SQL = """
    WITH made AS (
        INSERT INTO layouts (digest, series_ids)
        SELECT decode(md5(host), 'hex'), array_agg(id ORDER BY id) FROM series GROUP BY host
        RETURNING id, series_ids
    )
    INSERT INTO layout_series (series_id, layout_id, position)
    SELECT u.series_id, made.id, u.position
    FROM made, unnest(made.series_ids) WITH ORDINALITY AS u(series_id, position)
"""

#: The raw samples as the gateway stores agents' batches: a row per host and time.
_RAW_BATCHES_SQL = f"""
    INSERT INTO sample_batches (time, layout_id, vals)
    SELECT to_timestamp(t), l.id,
           (SELECT array_agg(((u.id * 7 + t / $3) % {_CYCLE})::float8 ORDER BY u.position)
            FROM unnest(l.series_ids) WITH ORDINALITY AS u(id, position))
    FROM generate_series($1::bigint, $2::bigint - $3, $3) t CROSS JOIN layouts l
"""

#: Where the gateway's folds (signalfire.gateway.rollup.fold) would have left their horizons:
#: every whole hour and 5 minutes loaded is folded, the 5-minute rows begin with the 1-minute
#: ones. (Left at -infinity, the gateway started on the dataset folds every loaded hour again
#: from its minutes, tens of CPU-seconds an hour of 20,000 series, while the queries are timed.)
_HORIZON_SQL = """
    UPDATE rollup_fold SET horizon = to_timestamp($1), horizon_5m = to_timestamp($2),
                           since_5m = to_timestamp($3)
"""


async def in_parallel(
    pool: asyncpg.Pool, label: str, span: tuple[int, int], piece: int, sql: str, *, args: argparse.Namespace
) -> None:
    """``sql`` over [start, stop) in time slices of ``piece`` seconds, oldest first, on
    ``--workers`` connections."""
    began = time.monotonic()
    start, stop = span
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for a in range(start, stop, piece):
        queue.put_nowait((a, min(a + piece, stop)))

    async def worker() -> None:
        async with pool.acquire() as conn:
            while not queue.empty():
                a, b = queue.get_nowait()
                await conn.execute(sql, a, b, args.interval)

    await asyncio.gather(*(worker() for _ in range(args.workers)))
    print(f"  {label}: {time.monotonic() - began:.0f} s", flush=True)


async def load(pool: asyncpg.Pool, args: argparse.Namespace, end: int) -> None:
    """Everything the bench reads, for data ending at ``end`` (a whole minute)."""
    async with pool.acquire() as conn:
        await create_series(conn, args.hosts, args.series, end, args.interval)
    n = args.hosts * args.series
    hour_end = end - end % 3600
    hour_start = hour_end - int(args.days * 86400) // 3600 * 3600
    minute_start = end - int(args.rollup_days * 86400) // 60 * 60
    raw_start = end - int(args.raw_hours * 3600) // args.interval * args.interval
    five_start, five_end = minute_start + (-minute_start) % 300, end - end % 300
    # (width, its span, the time slice a statement loads)
    tiers = (
        (3600, (hour_start, hour_end), 86400),
        (60, (minute_start, end), 3600),
        (300, (five_start, five_end), 3600),
    )
    for width, (start, stop), piece in tiers:
        label = f"{width // 60} min rollups" if width < 3600 else "1 h rollups"
        rows = n * (stop - start) // width
        await in_parallel(pool, f"{label}, {rows:,} rows", (start, stop), piece, rollup_sql(width), args=args)
    # the current hour and 5 minutes are read from their minutes
    await pool.execute(_HORIZON_SQL, hour_end, five_end, five_start)
    if raw_start < end:
        samples_raw = n * (end - raw_start) // args.interval
        if args.raw_rows:
            label, sql = f"raw samples, {samples_raw:,} rows", _RAW_SQL
        else:
            await pool.execute(_LAYOUTS_SQL)
            batches = args.hosts * (end - raw_start) // args.interval
            label, sql = f"raw samples, {samples_raw:,} in {batches:,} batch rows", _RAW_BATCHES_SQL
        await in_parallel(pool, label, (raw_start, end), 600, sql, args=args)
        await verify(pool, end, raw_start)
    began = time.monotonic()
    await pool.execute("VACUUM ANALYZE")
    # The load's dirty buffers written now, not by a checkpoint while the queries are timed
    # (with a quarter of the machine's memory as shared buffers, gigabytes of them).
    await pool.execute("CHECKPOINT")
    print(f"  vacuum analyze and checkpoint: {time.monotonic() - began:.0f} s", flush=True)


async def verify(pool: asyncpg.Pool, end: int, raw_start: int) -> None:
    """The loaded rollups equal what the gateway's own aggregation makes of the raw samples
    (checked on a few series over the raw window)."""
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM series ORDER BY id LIMIT 3")]
    rows = await pool.fetch(
        """
        SELECT series_id, extract(epoch FROM time)::float8 AS t, value FROM samples
        WHERE series_id = ANY($1::bigint[]) AND time >= to_timestamp($2)
        """,
        ids,
        raw_start,
    )
    raw = [(r["series_id"], r["t"], r["value"]) for r in rows]
    for width, table in rollup.TABLES.items():
        cells = rollup.aggregate(raw, width)
        stored = await pool.fetch(
            f"""
            SELECT series_id, extract(epoch FROM bucket)::float8 AS b, count, sum, min, max, last,
                   extract(epoch FROM last_time)::float8 AS last_time, hist::text AS hist
            FROM {table} WHERE series_id = ANY($1::bigint[]) AND bucket >= to_timestamp($2)
            """,
            ids,
            raw_start - raw_start % width + (width if raw_start % width else 0),
        )
        assert stored, f"no {table} rows to check"
        for row in stored:
            cell = cells[(row["series_id"], row["b"])]
            got = (row["count"], row["sum"], row["min"], row["max"], row["last"], row["last_time"])
            assert got == (cell.count, cell.sum, cell.min, cell.max, cell.last, cell.last_time), (table, row)
            # the same values (kept in no particular order) or the same bucket counts; none in
            # the 5-minute rows
            want = rollup.counts(cell.hist) if width != 300 else {}
            assert rollup.counts(msgspec.json.decode(row["hist"])) == want, (table, row)
    print(f"  rollups equal the gateway's aggregation of the raw samples ({len(raw):,} checked)")


async def timed(
    label: str,
    target: float | None,
    repeat: int,
    ref: float,
    call: Callable[[], Awaitable[httpx.Response]],
    *,
    check: Callable[[Any], None] | None = None,
) -> float:
    """Median (returned) and p95 of ``repeat`` calls (the whole answer received; the client's own JSON
    decoding is not timed: ``check`` looks at the warm-up call's answer)."""
    first = await call()  # warm-up
    assert first.status_code == 200, first.text
    if check is not None:
        check(first.json())
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    median = statistics.median(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    goal = f"  target ≤ {target:.0f} ms {'MET' if median <= target else 'NOT MET'}" if target else ""
    print(f"{label:<44} median {median:7.2f} ms  p95 {p95:7.2f} ms  ({median / ref:6.0f} x ref){goal}")
    return median


#: For comparison: the unique index as it was before migration 0004 made it cover the rollup
#: columns the queries read (without them, a series' range is one heap page per bucket: the
#: gateway writes rollups time-major, a bucket's rows of all series together).
_PLAIN_INDEX = """
    CREATE UNIQUE INDEX samples_1m_series_bucket_plain ON samples_1m (series_id, bucket DESC);
    DROP INDEX samples_1m_series_bucket_covering;
"""


async def read_floor(conn: asyncpg.Connection, end: int, table: str, repeat: int = 9) -> float:
    """Median milliseconds of counting the rows of ``table`` the fleet CPU query aggregates."""
    ids = await conn.fetchval("SELECT array_agg(id) FROM series WHERE name = 'cpu.usage_percent'")
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE series_id = ANY($1::bigint[])"
            " AND bucket >= to_timestamp($2) AND bucket <= to_timestamp($3)",
            ids,
            end - 86400,
            end,
        )
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def measure(
    url: str, db_url: str, token: str, args: argparse.Namespace, end: int, *, one_statement_url: str = ""
) -> None:
    ref_conn = await asyncpg.connect(db_url)
    headers = {"Authorization": f"Bearer {token}"}
    # One connection per request: on a kept-alive connection each answer currently stalls
    # ~40 ms (the gateway's listening socket is created without IPPROTO_TCP, so asyncio does
    # not set TCP_NODELAY on its connections: Nagle meets the client's delayed ACK). The
    # first request of a connection does not stall; the keep-alive figure is printed too.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=fresh) as client,
        httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as kept,
    ):

        def get(path: str, params: dict[str, Any]) -> Callable[[], Awaitable[httpx.Response]]:
            return lambda: client.get(path, params=params)

        ref_times = []
        for _ in range(max(args.repeat, 100)):
            began = time.perf_counter()
            await ref_conn.fetchval("SELECT 1")
            ref_times.append((time.perf_counter() - began) * 1000)
        ref = statistics.median(ref_times)
        print(f"{'reference SELECT 1 (asyncpg)':<44} median {ref:7.2f} ms")
        await timed(
            "GET /healthz, new connection",
            None,
            args.repeat,
            ref,
            get("/healthz", {}),
        )
        await timed(
            "GET /healthz, kept-alive connection", None, args.repeat, ref, lambda: kept.get("/healthz")
        )
        window = {"from": str(end - 86400), "to": str(end)}
        metrics = [metric_name(s) for s in range(min(20, args.series))]

        def one_host_ok(body: Any) -> None:
            assert body["source"] == "5m" and len(body["series"]) == len(metrics), body["source"]
            assert all(len(s["points"]) >= 288 for s in body["series"])

        def fleet_ok(body: Any) -> None:
            assert len(body["series"]) == args.hosts
            assert all(len(s["points"]) >= 288 for s in body["series"])

        def minutes_ok(body: Any) -> None:
            assert body["source"] == "1m" and len(body["series"]) == args.hosts, body["source"]

        def latest_ok(body: Any) -> None:
            assert len(body["samples"]) == args.hosts * args.series, len(body["samples"])

        await timed(
            f"one host, {len(metrics)} series, 24 h",
            50,
            args.repeat,
            ref,
            get("/api/v1/query", {"host": "host-0", "metric": metrics, **window}),
            check=one_host_ok,
        )
        # The floor of the fleet query in the same run: PostgreSQL counting the rows it reads
        # (every host's CPU rollup rows of the 24 h, through the same index), no aggregation.
        floor = await read_floor(ref_conn, end, "samples_5m")
        print(f"{'  its rows read alone (count, in PostgreSQL)':<44} median {floor:7.2f} ms")
        fleet = await timed(
            f"fleet CPU overview, {args.hosts} hosts, 24 h",
            200,
            args.repeat,
            ref,
            get("/api/v1/query", {"metric": "cpu.usage_percent", **window}),
            check=fleet_ok,
        )
        print(f"{'  fleet query / its rows read alone':<44} {fleet / floor:7.2f} x")
        # The same at 4-minute steps, which the 5-minute rows do not divide: read from the
        # 1-minute rows (five times as many), as every step was before migration 0011.
        minutes = await timed(
            "  the same at 4 min steps (1-minute rows)",
            None,
            args.repeat,
            ref,
            get("/api/v1/query", {"metric": "cpu.usage_percent", "step": "4m", **window}),
            check=minutes_ok,
        )
        floor_1m = await read_floor(ref_conn, end, "samples_1m")
        print(f"{'    its rows read alone (count, in PostgreSQL)':<44} median {floor_1m:7.2f} ms")
        print(f"{'  4 min steps / 5 min steps':<44} {minutes / fleet:7.2f} x")
        if one_statement_url:
            # The same query from a gateway with query_parallelism 1 (its series in one
            # statement), the two asked in turn so that both see the machine alike.
            fleet_params = {"metric": "cpu.usage_percent", **window}
            async with httpx.AsyncClient(
                base_url=one_statement_url, headers=headers, timeout=60, limits=fresh
            ) as single:
                shared: list[float] = []
                alone: list[float] = []
                for _ in range(args.repeat):
                    for who, times in ((client, shared), (single, alone)):
                        began = time.perf_counter()
                        answer = await who.get("/api/v1/query", params=fleet_params)
                        assert answer.status_code == 200, answer.text
                        times.append((time.perf_counter() - began) * 1000)
            a, b = statistics.median(shared), statistics.median(alone)
            print(f"{'  in turn: dealt among 2 statements':<44} median {a:7.2f} ms")
            print(f"{'  in turn: one statement (parallelism 1)':<44} median {b:7.2f} ms  ({b / a:.2f} x)")
        await timed(
            f"latest values, {args.hosts * args.series:,} series",
            10,
            args.repeat,
            ref,
            get("/api/v1/latest", {}),
            check=latest_ok,
        )
    await ref_conn.close()


async def main(args: argparse.Namespace) -> None:
    # Query latency does not depend on crash safety; loading is much faster without fsync.
    with tempfile.TemporaryDirectory() as tmp, private_servers(Path(tmp)) as (nats, postgres):
        gateway: ServiceProcess | None = None
        single: ServiceProcess | None = None
        try:
            db_url = postgres.create_database("signalfire")
            pool = await asyncpg.create_pool(db_url, min_size=1, max_size=args.workers)
            async with pool.acquire() as conn:
                await migrate(conn)
            end = int(time.time()) // 60 * 60
            shape = (
                f"{args.hosts} hosts x {args.series} series at {args.interval} s: "
                f"1 h rollups {args.days:g} d, 1 min rollups {args.rollup_days:g} d, raw {args.raw_hours:g} h"
            )
            print(f"loading {shape}", flush=True)
            began = time.monotonic()
            await load(pool, args, end)
            sizes = await pool.fetch(
                """
                SELECT t, pg_size_pretty(coalesce(hypertable_size(t::regclass),
                                                  pg_total_relation_size(t::regclass))) AS size
                FROM unnest(ARRAY['sample_rows', 'sample_batches', 'samples_1m', 'samples_5m',
                                  'samples_1h']) t
                """
            )
            print(
                f"loaded in {time.monotonic() - began:.0f} s; "
                + ", ".join(f"{r['t']} {r['size']}" for r in sizes)
            )
            await pool.close()
            port = free_port()
            gateway = start_gateway(
                nats.url,
                db_url,
                port,
                log_dir=Path(tmp),
                token_file=Path(tmp) / "admin-token",
                extra_env={"SF_RATE_LIMIT": "0", "SF_LOG_LEVEL": "warning"},
                timeout=120,
            )
            single_port = free_port()
            single = start_gateway(
                nats.url,
                db_url,
                single_port,
                log_dir=Path(tmp) / "single",
                token_file=Path(tmp) / "admin-token",
                extra_env={"SF_RATE_LIMIT": "0", "SF_LOG_LEVEL": "warning", "SF_QUERY_PARALLELISM": "1"},
                timeout=120,
            )
            conn = await asyncpg.connect(db_url)
            token = await create_token(conn, "bench", "viewer")
            await conn.close()
            await measure(
                f"http://127.0.0.1:{port}",
                db_url,
                token,
                args,
                end,
                one_statement_url=f"http://127.0.0.1:{single_port}",
            )
            if args.plain_index:
                began = time.monotonic()
                conn = await asyncpg.connect(db_url)
                await conn.execute(_PLAIN_INDEX)
                await conn.execute("VACUUM ANALYZE samples_1m")
                await conn.close()
                took = time.monotonic() - began
                print(f"plain (non-covering) index on samples_1m built in {took:.0f} s; again:")
                await measure(f"http://127.0.0.1:{port}", db_url, token, args, end)
        finally:
            for process in (gateway, single):
                if process is not None:
                    process.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--series", type=int, default=100, help="series per host")
    parser.add_argument("--interval", type=int, default=10, help="seconds between raw samples")
    parser.add_argument("--days", type=float, default=7.0, help="span of the 1-hour rollups")
    parser.add_argument("--rollup-days", type=float, default=2.0, help="span of the 1-minute rollups")
    parser.add_argument("--raw-hours", type=float, default=2.0, help="span of the raw samples")
    parser.add_argument(
        "--raw-rows",
        action="store_true",
        help="load the raw samples a row each (sample_rows) rather than a row per host and time",
    )
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2, help="loading connections")
    parser.add_argument(
        "--plain-index",
        action="store_true",
        help="then swap samples_1m's covering index for a plain one (pre-0004) and measure again",
    )
    asyncio.run(main(parser.parse_args()))

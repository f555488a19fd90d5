"""Gateway query latency on a loaded database, through the real API application.

Loads ``hosts x series`` series with samples every ``interval`` seconds over ``days`` days
(server-side ``generate_series``), builds the 1-minute and 1-hour rollups from them, then
times, through the gateway's ASGI app (no network):

* one host's 20 series over 24 h (``/api/v1/query``, automatic resolution);
* the fleet-wide CPU overview over 24 h (every host's ``cpu.usage_percent``);
* the latest value of every series (``/api/v1/latest``).

The reference is ``SELECT 1`` through the same pool. The issue's full size is 200 hosts x
100 series x 7 days at 10 s (1.2 billion rows); ``--scale`` multiplies the days (0.05 ≈ 8 h
of raw data per series; rollups are always loaded for the whole span).

    uv run python bench/query.py [--scale 0.02] [--hosts 200] [--series 100] [--repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

import asyncpg
import httpx
from devstack import PostgresServer, temp_pg_dir

from signalfire.bus import NatsConfig
from signalfire.gateway.api import create_app
from signalfire.gateway.auth import create_token
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.migrate import migrate
from signalfire.gateway.store import LatestValues, Store
from signalfire.telemetry import Registry


async def load(pool: asyncpg.Pool, hosts: int, series: int, days: float, interval: int) -> int:
    now = time.time()
    now -= now % 3600
    span = days * 86400
    async with pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO series (host, name, labels, unit)
            SELECT 'host-' || h, CASE WHEN s = 0 THEN 'cpu.usage_percent' ELSE 'metric' || s || '.value' END,
                   '{}', '' FROM generate_series(0, $1 - 1) h, generate_series(0, $2 - 1) s
            """,
            hosts,
            series,
        )
        await conn.execute(
            "INSERT INTO hosts (host, first_seen, last_seen) SELECT DISTINCT host, now(), now() FROM series"
        )
        await conn.execute(
            """
            INSERT INTO samples (time, series_id, value)
            SELECT to_timestamp(t), id, (id * 7 + t / 10) % 100
            FROM series, generate_series($1::bigint, $2::bigint, $3::bigint) t
            """,
            int(now - span),
            int(now),
            interval,
        )
        for table, width in (("samples_1m", 60), ("samples_1h", 3600)):
            await conn.execute(
                f"""
                INSERT INTO {table} (series_id, bucket, count, sum, min, max, last, last_time, hist)
                SELECT series_id, to_timestamp(floor(extract(epoch FROM time) / {width}) * {width}),
                       count(*), sum(value), min(value), max(value),
                       (array_agg(value ORDER BY time DESC))[1], max(time), '{{}}'
                FROM samples GROUP BY 1, 2
                """
            )
        await conn.execute("ANALYZE")
        return int(await conn.fetchval("SELECT count(*) FROM samples"))


async def timed(client: httpx.AsyncClient, path: str, params: dict[str, Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = await client.get(path, params=params)
        times.append(time.perf_counter() - began)
        assert response.status_code == 200, response.text
    return statistics.median(times) * 1000


async def main(args: argparse.Namespace) -> None:
    postgres = PostgresServer(temp_pg_dir(), durable=True).start()
    try:
        url = postgres.create_database("bench")
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
        async with pool.acquire() as conn:
            await migrate(conn)
        days = 7 * args.scale
        began = time.monotonic()
        rows = await load(pool, args.hosts, args.series, days, args.interval)
        shape = f"{args.hosts} hosts x {args.series} series x {days:.2f} d at {args.interval} s"
        print(f"loaded {rows:,} samples ({shape}) in {time.monotonic() - began:.0f} s")
        latest = LatestValues()
        await Store(pool).load_latest(latest, within=86400 * 400)
        token = await create_token(pool, "bench", "viewer")
        config = GatewayConfig(nats=NatsConfig(), database_url=url, rate_limit=0)
        app = create_app(config, pool=pool, registry=Registry("bench"), latest=latest)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as client:
            ref = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                await pool.fetchval("SELECT 1")
                ref.append(time.perf_counter() - t0)
            print(f"reference SELECT 1: {statistics.median(ref) * 1000:.2f} ms")
            metrics = [f"metric{s}.value" for s in range(1, 20)] + ["cpu.usage_percent"]
            one_host = await timed(
                client,
                "/api/v1/query",
                {"host": "host-0", "metric": metrics, "from": "-24h"},
                args.repeat,
            )
            fleet = await timed(
                client, "/api/v1/query", {"metric": "cpu.usage_percent", "from": "-24h"}, args.repeat
            )
            latest_ms = await timed(client, "/api/v1/latest", {}, args.repeat)
        print(f"one host, 20 series, 24 h: {one_host:.1f} ms (target ≤ 50 ms)")
        print(f"fleet CPU overview, 24 h:  {fleet:.1f} ms (target ≤ 200 ms)")
        print(f"latest values, all hosts ({len(latest):,} series): {latest_ms:.1f} ms (target ≤ 10 ms)")
        await pool.close()
    finally:
        postgres.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.02, help="fraction of the 7 days to load")
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=20)
    asyncio.run(main(parser.parse_args()))

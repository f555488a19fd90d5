"""Gateway ingest throughput: the raw asyncpg COPY ceiling vs NATS → gateway → committed rows.

Starts a private nats-server and PostgreSQL + TimescaleDB (devstack; run
``deploy/dev/provision-postgres.sh`` first, ``make test`` does). In one run:

1. the ceiling: ``copy_records_to_table`` of pre-built ``(time, series_id, value)`` rows into
   the gateway's own ``samples`` hypertable, best of 1 and 2 connections;
2. the full path: ``MetricBatch`` JSON published to JetStream as fast as the gateway keeps up
   (a real ``signalfire gateway`` process), counting committed rows; the lag between the
   newest published batch and the newest committed one is sampled four times a second.

    uv run python bench/ingest.py [--seconds 20] [--samples-per-batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

import asyncpg
from devstack import NatsServer, PostgresServer, ServiceProcess, free_port, http_ok, temp_pg_dir

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.events import MetricBatch, Sample, encode
from signalfire.gateway.migrate import migrate


async def copy_ceiling(url: str, seconds: float, connections: int) -> float:
    """Rows per second COPYed into ``samples`` by ``connections`` connections."""
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    rows_per_copy = 50_000
    stop = time.monotonic() + seconds
    done = 0

    async def worker(index: int, conn: asyncpg.Connection) -> None:
        nonlocal done
        base = time.time() - 86400 * (index + 1)
        n = 0
        while time.monotonic() < stop:
            from datetime import UTC, datetime

            t0 = base + n
            records = [
                (
                    datetime.fromtimestamp(t0 + i // 1000 * 1e-3, UTC),
                    1_000_000 * (index + 1) + i % 1000,
                    float(i),
                )
                for i in range(rows_per_copy)
            ]
            n += rows_per_copy // 1000 + 1
            await conn.copy_records_to_table(
                "samples", records=records, columns=["time", "series_id", "value"]
            )
            done += rows_per_copy

    began = time.monotonic()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    elapsed = time.monotonic() - began
    for conn in conns:
        await conn.execute("TRUNCATE samples")
        await conn.close()
    return done / elapsed


async def full_path(nats_url: str, db_url: str, seconds: float, per_batch: int) -> tuple[float, float, int]:
    """(committed samples per second, p99 publish → commit lag in s, samples lost)."""
    config = NatsConfig(url=nats_url)
    nc = await connect(config, "bench")
    js = nc.jetstream()
    await ensure_streams(js, config)
    conn = await asyncpg.connect(db_url)
    published = 0
    newest_published = 0.0
    lags: list[float] = []
    stop = time.monotonic() + seconds
    hosts = [f"web-{h}" for h in range(50)]
    sample_names = [(f"m{i % 100}.value", {"i": str(i // 100)}) for i in range(per_batch)]

    async def publisher() -> None:
        nonlocal published, newest_published
        n = 0
        while time.monotonic() < stop:
            host = hosts[n % len(hosts)]
            when = time.time()
            batch = MetricBatch(
                host=host,
                time=when,
                samples=[Sample(name=name, value=float(n), labels=labels) for name, labels in sample_names],
            )
            await js.publish(config.subjects.metrics(host), encode(batch))
            published += per_batch
            newest_published = when
            n += 1
            # stay at most ~4 s ahead of the gateway: the rate measured is the one it sustains
            while published - committed > 4 * max(rate_estimate, per_batch * 10):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    committed = 0
    rate_estimate = 0.0

    async def watcher() -> None:
        nonlocal committed, rate_estimate
        last, last_t = 0, time.monotonic()
        while time.monotonic() < stop + 60:
            await asyncio.sleep(0.25)
            row = await conn.fetchrow(
                "SELECT (SELECT coalesce(sum(count), 0) FROM samples_1h) AS n,"
                " (SELECT extract(epoch FROM max(last_time)) FROM samples_1h) AS newest"
            )
            committed = int(row["n"])
            now = time.monotonic()
            rate_estimate = (committed - last) / (now - last_t)
            last, last_t = committed, now
            if row["newest"] is not None and time.monotonic() < stop:
                lags.append(max(0.0, newest_published - float(row["newest"])))
            if time.monotonic() >= stop and committed >= published:
                return

    began = time.monotonic()
    await asyncio.gather(publisher(), watcher())
    elapsed = time.monotonic() - began
    await nc.close()
    await conn.close()
    lags.sort()
    p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else float("nan")
    return committed / elapsed, p99, published - committed


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nats = NatsServer(Path(tmp) / "nats").start()
        postgres = PostgresServer(temp_pg_dir(), durable=True).start()
        gateway: ServiceProcess | None = None
        try:
            ceiling_url = postgres.create_database("ceiling")
            conn = await asyncpg.connect(ceiling_url)
            await migrate(conn)
            await conn.close()
            ceilings = {
                n: await copy_ceiling(ceiling_url, args.ceiling_seconds or args.seconds, n) for n in (1, 2)
            }
            for n, rate in ceilings.items():
                print(f"raw COPY ceiling, {n} connection(s): {rate:,.0f} rows/s")
            ceiling = max(ceilings.values())
            db_url = postgres.create_database("signalfire")
            port = free_port()
            env = {
                **os.environ,
                "SF_NATS_URL": nats.url,
                "SF_DATABASE_URL": db_url,
                "SF_LISTEN": f"127.0.0.1:{port}",
                "SF_ADMIN_TOKEN_FILE": str(Path(tmp) / "admin-token"),
                "SF_LOG_LEVEL": "warning",
            }
            gateway = ServiceProcess("gateway", ["gateway"], env, Path(tmp)).start()
            deadline = time.monotonic() + 60
            while not http_ok(f"http://127.0.0.1:{port}/readyz"):
                if time.monotonic() > deadline or not gateway.alive():
                    raise SystemExit("the gateway did not start:\n" + gateway.log_path.read_text())
                await asyncio.sleep(0.2)
            rate, p99, lost = await full_path(nats.url, db_url, args.seconds, args.samples_per_batch)
            print(
                f"full path NATS → gateway → committed: {rate:,.0f} samples/s, publish→commit p99 {p99:.2f} s"
            )
            print(f"samples not committed at the end: {lost}")
            print(f"ratio full path / ceiling: {rate / ceiling:.2f}")
        finally:
            if gateway is not None:
                gateway.stop()
            postgres.stop()
            nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement")
    parser.add_argument("--samples-per-batch", type=int, default=1000)
    parser.add_argument(
        "--ceiling-seconds", type=float, default=0.0, help="length of the ceiling runs (default: --seconds)"
    )
    asyncio.run(main(parser.parse_args()))

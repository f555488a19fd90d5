"""PostgreSQL's CPU per ``COPY``ed row as the ``samples`` chunk fills.

One connection ``COPY``s 13,000-row batches (about an ingest round) over ``--series`` series
into the gateway's own schema on a private PostgreSQL + TimescaleDB (devstack), in windows of
``--window`` seconds, and prints per window the rows already in the chunk, the rows a second,
PostgreSQL's CPU µs per row and the WAL it wrote per row (bytes, and full-page images); at the
end, the chunk's table and index sizes. ``--drop-index`` drops the unique ``(series_id, time DESC)``
index first: the reference that shows what the index costs (docs/benchmarks.md, "Ingest
efficiency: the series index, and a ceiling of the same rows"). ``--packed N`` writes a row
per batch of N samples of one layout instead (docs/benchmarks.md, "A row per batch").

    uv run python bench/copy_growth.py [--windows 8] [--window 10] [--series 50000] [--drop-index]
                                       [--packed 150]
                                       [--set shared_buffers=256MB ...]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from devstack import private_servers

from bench.ingest import tree_cpu, unix_socket_url
from signalfire.gateway.migrate import migrate

ROWS_PER_COPY = 13_000


#: ``--packed``: a row per batch, its values in an array in the order of its layout's series
#: (not the gateway's schema: the design measured in docs/benchmarks.md, "A row per batch").
_PACKED_TABLE = """
CREATE TABLE samples_packed (time timestamptz NOT NULL, layout_id integer NOT NULL, vals float8[] NOT NULL);
CREATE UNIQUE INDEX samples_packed_layout_time_idx ON samples_packed (layout_id, time DESC);
SELECT create_hypertable('samples_packed', 'time', chunk_time_interval => interval '1 day');
"""


async def copy_round(conn: asyncpg.Connection, n: int, base: float, args: argparse.Namespace) -> int:
    """One ``COPY`` of about ``ROWS_PER_COPY`` samples, the ``n``-th sample first; returns how
    many samples it wrote. Each series gets a sample every ``series / 1000 * 10`` ms of the
    samples' time, both ways."""
    if args.packed:
        size: int = args.packed
        layouts = max(1, args.series // size)
        batches = max(1, ROWS_PER_COPY // size)
        first = n // size
        packed = [
            (
                datetime.fromtimestamp(base + (first + b) // layouts * args.series / 1000 * 0.01, UTC),
                (first + b) % layouts,
                [0.0] * size,
            )
            for b in range(batches)
        ]
        await conn.copy_records_to_table(
            "samples_packed", records=packed, columns=["time", "layout_id", "vals"]
        )
        return batches * size
    records = [
        (datetime.fromtimestamp(base + (n + i) // 1000 * 0.01, UTC), 1_000_000 + (n + i) % args.series, 0.0)
        for i in range(ROWS_PER_COPY)
    ]
    await conn.copy_records_to_table("sample_rows", records=records, columns=["time", "series_id", "value"])
    return ROWS_PER_COPY


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, private_servers(Path(tmp), durable=True) as (_, postgres):
        url = postgres.create_database("growth")
        conn = await asyncpg.connect(url)
        await migrate(conn)
        if args.drop_index:
            await conn.execute("DROP INDEX samples_series_time_idx")
        if args.packed:
            await conn.execute(_PACKED_TABLE)
        await conn.close()
        if args.set:
            postgres.restart_with(args.set)
        assert postgres.proc is not None
        conn = await asyncpg.connect(unix_socket_url(url, postgres.data_dir))
        base = time.time() - 3600
        n = 0
        for window in range(args.windows):
            before, cpu, began = n, tree_cpu(postgres.proc.pid), time.monotonic()
            wal = await conn.fetchrow("SELECT wal_fpi, wal_bytes FROM pg_stat_wal")
            while time.monotonic() < began + args.window:
                n += await copy_round(conn, n, base, args)
            done = n - before
            used = tree_cpu(postgres.proc.pid) - cpu
            after = await conn.fetchrow("SELECT wal_fpi, wal_bytes FROM pg_stat_wal")
            print(
                f"window {window}: samples before {before:>11,}"
                f"  {done / (time.monotonic() - began):>9,.0f} samples/s"
                f"  PostgreSQL CPU {used / done * 1e6:.2f} µs a sample"
                f"  WAL {(after['wal_bytes'] - wal['wal_bytes']) / done:.0f} B"
                f" and {(after['wal_fpi'] - wal['wal_fpi']) / done:.3f} full pages a sample",
                flush=True,
            )
        table = "samples_packed" if args.packed else "sample_rows"
        sizes = await conn.fetchrow(
            f"SELECT sum(pg_relation_size(c)) AS heap, sum(pg_indexes_size(c)) AS index"
            f" FROM show_chunks('{table}') AS c"
        )
        print(f"the chunk: table {sizes['heap'] / 2**20:,.0f} MiB, index {sizes['index'] / 2**20:,.0f} MiB")
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=float, default=10.0, help="seconds a window")
    parser.add_argument("--series", type=int, default=50_000)
    parser.add_argument("--drop-index", action="store_true")
    parser.add_argument(
        "--packed",
        type=int,
        default=0,
        metavar="N",
        help="a row per batch of N samples (values in an array) instead of a row per sample",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the run, e.g. shared_buffers=256MB (repeatable)",
    )
    asyncio.run(main(parser.parse_args()))

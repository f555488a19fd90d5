"""Which database the gateway runs on, and keeping only as much history as configured.

Three editions:

* ``timescale`` — TimescaleDB under the Timescale license: the raw samples are compressed
  (``sample_rows`` segmented by series, ``sample_batches`` by layout) and TimescaleDB's own
  retention policies drop old chunks;
* ``apache`` — TimescaleDB's Apache edition (what Debian ships): hypertables, but no policies,
  so the gateway calls ``drop_chunks`` itself every ``retention.check_every``;
* ``postgresql`` — no extension: the gateway deletes old rows by time range.

In every edition the gateway maintains the 1-minute, 5-minute and 1-hour rollups itself
(:mod:`signalfire.gateway.rollup`); maintenance only schedules their repair
(:meth:`~signalfire.gateway.rollup.Rollups.repair`) next to retention, one loop for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import asyncpg

from signalfire.gateway.config import RetentionConfig
from signalfire.gateway.rollup import Rollups

log = logging.getLogger("signalfire.gateway.maintenance")

Edition = Literal["timescale", "apache", "postgresql"]

# One replica at a time runs retention.
_RETENTION_LOCK_KEY = 0x5F72_6574  # "_ret"


@dataclass(frozen=True)
class Table:
    name: str
    time_column: str
    setting: str  # the RetentionConfig field that bounds it


TABLES = (
    Table("sample_rows", "time", "raw"),
    Table("sample_batches", "time", "raw"),
    Table("events", "time", "raw"),
    Table("samples_1m", "bucket", "rollup_1m"),
    Table("samples_5m", "bucket", "rollup_5m"),
    Table("samples_1h", "bucket", "rollup_1h"),
)


async def detect_edition(conn: asyncpg.Connection) -> Edition:
    """The edition of the database behind ``conn`` (read ``timescaledb.license``)."""
    hyper = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
        " AND to_regclass('timescaledb_information.hypertables') IS NOT NULL"
    )
    if not hyper:
        return "postgresql"
    is_hypertable = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables"
        " WHERE hypertable_name = 'sample_rows')"
    )
    if not is_hypertable:
        return "postgresql"
    license_ = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    return "timescale" if license_ == "timescale" else "apache"


async def configure_policies(conn: asyncpg.Connection, retention: RetentionConfig) -> bool:
    """Compression and retention policies for the Timescale-licensed edition.

    Returns whether they are in place; on failure (logged) the gateway runs retention itself.
    """
    try:
        async with conn.transaction():
            for raw, segment in (("sample_rows", "series_id"), ("sample_batches", "layout_id")):
                await conn.execute(
                    f"ALTER TABLE {raw} SET (timescaledb.compress, timescaledb.compress_segmentby ="
                    f" '{segment}', timescaledb.compress_orderby = 'time DESC')"
                )
                await conn.execute(
                    "SELECT add_compression_policy($1, interval '2 days', if_not_exists => true)", raw
                )
            for table in TABLES:
                await conn.execute("SELECT remove_retention_policy($1, if_exists => true)", table.name)
                keep = float(getattr(retention, table.setting))
                if keep > 0:
                    await conn.execute(
                        "SELECT add_retention_policy($1, make_interval(secs => $2))", table.name, keep
                    )
    except asyncpg.PostgresError as exc:
        log.warning(
            "cannot set TimescaleDB policies; the gateway runs retention itself",
            extra={"reason": str(exc)},
        )
        return False
    return True


async def apply_retention(
    conn: asyncpg.Connection, edition: Edition, retention: RetentionConfig, now: float
) -> dict[str, int]:
    """Drop data older than its retention as of ``now``; returns what was dropped per table
    (chunks with TimescaleDB, rows without). Another replica holding the lock makes this a no-op."""
    dropped: dict[str, int] = {}
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RETENTION_LOCK_KEY):
            return dropped
        for table in TABLES:
            keep = float(getattr(retention, table.setting))
            if keep <= 0:
                continue
            cutoff = now - keep
            if edition == "postgresql":
                status = await conn.execute(
                    f"DELETE FROM {table.name} WHERE {table.time_column} < to_timestamp($1)", cutoff
                )
                dropped[table.name] = int(status.rsplit(" ", 1)[-1])
            else:
                chunks = await conn.fetch(
                    "SELECT drop_chunks($1::regclass, older_than => to_timestamp($2))", table.name, cutoff
                )
                dropped[table.name] = len(chunks)
    return dropped


class Maintenance:
    """Runs retention every ``check_every`` unless TimescaleDB's policies do it, and has
    ``rollups`` repair its orphans (in every edition) every ``check_every`` or
    ``rollups.repair_after``, whichever is shorter. ``clock`` is the wall clock what is old
    is measured by (the gateway's one clock)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        retention: RetentionConfig,
        rollups: Rollups,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.retention = retention
        self.rollups = rollups
        self.edition: Edition = "postgresql"
        self.policies = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with self.pool.acquire() as conn:
            self.edition = await detect_edition(conn)
            if self.edition == "timescale":
                self.policies = await configure_policies(conn, self.retention)
        log.info("database edition", extra={"edition": self.edition, "policies": self.policies})
        self._task = asyncio.create_task(self._loop(), name="gateway-maintenance")

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Its loop, once started."""
        return [self._task] if self._task is not None else []

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def run_once(self, now: float | None = None) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            return await apply_retention(
                conn, self.edition, self.retention, self.clock() if now is None else now
            )

    async def _loop(self) -> None:
        every = min(float(self.retention.check_every), self.rollups.repair_after)
        retention_due = time.monotonic()
        while True:
            if not self.policies and time.monotonic() >= retention_due:
                retention_due = time.monotonic() + float(self.retention.check_every)
                try:
                    dropped = await self.run_once()
                    if any(dropped.values()):
                        log.info("retention dropped old data", extra={"dropped": dropped})
                except Exception as exc:
                    log.warning("retention failed; trying again later", extra={"reason": repr(exc)})
            try:
                await self.rollups.repair(self.clock())
            except asyncpg.exceptions.TransactionRollbackError as exc:
                log.info("rollup repair met a concurrent write; retrying later", extra={"reason": str(exc)})
            except Exception as exc:
                log.warning("rollup repair failed; trying again later", extra={"reason": repr(exc)})
            await asyncio.sleep(every)

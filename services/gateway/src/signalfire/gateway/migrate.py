"""Versioned SQL migrations: ``migrations/NNNN_name.sql`` files applied in order, once each.

All pending migrations run in one transaction under a transaction-scoped advisory lock, so
gateways starting together apply them exactly once and a failed migration leaves nothing
half-done. Applied versions are recorded in ``schema_migrations``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger("signalfire.gateway.migrate")

# Any constant unique to Signalfire; two gateways migrating the same database share it.
_LOCK_KEY = 0x5F6D_6967  # "_mig"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with this gateway, oldest first."""
    found: list[Migration] = []
    for entry in resources.files("signalfire.gateway").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not yet recorded in ``schema_migrations``; returns those applied.

    Running it again (or from several processes at once) applies nothing twice.
    """
    applied: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration)
    for migration in applied:
        log.info("applied migration", extra={"version": migration.version, "migration": migration.name})
    return applied


async def schema_version(conn: asyncpg.Connection) -> int:
    """The newest applied migration version, 0 for an empty database."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))

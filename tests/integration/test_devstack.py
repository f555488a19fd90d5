"""The dev servers themselves: what `make up` and every integration test stand on."""

from __future__ import annotations

import asyncpg

from signalfire.bus import NatsConfig, connect


async def test_nats_server_has_jetstream(nats_server) -> None:
    nc = await connect(NatsConfig(url=nats_server.url), "pytest")
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


async def test_postgres_has_timescaledb(postgres, database_url) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        license_ = await conn.fetchval("SHOW timescaledb.license")
    finally:
        await conn.close()
    assert version == "2.19.3"
    assert license_ == "apache"

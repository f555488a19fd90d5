"""Fixtures of the gateway's database tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from devstack import PostgresServer, private_postgres

from signalfire.gateway.migrate import migrate


@pytest.fixture(scope="module")
def plain_server() -> Iterator[PostgresServer]:
    """PostgreSQL without TimescaleDB (the third edition the gateway supports), for the
    module's tests."""
    with private_postgres(timescaledb=False) as server:
        yield server


@pytest.fixture(params=["timescaledb", "postgresql"])
async def pool(
    request: pytest.FixtureRequest, postgres: PostgresServer, plain_server: PostgresServer
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a new, migrated database: once on TimescaleDB, once on plain PostgreSQL."""
    server = postgres if request.param == "timescaledb" else plain_server
    name = f"test_{secrets.token_hex(4)}"
    url = server.create_database(name)
    created = await asyncpg.create_pool(url, min_size=1, max_size=3)
    try:
        async with created.acquire() as conn:
            await migrate(conn)
        yield created
    finally:
        await created.close()
        server.drop_database(name)

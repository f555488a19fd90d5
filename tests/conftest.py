"""Fixtures with real servers: a private nats-server (JetStream) and PostgreSQL + TimescaleDB.

Both servers start once per test session on free loopback ports and are stopped by PID at
the end. Tests are isolated from each other without restarts: each test gets its own NATS
subject prefix (so its own streams and KV buckets) and its own database.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from devstack import NatsServer, PostgresServer, temp_pg_dir

from signalfire.bus import NatsConfig, connect, ensure_streams


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_config(nats_server: NatsServer) -> NatsConfig:
    # Small stream limits: every test creates its own streams on the one session server, and
    # JetStream reserves each stream's max_bytes from the server's storage.
    return NatsConfig(url=nats_server.url, prefix=f"t{secrets.token_hex(4)}", metrics_max_bytes=16 << 20)


@pytest.fixture
async def nc(nats_config: NatsConfig) -> AsyncIterator[object]:
    client = await connect(nats_config, "pytest")
    await ensure_streams(client.jetstream(), nats_config)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    data = temp_pg_dir()
    server = PostgresServer(data, durable=False).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(Path(data).parent, ignore_errors=True)


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    name = f"test_{secrets.token_hex(4)}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)

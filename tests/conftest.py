"""Fixtures with real servers: a private nats-server (JetStream), PostgreSQL + TimescaleDB, and
pytest-httpserver's ``httpserver`` on loopback.

NATS and PostgreSQL start once per test session on free loopback ports and are stopped by PID
at the end. Tests are isolated from each other without restarts: each test gets its own NATS
subject prefix (so its own streams and KV buckets) and its own database.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
from devstack import NatsServer, PostgresServer, private_postgres
from pytest_httpserver import HTTPServer

from signalfire.bus import NatsConfig, connect, ensure_streams
from tests.support.httpserver import loopback_httpserver


@pytest.fixture
def httpserver() -> Iterator[HTTPServer]:
    """pytest-httpserver's fixture, threaded and on 127.0.0.1, one server per test: the
    plugin's own is one server for the session on "localhost", where a handler still sleeping
    for one test would answer in the next. Fails the test at teardown if a request matched no
    handler."""
    with loopback_httpserver() as server:
        yield server
        server.check()


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
    with private_postgres() as server:
        yield server


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    name = f"test_{secrets.token_hex(4)}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)

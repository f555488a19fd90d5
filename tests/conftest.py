"""Fixtures with real servers: a private nats-server (JetStream), PostgreSQL + TimescaleDB, and
pytest-httpserver's ``httpserver`` on loopback.

NATS and PostgreSQL start once per test session on free loopback ports and are stopped by PID
at the end. Tests are isolated from each other without restarts: each test gets its own NATS
subject prefix (so its own streams and KV buckets) and its own database.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import os
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psutil
import pytest
from devstack import NatsServer, PostgresServer, private_postgres
from pytest_httpserver import HTTPServer

from signalfire.bus import NatsConfig, connect, ensure_streams
from tests.support.httpserver import loopback_httpserver

#: How long past its timeout a test may still run before its process is ended (below).
HUNG_GRACE = 60.0
#: A timed test's: set when its teardown is over.
_TIMED = pytest.StashKey[threading.Event]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """End a test's process when it outlives its timeout by ``HUNG_GRACE``, naming it.

    pytest-timeout (whose settings, of the marker, option or ini, come in ``settings``) fails a
    test once, by a signal in the main thread; a test whose teardown then hangs (a task its
    event loop cannot cancel) would stall the whole run, and under pytest-xdist nobody would
    say which test. This says which, prints every unfinished asyncio task's stack and every
    thread's, stops the processes the test process started, and exits it: pytest-xdist
    reports the test as failed and goes on in a new worker. Returns nothing, so that
    pytest-timeout's own timer is set as well."""
    done = item.stash[_TIMED] = threading.Event()
    threading.Thread(
        target=_end_if_hung, args=(item, settings.timeout + HUNG_GRACE, done), daemon=True, name="hung-test"
    ).start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """The watch above ends with the test's teardown: not with pytest-timeout's timer, which
    is cancelled as soon as the test fails (its timeout included)."""
    try:
        yield
    finally:
        done = item.stash.get(_TIMED, None)
        if done is not None:
            done.set()


def _end_if_hung(item: pytest.Item, after: float, done: threading.Event) -> None:
    if done.wait(after):
        return
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # what is written now reaches the run's output, not the test's capture
        capture.suspend_global_capture(in_=False)
    err = sys.stderr
    err.write(
        f"\n[conftest] {item.nodeid}: still running {after:.0f} s after it began; its unfinished tasks:\n"
    )
    for task in [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]:
        err.write(f"--- {task!r}\n")
        task.print_stack(file=err)
    err.write("[conftest] every thread:\n")
    err.flush()
    faulthandler.dump_traceback(file=err, all_threads=True)
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone already
            child.terminate()
    err.flush()
    os._exit(3)


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

"""The fault scenarios run on the bus as ``make up`` runs it: NATS requires credentials, each
service connects as its own identity and the test's own clients as ``admin``.

``nats_server``, ``nats_config`` and ``nc`` (tests/conftest.py's names) are overridden here:
each scenario gets a nats-server of its own, started with the credentials of
``devstack.bus_credentials`` for a subject prefix of its own, and connects as ``admin``
(:func:`tests.faults.support.service_env` makes a service's environment name its identity).
The session's unauthenticated server is not started for this directory.

Every ``signalfire`` process a scenario starts (``devstack.ServiceProcess``) is recorded, and
the scenario fails when the log of one of them holds a ``permissions violation``: the bus
refused that service something the policy (:mod:`signalfire.buspolicy`) should let it do.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from devstack import NatsServer, ServiceProcess, bus_credentials

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.busauth import CredentialDirectory
from tests.faults.support import as_identity, permission_violations

#: The service processes the running scenario started, in order.
STARTED = pytest.StashKey[list[ServiceProcess]]()


@pytest.fixture
def bus(tmp_path: Path) -> CredentialDirectory:
    """The scenario's bus credentials (admin, gateway, evaluator, notifier), for a subject
    prefix of its own, and the server config ``nats.conf`` that requires them."""
    return bus_credentials(tmp_path / "bus", prefix=f"t{secrets.token_hex(4)}")


@pytest.fixture
def nats_server(bus: CredentialDirectory, tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server (JetStream) of the scenario's own, requiring ``bus``'s credentials."""
    server = NatsServer(tmp_path / "nats", config=bus.path / "nats.conf").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_config(nats_server: NatsServer, bus: CredentialDirectory) -> NatsConfig:
    # The same stream limits as tests/conftest.py's: JetStream reserves each stream's
    # max_bytes from the server's storage.
    nats = NatsConfig(url=nats_server.url, prefix=bus.prefix(), metrics_max_bytes=16 << 20)
    return as_identity(nats, "admin", bus)


@pytest.fixture
async def nc(nats_config: NatsConfig) -> AsyncIterator[object]:
    client = await connect(nats_config, "fault-admin")
    await ensure_streams(client.jetstream(), nats_config)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(autouse=True)
def started_services(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[ServiceProcess]:
    """Records every ``ServiceProcess`` the scenario starts (``gateway_process`` and
    ``notifier_process`` included), for the check of their logs after the test."""
    started: list[ServiceProcess] = []
    request.node.stash[STARTED] = started
    start = ServiceProcess.start

    def recorded(self: ServiceProcess) -> ServiceProcess:
        if self not in started:
            started.append(self)
        return start(self)

    monkeypatch.setattr(ServiceProcess, "start", recorded)
    return started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """Fails the scenario when the bus refused one of its services anything (checked after the
    test body, whose ``finally`` blocks have stopped the services; also when the body failed,
    as the refusal is then the likelier cause)."""
    try:
        return (yield)
    finally:
        started: list[ServiceProcess] = item.stash.get(STARTED, [])
        refused = permission_violations(started)
        if refused:
            raise AssertionError(refused)

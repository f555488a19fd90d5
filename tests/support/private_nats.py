"""A nats-server of the test's own, for tests that stop and restart it."""

from __future__ import annotations

from pathlib import Path

from devstack import NatsServer

from signalfire.bus import NatsConfig, connect, ensure_streams


async def private_nats(state: Path, prefix: str) -> tuple[NatsServer, NatsConfig]:
    """A running nats-server (JetStream data under ``state``) and its config with subject
    ``prefix``, its streams and buckets made. The caller stops it (and may restart it on
    the same port)."""
    server = NatsServer(state).start()
    nats = NatsConfig(url=server.url, prefix=prefix)
    admin = await connect(nats, "test-admin")
    await ensure_streams(admin.jetstream(), nats)
    await admin.close()
    return server, nats

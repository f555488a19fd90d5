"""Helpers for the gateway's integration tests: a running gateway and polling."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import MetricBatch
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.rollup import Rollups
from signalfire.gateway.service import GatewayService
from signalfire.gateway.store import MetricsWritten, Store
from tests.support.metrics import value

T = TypeVar("T")


def gateway_config(
    nats_config: NatsConfig, database_url: str, state: Path, **overrides: Any
) -> GatewayConfig:
    """A gateway on a free port, with quick fetch rounds so tests stop fast."""
    base = GatewayConfig(
        nats=nats_config,
        database_url=database_url,
        listen="127.0.0.1:0",
        admin_token_file=str(state / "admin-token"),
        fetch_timeout=Duration(0.2),
        rollup_flush=Duration(0.2),  # samples count as stored once their rollups are merged
        rollup_merge="flush",  # ... every flush, not once their minute ended (minute: a test of its own)
        db_pool_size=4,
    )
    return msgspec.structs.replace(base, **overrides)


@dataclass
class RunningGateway:
    service: GatewayService
    token: str
    url: str

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client for the API with ``token`` (the admin token by default)."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)

    def counter(self, name: str, **labels: str) -> float:
        """The gateway's sample ``signalfire_gateway_<name>{labels}`` (``KeyError`` for an unknown name)."""
        return value(self.service.registry, f"signalfire_gateway_{name}", **labels)


@asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[RunningGateway]:
    service = GatewayService(config)
    await service.start()
    try:
        assert service.address is not None
        host, port = service.address
        with open(config.admin_token_file, encoding="utf-8") as file:  # noqa: ASYNC230 - tiny local file
            token = file.read().strip()
        yield RunningGateway(service, token, f"http://{host}:{port}")
    finally:
        await service.stop()


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """Poll ``check`` until it returns without an ``AssertionError``; returns its result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def write_held(
    store: Store,
    rollups: Rollups,
    batches: list[MetricBatch],
    sequences: list[int],
    *,
    redelivered: bool = False,
) -> tuple[MetricsWritten, dict[int, int]]:
    """Write ``batches`` (stream ``sequences``) as ingest does: their rollups wait in ``rollups``
    for its flush. Returns what was written and what waits (sequence: new samples)."""
    round_ = rollups.round(sequences)
    written = await store.write_metrics(batches, rollups=round_, redelivered=redelivered)
    return written, rollups.add(round_)


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``signalfire ARGS...`` against ``database_url``, as a person runs it; never raises on a
    non-zero exit (tests assert on the result)."""
    env = {**os.environ, "SF_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "signalfire.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

"""A gateway killed with SIGKILL in the middle of a batch loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from devstack import ServiceProcess

from signalfire.bus import NatsConfig
from signalfire.events import MetricBatch, Sample, encode
from signalfire.gateway.api.query import HOURS
from tests.integration.gateway_support import eventually

BATCHES = 300
SAMPLES = 200


@pytest.mark.slow
async def test_kill_9_mid_batch_then_redelivery_stores_every_sample_once(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    start = time.time() - 3600
    for b in range(BATCHES):
        batch = MetricBatch(
            host=f"web-{b % 5}",
            time=start + b,
            samples=[Sample(name="load.value", value=float(i), labels={"i": str(i)}) for i in range(SAMPLES)],
        )
        await js.publish(nats_config.subjects.metrics(batch.host), encode(batch))
    env = {
        **os.environ,
        "SF_NATS_URL": nats_config.url,
        "SF_NATS_PREFIX": nats_config.prefix,
        "SF_NATS_METRICS_MAX_BYTES": str(nats_config.metrics_max_bytes),
        "SF_DATABASE_URL": database_url,
        "SF_LISTEN": "127.0.0.1:0",
        "SF_ADMIN_TOKEN_FILE": str(tmp_path / "admin-token"),
        "SF_FETCH_BATCH": "10",
        "SF_ACK_WAIT": "2s",
    }
    conn = await asyncpg.connect(database_url)
    try:

        async def stored() -> int:
            try:
                return int(await conn.fetchval("SELECT count(*) FROM samples"))
            except asyncpg.UndefinedTableError:
                return 0

        first = ServiceProcess("gateway-1", ["gateway"], env, tmp_path).start()
        try:

            async def some_stored() -> None:
                assert await stored() > 0

            await eventually(some_stored, timeout=30)
        finally:
            assert first.proc is not None
            os.killpg(first.proc.pid, signal.SIGKILL)
            first.proc.wait()
        at_kill = await stored()
        assert at_kill < BATCHES * SAMPLES, "the gateway finished before it could be killed"

        second = ServiceProcess("gateway-2", ["gateway"], env, tmp_path).start()
        try:

            async def all_stored() -> None:
                assert await stored() == BATCHES * SAMPLES

            await eventually(all_stored, timeout=60)
            await asyncio.sleep(3)  # redeliveries of what the first one wrote change nothing
            assert await stored() == BATCHES * SAMPLES
            assert await conn.fetchval("SELECT sum(count) FROM samples_1m") == BATCHES * SAMPLES
            # the 1-hour rollups as queries read them (an hour that ended 2 min ago may be open)
            assert await conn.fetchval(f"SELECT sum(count) FROM {HOURS} AS r") == BATCHES * SAMPLES
        finally:
            second.stop()
    finally:
        await conn.close()

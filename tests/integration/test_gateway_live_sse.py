"""The live stream's SSE fallback resuming by ``Last-Event-ID``, as a browser's EventSource
does after a dropped connection: without a gap, with a reset when the id is from another run,
and a 400 naming the field when the id is not one."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from signalfire.bus import NatsConfig
from signalfire.events import MetricBatch, Sample, encode
from signalfire.gateway.auth import create_token
from tests.integration.gateway_support import gateway_config, running_gateway

STREAM = "/api/v1/events/stream"


async def _publish(nc: Any, config: NatsConfig, value: float) -> None:
    batch = MetricBatch(
        host="web-3", time=time.time(), samples=[Sample(name="cpu.usage_percent", value=value)]
    )
    await nc.jetstream().publish(config.subjects.metrics("web-3"), encode(batch))


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The server-sent events of ``response``: ``event`` (``message`` when unnamed), ``id``, ``data``."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if event:
                yield {"event": "message", **event}
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            event[field] = value


async def _until(response: httpx.Response, done: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
    seen = []
    async for event in _events(response):
        seen.append(event)
        if done(event):
            return seen
    raise AssertionError(f"the stream ended after {seen}")


def _value(event: dict[str, str]) -> float | None:
    return json.loads(event["data"]).get("value") if event["event"] == "message" else None


async def test_sse_resumes_by_last_event_id_and_resets_for_another_runs_id(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        assert gw.service.pool is not None
        viewer = await create_token(gw.service.pool, "tab", "viewer")
        params = {"hosts": "web-3", "token": viewer, "alerts": "0"}
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            async with client.stream("GET", STREAM, params=params) as response:
                await _publish(nc, nats_config, 1.0)
                first = await _until(response, lambda e: _value(e) == 1.0)
            last_id = first[-1]["id"]

            await _publish(nc, nats_config, 2.0)  # while the tab is away
            async with client.stream(
                "GET", STREAM, params=params, headers={"Last-Event-ID": last_id}
            ) as response:
                again = await _until(response, lambda e: _value(e) == 2.0)
            assert [e["event"] for e in again] == ["hello", "message"]  # no reset: nothing was missed
            epoch, _, seq = again[-1]["id"].rpartition("-")
            assert f"{epoch}-" in last_id and int(seq) > int(last_id.rpartition("-")[2])

            elsewhere = {"Last-Event-ID": "an-earlier-run-7"}
            async with client.stream("GET", STREAM, params=params, headers=elsewhere) as response:
                reset = await _until(response, lambda e: e["event"] == "reset")
            assert [e["event"] for e in reset] == ["hello", "reset"]

            bad = await client.get(STREAM, params=params, headers={"Last-Event-ID": "x-y"})
            assert bad.status_code == 400
            assert bad.json()["error"]["field"] == "last_seq"
            assert "must be a sequence number" in bad.json()["error"]["message"]

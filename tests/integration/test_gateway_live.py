"""The live stream through a real gateway: what the ingest commits reaches connected tabs,
resumes after a reconnect and after a restart, and bad tokens or subscriptions are refused."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from signalfire.bus import NatsConfig
from signalfire.events import AgentStatus, AlertEvent, MetricBatch, Sample, encode
from signalfire.gateway.auth import create_token
from tests.integration.gateway_support import RunningGateway, eventually, gateway_config, running_gateway


def ws_url(gw: RunningGateway, token: str) -> str:
    return gw.url.replace("http://", "ws://") + f"/api/v1/stream?token={token}"


async def frames_until(ws: ClientConnection, predicate: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every frame received until one satisfies ``predicate`` (heartbeats left out)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no matching frame in {timeout}s; got {seen}")
        message = json.loads(await asyncio.wait_for(ws.recv(), left))
        for frame in message if isinstance(message, list) else [message]:
            if frame["kind"] == "heartbeat":
                continue
            seen.append(frame)
            if predicate(frame):
                return seen


async def publish_cpu(nc: Any, config: NatsConfig, host: str, value: float) -> None:
    batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="cpu.usage_percent", value=value)])
    await nc.jetstream().publish(config.subjects.metrics(host), encode(batch))


async def test_committed_samples_alerts_and_statuses_reach_the_tab(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with (
        running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw,
        websockets.connect(ws_url(gw, gw.token)) as ws,
    ):
        await ws.send(json.dumps({"subscribe": {"hosts": ["web-*"], "metrics": ["cpu.*"]}}))
        hello = await frames_until(ws, lambda f: f["kind"] == "hello")
        assert hello[-1]["epoch"]

        await publish_cpu(nc, nats_config, "db-1", 10.0)  # another host: not for this tab
        await publish_cpu(nc, nats_config, "web-1", 42.5)
        frames = await frames_until(ws, lambda f: f["kind"] == "metric")
        metric = frames[-1]
        assert (metric["host"], metric["metric"], metric["value"]) == ("web-1", "cpu.usage_percent", 42.5)
        # The frame is sent after the commit: the REST API already has the sample.
        async with gw.client() as api:
            stored = (await api.get("/api/v1/latest", params={"host": "web-1"})).json()["samples"]
            everything = (await api.get("/api/v1/latest")).json()["samples"]
        assert [s["value"] for s in stored] == [42.5]
        assert ("web-1", 42.5) in {(s["host"], s["value"]) for s in everything}
        # The answer for every series is cached until the values change.
        await publish_cpu(nc, nats_config, "web-1", 43.5)
        await frames_until(ws, lambda f: f["kind"] == "metric" and f["value"] == 43.5)
        async with gw.client() as api:
            everything = (await api.get("/api/v1/latest")).json()["samples"]
        assert ("web-1", 43.5) in {(s["host"], s["value"]) for s in everything}

        now = time.time()
        event = AlertEvent(
            id="a-1",
            fingerprint="fp-1",
            rule="HighCPU",
            status="firing",
            severity="high",
            host="web-1",
            starts_at=now,
            time=now,
            value=97.0,
            annotations={"summary": "<b>hot</b>"},
        )
        await nc.jetstream().publish(nats_config.subjects.alerts("web-1"), encode(event))
        frames = await frames_until(ws, lambda f: f["kind"] == "alert")
        assert frames[-1]["id"] == "a-1" and frames[-1]["status"] == "firing"
        assert frames[-1]["annotations"]["summary"] == "<b>hot</b>"

        async with gw.client() as api:
            assert (await api.post("/api/v1/alerts/a-1/ack", json={"note": "looking"})).status_code == 200
        frames = await frames_until(ws, lambda f: f["kind"] == "alert" and f.get("action") == "ack")
        assert frames[-1]["actor"] and frames[-1]["host"] == "web-1"

        status = AgentStatus(host="web-1", status="offline", time=time.time())
        await nc.jetstream().publish(nats_config.subjects.agents("web-1"), encode(status))
        frames = await frames_until(ws, lambda f: f["kind"] == "host")
        assert frames[-1]["status"] == "offline"
        seqs = [f["seq"] for f in frames if "seq" in f]
        assert seqs == sorted(seqs)


async def test_a_reconnect_resumes_without_gap_or_duplicate_and_a_restart_resets(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(nats_config, database_url, tmp_path)
    async with running_gateway(config) as gw:
        subscribe = {"subscribe": {"hosts": ["web-1"], "alerts": False}}
        # Another tab stays connected all along, so the gateway keeps making frames.
        other = await websockets.connect(ws_url(gw, gw.token))
        await other.send(json.dumps({"subscribe": {"hosts": ["nobody"]}}))
        await frames_until(other, lambda f: f["kind"] == "hello")
        async with websockets.connect(ws_url(gw, gw.token)) as ws:
            await ws.send(json.dumps(subscribe))
            epoch = (await frames_until(ws, lambda f: f["kind"] == "hello"))[-1]["epoch"]
            await publish_cpu(nc, nats_config, "web-1", 1.0)
            last_seq = (await frames_until(ws, lambda f: f["kind"] == "metric"))[-1]["seq"]
        # While the tab is away, three values arrive for three series.
        for i, name in enumerate(["cpu.usage_percent", "load.1m", "memory.used_percent"]):
            batch = MetricBatch(host="web-1", time=time.time(), samples=[Sample(name=name, value=float(i))])
            await nc.jetstream().publish(nats_config.subjects.metrics("web-1"), encode(batch))

        async def stored() -> None:
            assert gw.counter("ingest_samples_total") == 4

        await eventually(stored)
        async with websockets.connect(ws_url(gw, gw.token)) as ws:
            await ws.send(json.dumps({**subscribe, "last_seq": last_seq, "epoch": epoch}))
            got: dict[str, float] = {}

            def all_three(frame: dict[str, Any]) -> bool:
                if frame["kind"] == "metric":
                    got[frame["metric"]] = frame["value"]
                return len(got) == 3

            frames = await frames_until(ws, all_three)
            # Exactly the three values stored while away (in the order they were committed).
            assert [f["kind"] for f in frames] == ["hello", "metric", "metric", "metric"], frames
            assert got == {"cpu.usage_percent": 0.0, "load.1m": 1.0, "memory.used_percent": 2.0}
            seqs = [f["seq"] for f in frames[1:]]
            assert seqs == sorted(seqs) and seqs[0] > last_seq and len(set(seqs)) == 3
            last_seq = frames[-1]["seq"]
        await other.close()

        # With no tab connected the gateway makes no metric frames; a tab that comes back
        # is told to reload rather than shown a gap.
        await publish_cpu(nc, nats_config, "web-1", 7.0)

        async def stored_again() -> None:
            assert gw.counter("ingest_samples_total") == 5

        await eventually(stored_again)
        async with websockets.connect(ws_url(gw, gw.token)) as ws:
            await ws.send(json.dumps({**subscribe, "last_seq": last_seq, "epoch": epoch}))
            frames = await frames_until(ws, lambda f: f["kind"] == "reset")
            assert [f["kind"] for f in frames] == ["hello", "reset"]

    # A new gateway process has a new epoch: the tab is told to reload instead of silently
    # missing what was ingested while it was disconnected.
    async with running_gateway(config) as gw, websockets.connect(ws_url(gw, gw.token)) as ws:
        await ws.send(json.dumps({**subscribe, "last_seq": last_seq, "epoch": epoch}))
        frames = await frames_until(ws, lambda f: f["kind"] == "reset")
        assert frames[0]["kind"] == "hello" and frames[0]["epoch"] != epoch


async def test_a_tab_back_after_a_short_disconnect_gets_every_sample_it_missed(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        subscribe = {"subscribe": {"hosts": ["web-1"], "alerts": False}}
        other = await websockets.connect(ws_url(gw, gw.token))  # another tab stays connected
        await other.send(json.dumps({"subscribe": {"hosts": ["nobody"]}}))
        await frames_until(other, lambda f: f["kind"] == "hello")
        async with websockets.connect(ws_url(gw, gw.token)) as ws:
            await ws.send(json.dumps(subscribe))
            # The first message is the bare hello object (docs/dashboard.md), not an array.
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert isinstance(hello, dict) and hello["kind"] == "hello"
            await publish_cpu(nc, nats_config, "web-1", 0.0)
            last_seq = (await frames_until(ws, lambda f: f["kind"] == "metric"))[-1]["seq"]
        # Away: one CPU sample a second for five seconds (the page charts each of them).
        for value in (1.0, 2.0, 3.0, 4.0, 5.0):
            await publish_cpu(nc, nats_config, "web-1", value)

        async def stored() -> None:
            assert gw.counter("ingest_samples_total") == 6

        await eventually(stored)
        async with websockets.connect(ws_url(gw, gw.token)) as ws:
            await ws.send(json.dumps({**subscribe, "last_seq": last_seq, "epoch": hello["epoch"]}))
            metrics: list[dict[str, Any]] = []

            def five(frame: dict[str, Any]) -> bool:
                if frame["kind"] == "metric":
                    metrics.append(frame)
                return len(metrics) == 5

            frames = await frames_until(ws, five)
            assert [f["kind"] for f in frames] == ["hello"] + ["metric"] * 5  # no reset
            # Every sample (in the order the ingest committed them), not only the newest.
            assert sorted(f["value"] for f in metrics) == [1.0, 2.0, 3.0, 4.0, 5.0]
            assert [f["seq"] for f in metrics] == list(range(last_seq + 1, last_seq + 6))
        await other.close()


async def test_bad_tokens_and_subscriptions_are_refused(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(gw, "not-a-token")):
                pass
        assert refused.value.response.status_code == 401
        assert b"not valid" in refused.value.response.body

        async with websockets.connect(ws_url(gw, gw.token)) as ws:
            await ws.send(json.dumps({"subscribe": {"hosts": "web-1"}}))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
            assert "subscribe.hosts" in closed.value.rcvd.reason

        # The token is taken from the query string only on the stream endpoints.
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/api/v1/hosts", params={"token": gw.token})).status_code == 401


async def test_sse_fallback_with_last_event_id_and_viewer_whoami(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        assert gw.service.pool is not None
        viewer = await create_token(gw.service.pool, "watcher", "viewer")
        async with gw.client(viewer) as api:
            assert (await api.get("/api/v1/whoami")).json() == {"name": "watcher", "role": "viewer"}
        await publish_cpu(nc, nats_config, "web-2", 5.0)
        await publish_cpu(nc, nats_config, "web-2", 6.0)

        async def stored() -> None:
            assert gw.counter("ingest_samples_total") == 2

        await eventually(stored)
        async with (
            httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
            client.stream(
                "GET", "/api/v1/events/stream", params={"hosts": "web-2", "token": viewer, "alerts": "0"}
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            # Connected: what is committed from now on is streamed (earlier values are not).
            await publish_cpu(nc, nats_config, "web-2", 7.0)
            ids: list[str] = []
            values: list[float] = []
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    ids.append(line[4:])
                if line.startswith("data: ") and '"metric"' in line:
                    values.append(json.loads(line[6:])["value"])
                    if values[-1] == 7.0:
                        break
        assert values == [7.0]
        epoch, _, seq = ids[-1].rpartition("-")
        assert epoch and int(seq) > 0

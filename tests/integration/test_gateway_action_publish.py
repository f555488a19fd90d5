"""A person's action on an alert, a silence made or expired, or a batch posted over HTTP,
while the gateway's NATS connection is away (its node died and it reconnects to another; a
stream electing a leader answers nothing for seconds): the API writes it again until NATS
takes it, for up to ``publish_wait``, and answers then, instead of refusing it; it is stored
once. Real NATS, the gateway's connection through a TCP proxy the test cuts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import msgspec

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import AlertAction, decode, encode
from tests.integration.gateway_support import eventually, gateway_config, running_gateway
from tests.integration.test_gateway_endpoints import alert
from tests.support.streams import stream_messages
from tests.support.tcpproxy import TcpProxy


async def test_a_resolve_made_while_nats_is_away_is_published_once_it_is_back(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    host, port = nats_config.url.removeprefix("nats://").rsplit(":", 1)
    proxy = await TcpProxy(host, int(port)).start()
    through = msgspec.structs.replace(nats_config, url=proxy.url)
    try:
        async with running_gateway(gateway_config(through, database_url, tmp_path)) as gw:
            await js.publish(nats_config.subjects.alerts("web-1"), encode(alert("away-1")))
            await js.publish(nats_config.subjects.alerts("web-1"), encode(alert("away-2")))

            async def stored() -> None:
                assert gw.counter("ingest_messages_total", kind="alerts") >= 2

            await eventually(stored)
            service_nc = gw.service.nc
            assert service_nc is not None
            async with gw.client() as api:
                proxy.cut()
                await eventually(_disconnected(service_nc), 5)
                started = time.monotonic()
                pending = asyncio.ensure_future(api.post("/api/v1/alerts/away-1/resolve"))
                await asyncio.sleep(1.5)  # longer than a single try (control_timeout, 2 s) would wait
                assert not pending.done(), "answered while NATS was away"
                proxy.restore()
                answer = await pending
                waited = time.monotonic() - started
                assert answer.status_code == 200, answer.text
                assert (answer.json()["status"], answer.json()["resolved_by"]) == (
                    "resolved",
                    "bootstrap-admin",
                )
                assert 1.5 <= waited < 15

                # A silence made, then expired, while the connection is away: the same.
                body = {"matchers": [{"name": "host", "value": "web-1"}], "duration": "1h"}
                created = await while_away(proxy, service_nc, api.post("/api/v1/silences", json=body))
                assert created.status_code == 201, created.text
                listed = (await api.get("/api/v1/silences")).json()["silences"]
                assert [x["id"] for x in listed] == [created.json()["id"]]
                expired = await while_away(
                    proxy, service_nc, api.delete(f"/api/v1/silences/{created.json()['id']}")
                )
                assert (expired.status_code, expired.json()["state"]) == (200, "expired"), expired.text

                # A batch posted over HTTP while the connection is away: published once it is
                # back; sent again by a client that missed the answer, still stored once.
                batch = {"host": "web-http", "time": time.time(), "samples": [{"name": "cpu", "value": 1.0}]}
                posted = await while_away(proxy, service_nc, api.post("/api/v1/ingest/metrics", json=batch))
                assert posted.status_code == 202, posted.text
                assert (await api.post("/api/v1/ingest/metrics", json=batch)).status_code == 202
        # With publish_wait 0 the API refuses at once, as before.
        config = gateway_config(through, database_url, tmp_path, publish_wait=Duration(0))
        async with running_gateway(config) as gw, gw.client() as api:
            service_nc = gw.service.nc
            assert service_nc is not None
            proxy.cut()
            await eventually(_disconnected(service_nc), 5)
            started = time.monotonic()
            refused = await api.post("/api/v1/alerts/away-2/resolve")
            assert refused.status_code == 503 and "NATS is not connected" in refused.text
            assert time.monotonic() - started < 1
            proxy.restore()
    finally:
        await proxy.stop()
    actions = [
        decode(data, AlertAction)
        for _, data in await stream_messages(
            js, nats_config.subjects.alerts_stream, nats_config.subjects.actions
        )
    ]
    assert [(a.alert_id, a.action) for a in actions] == [("away-1", "resolve")]  # once, however often sent
    batches = await stream_messages(
        js, nats_config.subjects.metrics_stream, nats_config.subjects.metrics("web-http")
    )
    assert len(batches) == 1


async def while_away(proxy: TcpProxy, nc: Any, request: Awaitable[Any]) -> Any:
    """``request``'s answer, sent while the gateway's connection is cut and answered after it
    is restored 1.5 s later."""
    proxy.cut()
    await eventually(_disconnected(nc), 5)
    pending = asyncio.ensure_future(request)
    await asyncio.sleep(1.5)
    assert not pending.done(), "answered while NATS was away"
    proxy.restore()
    return await pending


def _disconnected(nc: Any) -> Any:
    async def check() -> None:
        assert not nc.is_connected

    return check

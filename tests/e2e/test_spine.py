"""The spine, end to end: metric → NATS → TimescaleDB and rule → alert event → webhook → API.

Everything is real and runs as separate processes, started the way `make up` starts them
(``devstack.stack``): nats-server, PostgreSQL with TimescaleDB, ``signalfire gateway``,
``signalfire evaluator``, ``signalfire notifier`` and ``signalfire agent`` for this host. The
webhook receiver of tests/support/webhook.py (pytest-httpserver) records what it is sent.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from devstack import Stack

from signalfire.bus import connect
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode
from tests.e2e.support import HOST, api, statuses, wait_until
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.slow


async def test_metric_to_alert_to_webhook_and_api(running: Stack, receiver: WebhookReceiver) -> None:
    nc = await connect(running.nats_config(), "e2e")
    events: list[tuple[float, AlertEvent]] = []

    async def on_alert(msg: Any) -> None:
        events.append((time.monotonic(), decode(msg.data, AlertEvent)))

    await nc.subscribe(f"sf.alerts.{'e2e-web-1_example_com'}", cb=on_alert)
    js = nc.jetstream()

    async def publish(cpu: float) -> float:
        batch = MetricBatch(
            host=HOST, time=time.time(), samples=[Sample(name="cpu.usage_percent", value=cpu)]
        )
        sent = time.monotonic()
        await js.publish(f"sf.metrics.{'e2e-web-1_example_com'}", encode(batch))
        return sent

    async def until(predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            if running.dead():
                pytest.fail(f"a service died waiting for {what}: {[s.name for s in running.dead()]}")
            await asyncio.sleep(0.02)

    try:
        # The evaluator subscribes after start-up; it answers on its control subject once it does.
        deadline = time.monotonic() + 30
        while True:
            try:
                await nc.request("sf.control.evaluator.rules", b"{}", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail("evaluator never answered on sf.control.evaluator.rules")
                await asyncio.sleep(0.2)

        sent = await publish(99.0)
        await until(lambda: events, 10, "the firing alert event")
        received_at, firing = events[0]
        print(f"\npublish → firing alert event: {(received_at - sent) * 1000:.1f} ms")
        assert firing.status == "firing"
        assert firing.rule == "E2EHighCPU"
        assert firing.host == HOST
        assert firing.severity == "critical"
        assert firing.value == 99.0
        assert firing.annotations["summary"] == f"CPU 99.0% on {HOST}"

        await until(lambda: "firing" in statuses(receiver), 15, "the webhook POST for firing")

        # Staying high is not a new alert.
        await publish(98.0)
        await asyncio.sleep(0.5)
        assert [e.status for _, e in events] == ["firing"]

        await publish(10.0)
        await until(lambda: len(events) >= 2, 10, "the resolved alert event")
        await publish(5.0)
        await asyncio.sleep(1.0)
        assert [e.status for _, e in events] == ["firing", "resolved"]
        assert events[1][1].id == firing.id
        await until(lambda: "resolved" in statuses(receiver), 15, "the webhook POST for resolved")
        assert statuses(receiver).count("firing") == 1
        assert statuses(receiver).count("resolved") == 1
    finally:
        await nc.close()

    # The gateway stored the samples and the alert.
    def stored() -> Any:
        series = api(
            running, "/api/v1/query", host=HOST, metric="cpu.usage_percent", step="raw", **{"from": "-10m"}
        )["series"]
        return series and len(series[0]["points"]) >= 4 and series

    series = wait_until(stored, 15, "samples in the API", running)
    assert [p[1] for p in series[0]["points"]] == [99.0, 98.0, 10.0, 5.0]

    def resolved_alert() -> Any:
        alerts = [a for a in api(running, "/api/v1/alerts", host=HOST)["alerts"] if a["id"] == firing.id]
        return alerts and alerts[0]["status"] == "resolved" and alerts

    alert = wait_until(resolved_alert, 15, "the resolved alert in the API", running)[0]
    assert alert["rule"] == "E2EHighCPU"
    assert alert["severity"] == "critical"


def test_agent_for_this_host_is_visible(running: Stack) -> None:
    this_host = socket.gethostname()

    def seen() -> Any:
        hosts = {h["host"]: h for h in api(running, "/api/v1/hosts")["hosts"]}
        return this_host in hosts and hosts[this_host]

    host = wait_until(seen, 20, "this host in /api/v1/hosts", running)
    assert host["status"] == "up"
    series = wait_until(
        lambda: api(running, "/api/v1/query", host=this_host, metric="mem.used_percent")["series"],
        20,
        "this host's memory samples",
        running,
    )
    assert all(0 <= v <= 100 for _, v in series[0]["points"])


def test_api_refuses_requests_without_a_valid_token(running: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = httpx.get(f"{running.gateway_url}/api/v1/hosts", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


def test_token_file_is_private(running: Stack) -> None:
    assert Path(running.token_file).stat().st_mode & 0o077 == 0

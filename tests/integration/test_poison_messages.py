"""Poison never spreads: a message no decoder can read is counted, logged and terminated, and
every other message of its round is still stored or evaluated, exactly once.

Once, one batch whose host held a byte that is not UTF-8 raised ``UnicodeDecodeError`` in
the gateway's decoder: the whole ingest round was never acknowledged, came back until
``max_deliver`` and was then lost (1 bad + 20 good batches: 18 stored), HTTP ingest answered
500 for the same bytes, and the evaluator counted nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService
from signalfire.events import (
    AgentStatus,
    AlertEvent,
    DeliveryResult,
    Event,
    EventBatch,
    MetricBatch,
    Sample,
    encode,
)
from signalfire.gateway.ingest import METRICS_CONSUMER
from signalfire.notifier.service import ACTIONS_DURABLE, DURABLE
from tests.hostile import Raw, deep, dump, not_utf8_payload
from tests.integration.gateway_support import RunningGateway, eventually, gateway_config, running_gateway
from tests.integration.test_gateway_live import ws_url
from tests.integration.test_notifier_delivery import (
    config_for,
    make_alert,
    receiver,
    results,
    started,
)
from tests.support.alerts import publish_alert
from tests.support.metrics import value
from tests.support.polling import wait_until
from tests.support.webhook import WebhookReceiver

__all__ = ["receiver", "results"]  # fixtures shared with the notifier's delivery tests

NOW = time.time()
GOOD = 20


def good_payload(kind: str, i: int) -> tuple[str, bytes]:
    """The ``i``-th good message of ``kind``, as (host, payload)."""
    if kind == "metrics":
        batch = MetricBatch(
            host="web-1",
            time=NOW - 100 + i,
            samples=[
                Sample(name="cpu.usage_percent", value=float(i)),
                Sample(name="mem.used_percent", value=1),
            ],
        )
        return "web-1", encode(batch)
    if kind == "events":
        events = EventBatch(
            host="web-1", time=NOW - 100 + i, events=[Event(type="login.failed", message=str(i))]
        )
        return "web-1", encode(events)
    status = AgentStatus(host=f"web-{i}", status="online", time=NOW - 100 + i, interval=5.0)
    return f"web-{i}", encode(status)


async def count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


STORED = {
    "metrics": "SELECT count(*) FROM samples",
    "events": "SELECT count(*) FROM events",
    "agents": "SELECT count(*) FROM hosts",
}
PER_MESSAGE = {"metrics": 2, "events": 1, "agents": 1}


@pytest.mark.parametrize("kind", ["metrics", "events", "agents"])
async def test_one_message_not_utf8_in_a_round_of_twenty_good_ones_costs_only_itself(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path, kind: str
) -> None:
    js = nc.jetstream()
    subjects = nats_config.subjects
    subject_of = {"metrics": subjects.metrics, "events": subjects.events, "agents": subjects.agents}[kind]
    # Published before the gateway starts, so its first fetch takes all 21 in one round.
    for i in range(GOOD + 1):
        if i == 7:
            _, good = good_payload(kind, i)
            example = msgspec.json.decode(good)
            await js.publish(subject_of("web-1"), not_utf8_payload(example, "host"))
            continue
        host, payload = good_payload(kind, i)
        await js.publish(subject_of(host), payload)
    config = gateway_config(nats_config, database_url, tmp_path, fetch_batch=100)
    async with running_gateway(config) as gw:

        async def all_settled() -> Any:
            assert gw.counter("ingest_messages_total", kind=kind) == GOOD
            assert gw.counter("ingest_rejected_total", reason="invalid_payload") == 1
            info = await js.consumer_info(subjects.metrics_stream, METRICS_CONSUMER)
            assert (info.num_ack_pending, info.num_pending) == (0, 0)
            return info

        info = await eventually(all_settled)
        assert gw.counter("ingest_rounds_total", consumer=METRICS_CONSUMER) >= 1
        await asyncio.sleep(0.5)  # nothing comes back: the bad one was terminated, not left to time out
        info = await js.consumer_info(subjects.metrics_stream, METRICS_CONSUMER)
        assert info.num_redelivered == 0
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
        assert gw.counter("ingest_messages_total", kind=kind) == GOOD
    assert await count(database_url, STORED[kind]) == GOOD * PER_MESSAGE[kind]


async def test_an_idle_ingest_writes_no_warning(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # A short fetch_timeout makes many time-outs, and the kind nats-py raises as the builtin
    # TimeoutError (the server's "no messages" answer arriving at the deadline) is frequent.
    config = gateway_config(nats_config, database_url, tmp_path, fetch_timeout=Duration(0.02))
    async with running_gateway(config) as gw:
        caplog.clear()  # start-up may warn (the first admin token); idling must not
        await asyncio.sleep(3)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [(r.name, r.getMessage()) for r in warnings] == []
        assert gw.counter("bus_errors_total", consumer=METRICS_CONSUMER) == 0


async def post(gw: RunningGateway, path: str, body: bytes) -> httpx.Response:
    async with gw.client() as http:
        return await http.post(path, content=body, headers={"Content-Type": "application/json"})


async def test_http_ingest_answers_400_naming_the_problem_and_the_next_request_is_stored(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    _, good = good_payload("metrics", 1)
    metrics = msgspec.json.decode(good)
    _, good_events = good_payload("events", 1)
    events = msgspec.json.decode(good_events)
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        cases = [
            ("/api/v1/ingest/metrics", not_utf8_payload(metrics, "host"), "not UTF-8 JSON", "body"),
            ("/api/v1/ingest/events", not_utf8_payload(events, "host"), "not UTF-8 JSON", "body"),
            ("/api/v1/ingest/metrics", b"\xff\xfe{}", "JSON is malformed", "body"),
            (
                "/api/v1/ingest/metrics",
                dump({**metrics, "x": Raw(deep(100_000))}),
                "nested too deeply",
                "body",
            ),
            ("/api/v1/ingest/events", dump({**events, "host": "web/1"}), "without '/'", "host"),
        ]
        for path, body, says, field in cases:
            answer = await post(gw, path, body)
            assert answer.status_code == 400, (path, answer.text)
            error = answer.json()["error"]
            assert (error["code"], error["field"]) == ("invalid_parameter", field)
            assert says in error["message"]
        accepted = await post(gw, "/api/v1/ingest/metrics", good)
        assert accepted.status_code == 202

        async def stored() -> None:
            assert await count(database_url, STORED["metrics"]) == 2

        await eventually(stored)
        counted = gw.counter(
            "http_requests_total", method="POST", route="/api/v1/ingest/metrics", status="400"
        )
        assert counted == 3


async def test_a_stream_client_sending_bytes_that_are_not_a_message_is_closed_with_the_reason(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        async with websockets.connect(ws_url(gw, gw.token)) as ws:
            await ws.send(b'{"subscribe": {"hosts": ["web-\xff"]}}')
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason[:33]) == (
            4400,
            "bad subscription: not UTF-8 JSON:",
        )

        # After a good subscription, garbage ends the connection too, with the reason.
        async with websockets.connect(ws_url(gw, gw.token)) as ws:
            await ws.send(b'{"subscribe": {"hosts": ["web-1"]}}')
            await ws.recv()  # hello
            await ws.send(b"{not json")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            4400,
            "bad subscription: JSON is malformed: object keys must be strings (byte 1)",
        )
        assert gw.counter("stream_messages_rejected_total") == 2


RULES = """\
rules:
  - name: HighCPU
    metric: cpu.usage_percent
    condition: "> 90"
    severity: critical
"""


@contextlib.asynccontextmanager
async def evaluator(nats_config: NatsConfig, tmp_path: Path) -> AsyncIterator[EvaluatorService]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service = EvaluatorService(
        EvaluatorConfig(
            nats=nats_config, rules=[str(rules)], tick_interval=Duration(0.05), watch_interval=Duration(0)
        )
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_the_evaluator_counts_a_batch_not_utf8_and_still_alerts_on_the_next(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    alerts = await nc.jetstream().subscribe(nats_config.subjects.alerts("web-1"), ordered_consumer=True)
    good = MetricBatch(host="web-1", time=NOW, samples=[Sample(name="cpu.usage_percent", value=99.0)])
    async with evaluator(nats_config, tmp_path) as service:
        subject = nats_config.subjects.metrics("web-1")
        await nc.publish(subject, not_utf8_payload(msgspec.to_builtins(good), "host"))
        await nc.publish(subject, deep(100_000))
        await nc.publish(subject, encode(good))
        event = msgspec.json.decode((await alerts.next_msg(timeout=10)).data, type=AlertEvent)
        assert (event.status, event.rule, event.host) == ("firing", "HighCPU", "web-1")
        assert value(service.registry, "signalfire_evaluator_invalid_batches_total") == 2
        assert value(service.registry, "signalfire_evaluator_batches_total", kind="metrics") == 1


async def test_the_evaluator_skips_and_counts_alert_states_it_cannot_read(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("alert_state"))
    await kv.put("not-utf8", b'{"state": {"rule": "HighCPU\xff"}}')
    await kv.put("deep", deep(100_000))
    await kv.put("garbage", b"{not json")
    async with evaluator(nats_config, tmp_path) as service:

        async def all_three_counted() -> None:
            # (read as the partitions are taken, which may finish after the service started)
            assert value(service.registry, "signalfire_evaluator_invalid_states_total") == 3

        await eventually(all_three_counted, timeout=10)
    for key in ("not-utf8", "deep", "garbage"):
        await kv.delete(key)


async def test_the_notifier_terminates_alert_events_it_cannot_read_and_delivers_the_next(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, results: list[DeliveryResult]
) -> None:
    service = await started(config_for(nats_config, receiver), nc)
    try:
        js = nc.jetstream()
        alert = make_alert(id="good")
        subject = nats_config.subjects.alerts(alert.host)
        await js.publish(subject, not_utf8_payload(msgspec.to_builtins(make_alert(id="bad")), "rule"))
        await js.publish(subject, deep(100_000))
        await js.publish(
            nats_config.subjects.actions, not_utf8_payload({"alert_id": "good", "actor": "x"}, "actor")
        )
        await publish_alert(nc, nats_config, alert)
        await wait_until(lambda: len(results) == 1, "the good delivery", timeout=15)
        await wait_until(
            lambda: (
                value(service.registry, "signalfire_notifier_rejected_messages_total", reason="malformed")
                == 3
            ),
            "three rejections",
            timeout=15,
        )

        async def acked() -> bool:  # the good event once its delivery is recorded
            infos = [
                await js.consumer_info(nats_config.subjects.alerts_stream, d)
                for d in (DURABLE, ACTIONS_DURABLE)
            ]
            return all(i.num_ack_pending == 0 and i.num_pending == 0 for i in infos)

        await wait_until(acked, "every message acknowledged or terminated", timeout=10)
        infos = [
            await js.consumer_info(nats_config.subjects.alerts_stream, d) for d in (DURABLE, ACTIONS_DURABLE)
        ]
    finally:
        await service.stop()
    assert [b["alert"]["id"] for b in receiver.bodies("hook")] == ["good"]
    assert [(i.num_ack_pending, i.num_redelivered) for i in infos] == [(0, 0), (0, 0)]

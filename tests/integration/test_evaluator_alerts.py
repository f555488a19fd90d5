"""The evaluator against a real nats-server: metric batches in, alert events out."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import msgspec
import pytest

from signalfire.bus import NatsConfig, request_json
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService, StoredAlert
from signalfire.evaluator.state import AlertState, fingerprint
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode
from tests.faults.support import eventually
from tests.support.evaluator import running_evaluator
from tests.support.metrics import buckets, families, samples, total, value

HOST = "web-1.example"

RULES = """\
rules:
  - name: HighCPU
    metric: cpu.usage_percent
    where: {role: "web*"}
    condition: "> 90"
    resolve: "< 70"
    severity: critical
    labels: {team: ops}
    annotations:
      summary: "CPU {{ value | round(1) }}% on {{ host }} ({{ labels.env }})"
      runbook_url: https://wiki.example/cpu
  - name: HighMemory
    metric: mem.used_percent
    condition: "> 85"
    for: 300ms
    severity: high
"""


@pytest.fixture
def config(tmp_path: Path, nats_config: NatsConfig) -> EvaluatorConfig:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return EvaluatorConfig(nats=nats_config, rules=[str(rules)], tick_interval=Duration(0.05))


class AlertStream:
    """Reads alert events for one host back from the SF_ALERTS stream, in stream order."""

    def __init__(self, sub) -> None:
        self.sub = sub

    @classmethod
    async def open(cls, nc, config: NatsConfig, host: str = HOST) -> AlertStream:
        sub = await nc.jetstream().subscribe(config.subjects.alerts(host), ordered_consumer=True)
        return cls(sub)

    async def next(self) -> tuple[AlertEvent, str]:
        msg = await self.sub.next_msg(timeout=10)
        return decode(msg.data, AlertEvent), (msg.headers or {}).get("Nats-Msg-Id", "")


_TIMES = itertools.count(1_763_794_800)


async def send(nc, config: NatsConfig, *samples: Sample, host: str = HOST, time: float | None = None) -> None:
    """A batch as an agent sends it: each at a time of its own (the same batch again within two
    minutes is a publisher's retry, judged once)."""
    at = float(next(_TIMES)) if time is None else time
    batch = MetricBatch(host=host, time=at, labels={"env": "prod", "role": "web"}, samples=list(samples))
    await nc.publish(config.subjects.metrics(host), encode(batch))
    await nc.flush()


def cpu(value: float) -> Sample:
    return Sample(name="cpu.usage_percent", value=value)


async def test_high_cpu_fires_once_and_resolves_once(nc, nats_config, config):
    alerts = await AlertStream.open(nc, nats_config)
    async with running_evaluator(config) as service:
        await send(nc, nats_config, cpu(99.0), Sample(name="mem.used_percent", value=10))
        firing, msg_id = await alerts.next()
        assert firing.status == "firing"
        assert firing.rule == "HighCPU"
        assert firing.severity == "critical"
        assert firing.host == HOST
        assert firing.value == 99.0
        assert firing.threshold == 90.0
        assert firing.labels == {"env": "prod", "role": "web", "team": "ops"}
        assert firing.annotations == {
            "summary": "CPU 99.0% on web-1.example (prod)",
            "runbook_url": "https://wiki.example/cpu",
        }
        assert firing.fingerprint == fingerprint("HighCPU", HOST, {})
        assert firing.id.startswith(firing.fingerprint + ":")
        assert firing.seq == 1
        assert firing.ends_at is None
        assert msg_id == f"{firing.id}:firing"

        # still high, then inside the hysteresis band: no new event
        await send(nc, nats_config, cpu(97.0))
        await send(nc, nats_config, cpu(80.0))
        await send(nc, nats_config, cpu(50.0))
        resolved, msg_id = await alerts.next()  # the very next event in the stream
        assert resolved.status == "resolved"
        assert resolved.id == firing.id
        assert resolved.starts_at == firing.starts_at
        assert resolved.ends_at is not None and resolved.ends_at >= firing.starts_at
        assert resolved.value == 50.0
        assert resolved.seq == 2
        assert msg_id == f"{firing.id}:resolved"

        events = "signalfire_evaluator_alert_events_total"
        # counted once the stream's acknowledgement is back, which may come after the event
        # has reached the stream's consumers (this test's subscription)
        await eventually(
            lambda: value(service.registry, events, status="resolved") == 1, "the resolved event counted", 5
        )
        assert value(service.registry, events, status="firing") == 1
        # one latency observation per alert event published
        assert value(service.registry, "signalfire_evaluator_alert_publish_latency_seconds_count") == 2


async def test_where_matchers_filter_series(nc, nats_config, config):
    alerts = await AlertStream.open(nc, nats_config, "db-1")
    async with running_evaluator(config):
        batch = MetricBatch(host="db-1", time=1.0, labels={"role": "db"}, samples=[cpu(99.0)])
        await nc.publish(nats_config.subjects.metrics("db-1"), encode(batch))
        # role "db" does not match "web*"; the memory rule (no matchers) does fire for db-1
        batch = MetricBatch(host="db-1", time=2.0, samples=[Sample(name="mem.used_percent", value=99)])
        await nc.publish(nats_config.subjects.metrics("db-1"), encode(batch))
        event, _ = await alerts.next()
        assert event.rule == "HighMemory"


async def test_for_expires_on_the_timer_without_another_sample(nc, nats_config, config):
    alerts = await AlertStream.open(nc, nats_config)
    async with running_evaluator(config):
        await send(nc, nats_config, Sample(name="mem.used_percent", value=90.0))
        event, _ = await alerts.next()
        assert (event.rule, event.status, event.value, event.severity) == (
            "HighMemory",
            "firing",
            90.0,
            "high",
        )


async def test_restart_neither_repeats_a_firing_nor_loses_the_resolve(nc, nats_config, config):
    alerts = await AlertStream.open(nc, nats_config)
    async with running_evaluator(config):
        await send(nc, nats_config, cpu(99.0))
        firing, _ = await alerts.next()
        assert firing.status == "firing"

    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("alert_state"))
    stored = msgspec.json.decode((await kv.get(firing.fingerprint)).value, type=StoredAlert)
    assert stored.state.status == "firing"
    assert stored.state.alert_id == firing.id
    assert stored.outbox == []

    async with running_evaluator(config) as second:
        rules = await request_json(nc, nats_config.subjects.control("evaluator", "rules"))
        (cpu_rule,) = [r for r in rules["rules"] if r["name"] == "HighCPU"]
        assert [a["alert_id"] for a in cpu_rule["alerts"]] == [firing.id]
        assert cpu_rule["condition"] == "> 90"
        assert cpu_rule["resolve"] == "< 70"

        await send(nc, nats_config, cpu(98.0))  # still firing: must not fire again
        await send(nc, nats_config, cpu(10.0))
        resolved, _ = await alerts.next()
        assert resolved.status == "resolved"
        assert resolved.id == firing.id
        assert resolved.seq == 2
        assert value(second.registry, "signalfire_evaluator_alert_events_total", status="firing") == 0


async def test_an_outbox_left_by_a_crash_is_published_once_at_start(nc, nats_config, config):
    alerts = await AlertStream.open(nc, nats_config)
    fp = fingerprint("HighCPU", HOST, {})
    event = AlertEvent(
        id=f"{fp}:1000",
        fingerprint=fp,
        rule="HighCPU",
        status="firing",
        severity="critical",
        host=HOST,
        starts_at=1.0,
        time=1.0,
        value=99.0,
        threshold=90.0,
        seq=1,
    )
    state = AlertState(
        rule="HighCPU",
        fingerprint=fp,
        host=HOST,
        status="firing",
        alert_id=event.id,
        active_since=1.0,
        fired_at=1.0,
        value=99.0,
        seq=1,
        last_seen=1.0,
    )
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("alert_state"))
    # the crashed evaluator had published the event already; the stream must drop the repeat
    await nc.jetstream().publish(
        nats_config.subjects.alerts(HOST), encode(event), headers={"Nats-Msg-Id": f"{event.id}:firing"}
    )
    await kv.put(fp, msgspec.json.encode(StoredAlert(state=state, outbox=[event])))

    async with running_evaluator(config) as service:
        first, _ = await alerts.next()
        assert first.id == event.id
        await send(nc, nats_config, cpu(10.0))
        resolved, _ = await alerts.next()  # the repeat was dropped: next is the resolve
        assert (resolved.status, resolved.id) == ("resolved", event.id)
        assert value(service.registry, "signalfire_evaluator_alert_duplicates_total") == 1
    stored = msgspec.json.decode((await kv.get(fp)).value, type=StoredAlert)
    assert stored.outbox == []
    assert stored.state.status == "inactive"


async def test_malformed_batches_are_counted_and_skipped(nc, nats_config, config):
    alerts = await AlertStream.open(nc, nats_config)
    async with running_evaluator(config) as service:
        subject = nats_config.subjects.metrics(HOST)
        await nc.publish(subject, b"{not json")
        await nc.publish(subject, b'{"host": "x", "time": 1, "samples": [{"name": "cpu.usage_percent"}]}')
        await send(nc, nats_config, cpu(99.0))
        event, _ = await alerts.next()
        assert event.status == "firing"
        assert value(service.registry, "signalfire_evaluator_invalid_batches_total") == 2
        assert value(service.registry, "signalfire_evaluator_batches_total", kind="metrics") == 1


async def test_unreadable_rules_stop_the_start(nats_config, tmp_path):
    from signalfire.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: A, metric: m, condition: '>> 1', severity: low}\n")
    service = EvaluatorService(EvaluatorConfig(nats=nats_config, rules=[str(bad)]))
    with pytest.raises(ConfigError, match=r"bad.yaml:2: rules\[0\].condition"):
        await service.start()
    await service.stop()


async def test_metrics_endpoint_serves_the_registry(nc, nats_config, config):
    from devstack import free_port

    port = free_port()
    config = msgspec.structs.replace(config, metrics_listen=f"127.0.0.1:{port}")
    alerts = await AlertStream.open(nc, nats_config)
    async with running_evaluator(config):
        for level in (99.0, 50.0, 99.0):  # fires, resolves, fires again
            await send(nc, nats_config, cpu(level))
            await alerts.next()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = (await reader.read()).decode().partition("\r\n\r\n")[2]
        writer.close()
    found = samples(body)  # prometheus_client's parser: the page must parse
    assert total(found, "signalfire_evaluator_rules") == 2
    published = total(found, "signalfire_evaluator_alert_events_total")
    assert published == 3
    latency = families(body)["signalfire_evaluator_alert_publish_latency_seconds"]
    assert latency.type == "histogram"
    observed = buckets(latency)
    assert len(observed) > 1 and observed[-1] == (float("inf"), published)  # one per event published
    assert total(found, "signalfire_evaluator_alert_publish_latency_seconds_count") == published

"""The evaluator's operations against a real nats-server: reloads, events, agent statuses,
series limits and acks."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import nats.errors
import pytest

from signalfire.bus import NatsConfig, request_json
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorConfig
from signalfire.events import (
    AgentStatus,
    AlertAction,
    AlertEvent,
    Event,
    EventBatch,
    MetricBatch,
    Sample,
    decode,
    encode,
)
from tests.support.evaluator import running_evaluator
from tests.support.metrics import value

RULES = """\
rules:
  - {name: Hot, metric: temp, condition: "> 50", severity: low}
"""


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def make_config(nats_config: NatsConfig, rules_file: Path, **extra: object) -> EvaluatorConfig:
    return EvaluatorConfig(
        nats=nats_config,
        rules=[str(rules_file)],
        tick_interval=Duration(0.05),
        **extra,  # type: ignore[arg-type]
    )


async def alerts(nc, config: NatsConfig):
    return await nc.jetstream().subscribe(config.subjects.all_alerts, ordered_consumer=True)


async def next_alert(sub) -> AlertEvent:
    msg = await sub.next_msg(timeout=10)
    return decode(msg.data, AlertEvent)


_TIMES = itertools.count(1)


async def metric(nc, config: NatsConfig, name: str, value: float, host: str = "h1") -> None:
    """A batch as an agent sends it: each at a time of its own (the same batch again within two
    minutes is a publisher's retry, judged once)."""
    batch = MetricBatch(host=host, time=float(next(_TIMES)), samples=[Sample(name=name, value=value)])
    await nc.publish(config.subjects.metrics(host), encode(batch))
    await nc.flush()


async def test_reload_request_swaps_rules_and_a_bad_file_keeps_the_old_ones(nc, nats_config, rules_file):
    sub = await alerts(nc, nats_config)
    async with running_evaluator(make_config(nats_config, rules_file, watch_interval=Duration(0))):
        reload = nats_config.subjects.control("evaluator", "reload")
        rules_file.write_text(RULES + "  - {name: Cold, metric: temp, condition: '< 0', severity: low}\n")
        reply = await request_json(nc, reload)
        assert reply["ok"] is True and reply["rules"] == 2

        rules_file.write_text("rules:\n  - {name: Hot, metric: temp, condition: '>> 1', severity: low}\n")
        reply = await request_json(nc, reload)
        assert reply["ok"] is False
        assert f"{rules_file}:2: rules[0].condition" in reply["error"]
        assert reply["rules"] == 2  # still running the previous rules

        await metric(nc, nats_config, "temp", -5)
        event = await next_alert(sub)
        assert (event.rule, event.status) == ("Cold", "firing")
        described = await request_json(nc, nats_config.subjects.control("evaluator", "rules"))
        assert [r["name"] for r in described["rules"]] == ["Hot", "Cold"]
        assert described["last_reload"]["ok"] is False


async def test_a_changed_rule_file_is_reloaded_and_removed_rules_resolve(nc, nats_config, rules_file):
    sub = await alerts(nc, nats_config)
    async with running_evaluator(
        make_config(nats_config, rules_file, watch_interval=Duration(0.05))
    ) as service:
        await metric(nc, nats_config, "temp", 60)
        firing = await next_alert(sub)
        assert firing.status == "firing"
        rules_file.write_text("rules:\n  - {name: Other, metric: temp, condition: '> 100', severity: low}\n")
        os.utime(rules_file, (1, 1))  # a different mtime even within the file system's resolution
        resolved = await next_alert(sub)
        assert (resolved.rule, resolved.status, resolved.id) == ("Hot", "resolved", firing.id)
        assert [r.name for r in service.rules] == ["Other"]
        assert value(service.registry, "signalfire_evaluator_reloads_total", result="ok") == 1


async def test_event_counts_fire_from_event_batches(nc, nats_config, rules_file):
    rules_file.write_text(
        "rules:\n  - {name: Logins, kind: event_count, event: auth.login_failed, window: 1m, "
        "condition: '> 2', severity: medium}\n"
    )
    sub = await alerts(nc, nats_config)
    async with running_evaluator(make_config(nats_config, rules_file)):
        events = [Event(type="auth.login_failed", labels={"user": "root"}) for _ in range(3)]
        batch = EventBatch(host="h1", time=1.0, events=[Event(type="deploy"), *events])
        await nc.publish(nats_config.subjects.events("h1"), encode(batch))
        event = await next_alert(sub)
        assert (event.rule, event.status, event.value, event.host) == ("Logins", "firing", 3.0, "h1")


async def test_a_clean_offline_status_is_not_an_outage(nc, nats_config, rules_file):
    rules_file.write_text("rules:\n  - {name: Down, kind: absent, for: 300ms, severity: critical}\n")
    sub = await alerts(nc, nats_config)
    async with running_evaluator(make_config(nats_config, rules_file)) as service:
        await metric(nc, nats_config, "temp", 1, host="quiet")
        await metric(nc, nats_config, "temp", 1, host="leaving")
        status = AgentStatus(host="leaving", status="offline", time=1.0)
        await nc.publish(nats_config.subjects.agents("leaving"), encode(status))
        await nc.flush()
        event = await next_alert(sub)
        assert (event.rule, event.host, event.status) == ("Down", "quiet", "firing")
        await asyncio.sleep(0.5)
        with pytest.raises(nats.errors.TimeoutError):  # no alert for the host that left cleanly
            await sub.next_msg(timeout=0.3)
        await metric(nc, nats_config, "temp", 1, host="quiet")
        event = await next_alert(sub)
        assert (event.host, event.status) == ("quiet", "resolved")
        assert service.engine.series_count("Down") == 1


async def test_a_label_explosion_is_capped_counted_and_reported(nc, nats_config, rules_file):
    rules_file.write_text("rules:\n  - {name: Hot, metric: temp, condition: '> 50', severity: low}\n")
    events = await nc.subscribe(nats_config.subjects.all_events)
    async with running_evaluator(make_config(nats_config, rules_file, max_series_per_rule=3)) as service:
        batch = MetricBatch(
            host="h1",
            time=1.0,
            samples=[Sample(name="temp", value=60, labels={"id": str(i)}) for i in range(10)],
        )
        await nc.publish(nats_config.subjects.metrics("h1"), encode(batch))
        msg = await events.next_msg(timeout=10)
        report = decode(msg.data, EventBatch)
        assert report.events[0].type == "evaluator.series_limit"
        assert report.events[0].labels == {"rule": "Hot"}
        assert "3 series" in report.events[0].message
        assert value(service.registry, "signalfire_evaluator_series_dropped_total", rule="Hot") == 7
        assert service.engine.series_count("Hot") == 3


async def test_bad_payloads_on_every_subject_are_counted(nc, nats_config, rules_file):
    async with running_evaluator(make_config(nats_config, rules_file)) as service:
        s = nats_config.subjects
        await nc.publish(s.events("h1"), b'{"host": "h1"}')
        await nc.publish(s.agents("h1"), b'{"host": "h1", "status": "asleep", "time": 1}')
        await nc.publish(s.actions, b"[]")
        await nc.publish(
            s.metrics("h1"), b'{"host": "h1", "time": 1, "samples": [{"name": "temp", "value": 1e999}]}'
        )
        await nc.flush()
        invalid = "signalfire_evaluator_invalid_batches_total"
        for _ in range(100):
            if value(service.registry, invalid) == 4:
                break
            await asyncio.sleep(0.02)
        assert value(service.registry, invalid) == 4


async def test_an_ack_is_carried_on_the_resolve(nc, nats_config, rules_file):
    sub = await alerts(nc, nats_config)
    async with running_evaluator(make_config(nats_config, rules_file)):
        await metric(nc, nats_config, "temp", 60)
        firing = await next_alert(sub)
        action = AlertAction(alert_id=firing.id, action="ack", actor="ana", time=5.0)
        await nc.publish(nats_config.subjects.actions, encode(action))
        await nc.flush()
        await asyncio.sleep(0.1)
        await metric(nc, nats_config, "temp", 10)
        resolved = await next_alert(sub)
        assert resolved.annotations["acknowledged_by"] == "ana"


async def test_a_resolve_by_hand_ends_the_alert_and_a_still_hot_series_fires_anew(
    nc, nats_config, rules_file
):
    sub = await alerts(nc, nats_config)
    async with running_evaluator(make_config(nats_config, rules_file)) as service:
        await metric(nc, nats_config, "temp", 60)
        firing = await next_alert(sub)
        action = AlertAction(alert_id=firing.id, action="resolve", actor="ana", time=5.0)
        await nc.publish(nats_config.subjects.actions, encode(action))
        await nc.flush()
        resolved = await next_alert(sub)
        assert (resolved.status, resolved.id) == ("resolved", firing.id)
        assert resolved.annotations["resolved_by"] == "ana"
        described = await request_json(nc, nats_config.subjects.control("evaluator", "rules"))
        assert described["rules"][0]["alerts"] == []

        await metric(nc, nats_config, "temp", 61)  # still hot: a new alert
        again = await next_alert(sub)
        assert again.status == "firing" and again.id != firing.id
        assert service.engine.states[again.fingerprint].alert_id == again.id

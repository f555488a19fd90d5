"""Poison on every subject: bad messages interleaved with good ones on the metrics, events,
agents, alerts, actions and notifications subjects, read by a real gateway, evaluator and
notifier. Every good message is processed, every bad one is counted once by each service
that reads it and terminated, and nothing is redelivered."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from devstack import ServiceProcess, free_port

from signalfire.bus import NatsConfig, connect
from signalfire.events import (
    AgentStatus,
    AlertAction,
    DeliveryResult,
    Event,
    EventBatch,
    MetricBatch,
    Sample,
)
from tests.faults.support import (
    as_identity,
    consumer_numbers,
    eventually,
    fetch_count,
    gateway_process,
    log_tail,
    report,
    service_env,
    wait_evaluator,
    write,
)
from tests.support.alerts import firing_alert
from tests.support.metrics import scrape, total
from tests.support.streams import stream_messages
from tests.support.webhook import WebhookReceiver

HOST = "poison-h"
GOOD = 6  # good messages per subject, with a bad one between each two
KINDS = ("metrics", "events", "agents", "alerts", "actions", "notifications")
#: The services that decode each subject (the gateway reads them all).
EVALUATOR_READS = ("metrics", "events", "agents", "actions")
NOTIFIER_READS = ("alerts", "actions")
HUGE_STRING = "x" * 900_000  # under NATS's 1 MB max_payload, far over every field's limit
HUGE_NUMBER = 10**30  # a valid JSON integer no field can hold
MARK = "@@MARK@@"  # replaced by bytes that are not UTF-8


def good(kind: str, i: int) -> dict[str, Any]:
    """The ``i``-th good payload on ``kind``'s subject, as plain JSON data."""
    now = time.time()
    payload: msgspec.Struct
    if kind == "metrics":
        payload = MetricBatch(
            host=HOST, time=now - 600 + i, samples=[Sample(name="fault.poison", value=i + 1.0)]
        )
    elif kind == "events":
        payload = EventBatch(host=HOST, time=now, events=[Event(type="fault.poison", time=now - 600 + i)])
    elif kind == "agents":
        payload = AgentStatus(host=HOST, status="online", time=now - 600 + i)
    elif kind == "alerts":
        payload = firing_alert(
            f"poison-alert-{i}", now=now, fingerprint=f"poison-fp-{i}", rule="PoisonByHand", host=HOST
        )
    elif kind == "actions":
        payload = AlertAction(
            alert_id="poison-alert-0", action="note", actor="fault suite", time=now, note=f"n{i}"
        )
    else:
        payload = DeliveryResult(
            alert_id=f"poison-alert-{i}", channel="elsewhere", status="sent", attempt=1, time=now
        )
    data: dict[str, Any] = msgspec.to_builtins(payload)
    return data


def _non_utf8(kind: str) -> bytes:
    data = good(kind, 0)
    where: dict[str, Callable[[dict[str, Any]], None]] = {
        "metrics": lambda d: d["samples"][0].update(labels={"l": MARK}),
        "events": lambda d: d["events"][0].update(message=MARK),
        "agents": lambda d: d["facts"].update(os=MARK),
        "alerts": lambda d: d.update(annotations={"summary": MARK}),
        "actions": lambda d: d.update(note=MARK),
        "notifications": lambda d: d.update(error=MARK),
    }
    where[kind](data)
    return json.dumps(data).encode().replace(MARK.encode(), b"caf\xe9 \xff\xfe")


def _huge_number(kind: str) -> bytes:
    data = good(kind, 0)
    where: dict[str, Callable[[dict[str, Any]], None]] = {
        "metrics": lambda d: d["samples"][0].update(value=HUGE_NUMBER**14),  # 1e420: not a finite double
        "events": lambda d: d["events"][0].update(time=HUGE_NUMBER),
        "agents": lambda d: d["facts"].update(cpu_count=HUGE_NUMBER),
        "alerts": lambda d: d.update(seq=HUGE_NUMBER),
        "actions": lambda d: d.update(time=HUGE_NUMBER),
        "notifications": lambda d: d.update(attempt=HUGE_NUMBER),
    }
    where[kind](data)
    return json.dumps(data).encode()


def _huge_string(kind: str) -> bytes:
    data = good(kind, 0)
    field = {"actions": "actor", "notifications": "alert_id"}.get(kind, "host")
    data[field] = HUGE_STRING
    return json.dumps(data).encode()


def bad(kind: str) -> dict[str, bytes]:
    """Five poisons for ``kind``'s subject, by name."""
    whole = json.dumps(good(kind, 0)).encode()
    other = KINDS[(KINDS.index(kind) + 1) % len(KINDS)]
    return {
        "non_utf8": _non_utf8(kind),
        "invalid_json": whole[: len(whole) // 2],
        "wrong_type": json.dumps(good(other, 0)).encode(),  # a valid payload of another subject
        "huge_number": _huge_number(kind),
        "huge_string": _huge_string(kind),
    }


def subject(nats: NatsConfig, kind: str) -> str:
    s = nats.subjects
    return {
        "metrics": s.metrics(HOST),
        "events": s.events(HOST),
        "agents": s.agents(HOST),
        "alerts": s.alerts(HOST),
        "actions": s.actions,
        "notifications": s.notifications("elsewhere"),
    }[kind]


RULES = """\
rules:
  - {name: PoisonMetric, metric: fault.poison, condition: "> 0", severity: high}
"""


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_poison_on_every_subject_is_counted_once_and_spares_every_good_message(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    receiver = WebhookReceiver()
    notify = write(
        tmp_path / "notify.yaml",
        f"channels:\n  hook: {{type: webhook, url: '{receiver.url('hook')}'}}\n"
        "routes:\n  - channels: [hook]\n",
    )
    gateway_port, evaluator_port, notifier_port = free_port(), free_port(), free_port()

    # ack_wait 3 s instead of 30/60 s: a message left unsettled comes back (and shows as
    # redelivered) within the test instead of after it.
    def env(identity: str, **extra: str) -> dict[str, str]:
        return service_env(nats_config, database_url, identity=identity, SF_ACK_WAIT="3s", **extra)

    services: list[ServiceProcess] = []
    # Alert actions may be published by the gateway's identity alone (signalfire.buspolicy):
    # the poisoned ones go out through a connection as the gateway, the rest as the admin.
    actions_nc = await connect(as_identity(nats_config, "gateway"), "fault-actions")
    try:
        gateway = await gateway_process(
            env("gateway", SF_ROLLUP_FLUSH="0.5s", SF_ROLLUP_MERGE="flush"), gateway_port, tmp_path
        )
        services.append(gateway)
        evaluator_env = env(
            "evaluator",
            SF_RULES=str(write(tmp_path / "rules.yaml", RULES)),
            SF_METRICS_LISTEN=f"127.0.0.1:{evaluator_port}",
        )
        evaluator = ServiceProcess("evaluator", ["evaluator"], evaluator_env, tmp_path).start()
        services.append(evaluator)
        notifier_env = env("notifier", SF_METRICS_LISTEN=f"127.0.0.1:{notifier_port}")
        notifier = ServiceProcess(
            "notifier", ["notifier", "--config", str(notify)], notifier_env, tmp_path
        ).start()
        services.append(notifier)
        await wait_evaluator(nc, nats_config, evaluator)
        await eventually(
            lambda: bool(scrape(f"http://127.0.0.1:{notifier_port}/metrics")), "the notifier", 30, notifier
        )

        async def publish(kind: str) -> None:
            poisons = list(bad(kind).values())
            through = actions_nc.jetstream() if kind == "actions" else js
            for i in range(GOOD):
                await through.publish(subject(nats_config, kind), json.dumps(good(kind, i)).encode())
                if i < len(poisons):
                    await through.publish(subject(nats_config, kind), poisons[i])

        for kind in ("metrics", "events", "agents", "alerts"):
            await publish(kind)

        async def alerts_stored() -> bool:
            return await fetch_count(database_url, "SELECT count(*) FROM alerts") >= GOOD + 1

        # The notes name an alert: they are published once it is stored (as people would act).
        alerts_arrived = True
        try:
            await eventually(alerts_stored, "the good alert events to be stored", 20, *services)
        except AssertionError as exc:
            alerts_arrived = False
            print(exc)
        for kind in ("actions", "notifications"):
            await publish(kind)

        async def settled() -> bool:
            consumers = await all_consumers(js, nats_config)
            return all(c["pending"] == 0 and c["ack_pending"] == 0 for c in consumers.values())

        try:
            await eventually(settled, "every consumer to settle its messages", 30, *services)
        except AssertionError as exc:
            print(exc)
        await asyncio.sleep(4)  # past ack_wait: a message left unsettled would be redelivered by now
        consumers = await all_consumers(js, nats_config)
        gw = scrape(f"http://127.0.0.1:{gateway_port}/metrics")
        ev = scrape(f"http://127.0.0.1:{evaluator_port}/metrics")
        nt = scrape(f"http://127.0.0.1:{notifier_port}/metrics")
        in_stream = {
            kind: len(await stream_messages(js, stream_of(nats_config, kind), subject(nats_config, kind)))
            for kind in KINDS
        }
        # the notifier's own delivery results are on the notifications subjects too
        all_results = nats_config.subjects.all_notifications[:-1]
        in_stream["all_notifications"] = len(
            await stream_messages(js, nats_config.subjects.alerts_stream, all_results)
        )
        stored = {
            "samples": await fetch_count(
                database_url,
                "SELECT count(*) FROM samples s JOIN series ON series.id = s.series_id "
                "WHERE series.host = $1",
                HOST,
            ),
            "events": await fetch_count(database_url, "SELECT count(*) FROM events WHERE host = $1", HOST),
            "alerts": await fetch_count(database_url, "SELECT count(*) FROM alerts"),
            "notes": await fetch_count(
                database_url, "SELECT jsonb_array_length(notes) FROM alerts WHERE id = 'poison-alert-0'"
            ),
            "deliveries": await fetch_count(
                database_url, "SELECT count(*) FROM notifications WHERE channel = 'elsewhere'"
            ),
        }
        alive = [s.name for s in services if s.alive()]
    finally:
        for service in reversed(services):
            service.stop()
        await actions_nc.close()
        receiver.close()

    n_bad = len(bad("metrics"))
    hook_firing = sum(1 for b in receiver.bodies("hook") if b.get("status") == "firing")
    fetched = {
        name: int(total(gw, "signalfire_gateway_ingest_fetched_messages_total", consumer=name))
        for name in ("gateway-metrics", "gateway-alerts", "gateway-actions", "gateway-notifications")
    }
    # (counted, expected) bad messages per service: each counts those of the subjects it reads
    rejected = {
        "gateway": (total(gw, "signalfire_gateway_ingest_rejected_total"), n_bad * len(KINDS)),
        "evaluator": (total(ev, "signalfire_evaluator_invalid_batches_total"), n_bad * len(EVALUATOR_READS)),
        "notifier": (total(nt, "signalfire_notifier_rejected_messages_total"), n_bad * len(NOTIFIER_READS)),
    }
    report(
        "poison",
        bad_per_subject=n_bad,
        good_per_subject=GOOD,
        **{f"{name}_rejected": f"{counted:g}/{expected}" for name, (counted, expected) in rejected.items()},
        samples=f"{stored['samples']}/{GOOD}",
        events=f"{stored['events']}/{GOOD}",
        alerts=f"{stored['alerts']}/{GOOD + 1}",
        notes=f"{stored['notes']}/{GOOD}",
        deliveries=f"{stored['deliveries']}/{GOOD}",
        webhooks=f"{hook_firing}/{GOOD + 1}",
        redelivered=sum(c["redelivered"] for c in consumers.values()),
        unsettled=sum(c["ack_pending"] + c["pending"] for c in consumers.values()),
        alive=",".join(alive),
    )
    assert alive == [s.name for s in services], "a service died:\n" + log_tail(*services)
    assert alerts_arrived
    # every good message processed
    assert stored["samples"] == GOOD and stored["events"] == GOOD
    assert stored["alerts"] == GOOD + 1, "the good alert events and the evaluator's one"
    assert stored["notes"] == GOOD and stored["deliveries"] == GOOD
    assert total(gw, "signalfire_gateway_ingest_messages_total", kind="agents") == GOOD
    assert total(ev, "signalfire_evaluator_batches_total", kind="metrics") == GOOD
    assert total(ev, "signalfire_evaluator_batches_total", kind="events") == GOOD
    assert total(ev, "signalfire_evaluator_batches_total", kind="agents") == GOOD
    assert total(ev, "signalfire_evaluator_alert_events_total", status="firing") == 1
    assert total(nt, "signalfire_notifier_alerts_received_total") == GOOD + 1
    assert total(nt, "signalfire_notifier_actions_received_total") == GOOD
    assert hook_firing == GOOD + 1, "a good alert event was not delivered (or twice)"
    # every bad message counted once by each service that reads its subject
    assert all(counted == expected for counted, expected in rejected.values()), rejected
    # and nothing fetched twice or left unsettled
    assert fetched["gateway-metrics"] == in_stream["metrics"] + in_stream["events"] + in_stream["agents"]
    assert fetched["gateway-alerts"] == in_stream["alerts"]
    assert fetched["gateway-actions"] == in_stream["actions"]
    assert fetched["gateway-notifications"] == in_stream["all_notifications"]
    assert all(
        c["redelivered"] == 0 and c["ack_pending"] == 0 and c["pending"] == 0 for c in consumers.values()
    ), consumers


def stream_of(nats: NatsConfig, kind: str) -> str:
    s = nats.subjects
    return s.metrics_stream if kind in ("metrics", "events", "agents") else s.alerts_stream


async def all_consumers(js: Any, nats: NatsConfig) -> dict[str, dict[str, int]]:
    """The delivery accounting of every durable consumer of the gateway and the notifier."""
    s = nats.subjects
    names = [
        (s.metrics_stream, "gateway-metrics"),
        (s.alerts_stream, "gateway-alerts"),
        (s.alerts_stream, "gateway-actions"),
        (s.alerts_stream, "gateway-notifications"),
        (s.alerts_stream, "notifier"),
        (s.alerts_stream, "notifier-actions"),
    ]
    return {name: await consumer_numbers(js, stream, name) for stream, name in names}

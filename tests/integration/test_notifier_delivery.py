"""The notifier against real NATS JetStream and a real HTTP receiver on loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import AlertEvent, DeliveryResult, decode
from signalfire.notifier.channels.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookChannelConfig,
    verify,
)
from signalfire.notifier.cli import notify_test
from signalfire.notifier.config import NotifyConfig, Route
from signalfire.notifier.service import DURABLE, NotifierService
from tests.support.alerts import firing_alert, publish_alert
from tests.support.metrics import value
from tests.support.polling import wait_until
from tests.support.subscriptions import collect
from tests.support.webhook import WebhookReceiver

SECRET = "s3cret-for-tests"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def make_alert(**overrides: Any) -> AlertEvent:
    fields: dict[str, Any] = {
        "host": "web-1.example.com",
        "starts_at": 1_763_794_800.0,
        "time": 1_763_794_860.0,
        "labels": {"team": "ops"},
        "annotations": {"summary": "CPU 93.2% on web-1"},
        "value": 93.2,
        "threshold": 80.0,
    }
    return firing_alert(overrides.pop("id", None), **(fields | overrides))


def config_for(nats_config: NatsConfig, receiver: WebhookReceiver, **channel: Any) -> NotifyConfig:
    hook = WebhookChannelConfig(
        url=receiver.url("hook"), secret_env="HOOK_SECRET", retry_backoff=Duration(0.05), **channel
    )
    return NotifyConfig(nats=nats_config, channels={"hook": hook}, routes=[Route(channels=["hook"])])


@pytest.fixture
async def results(nc: Any, nats_config: NatsConfig) -> list[DeliveryResult]:
    return await collect(nc, nats_config.subjects.notifications("hook"), DeliveryResult)


async def started(config: NotifyConfig, nc: Any) -> NotifierService:
    service = NotifierService(config, nc, environ={"HOOK_SECRET": SECRET})
    await service.start()
    return service


async def test_firing_alert_is_posted_once_with_the_documented_signed_body(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, results: list[DeliveryResult]
) -> None:
    service = await started(
        config_for(nats_config, receiver, headers={"X-Team": "ops", "content-type": "text/plain"}), nc
    )
    try:
        alert = make_alert()
        await publish_alert(nc, nats_config, alert)
        await wait_until(lambda: len(results) == 1, "a delivery result", timeout=15)

        [posted] = receiver.posted()
        headers, body = posted.headers, posted.raw
        document = posted.body
        assert document["version"] == 1
        assert document["status"] == "firing"
        assert document["channel"] == "hook"
        assert document["test"] is False
        assert decode(json.dumps(document["alert"]).encode(), AlertEvent) == alert
        assert abs(document["sent_at"] - time.time()) < 60
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Team"] == "ops"
        assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER])
        assert not verify(b"wrong secret", body, headers[SIGNATURE_HEADER])
        assert headers[TIMESTAMP_HEADER] == str(int(document["sent_at"]))

        [result] = results
        assert (result.status, result.attempt, result.alert_id, result.channel) == (
            "sent",
            1,
            alert.id,
            "hook",
        )
        assert (result.transition, result.rule, result.host, result.error) == (
            "firing",
            "HighCPU",
            alert.host,
            None,
        )
        assert (
            value(service.registry, "signalfire_notifier_deliveries_total", channel="hook", status="sent")
            == 1
        )
        timed = "signalfire_notifier_delivery_duration_seconds_count"
        assert value(service.registry, timed, channel="hook") == 1
        assert value(service.registry, "signalfire_notifier_alerts_received_total", status="firing") == 1
    finally:
        await service.stop()


async def test_the_same_event_again_is_not_sent_twice(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, results: list[DeliveryResult]
) -> None:
    config = config_for(nats_config, receiver)
    service = await started(config, nc)
    alert = make_alert()
    try:
        await publish_alert(nc, nats_config, alert)
        await wait_until(lambda: len(results) == 1, "the first delivery", timeout=15)
        # Same Nats-Msg-Id: the stream itself drops it.
        ack = await publish_alert(nc, nats_config, alert)
        assert ack.duplicate
        # Published again under another id (e.g. after the dedup window): the ledger skips it.
        await publish_alert(nc, nats_config, alert, msg_id="another-id")
        await wait_until(
            lambda: (
                value(service.registry, "signalfire_notifier_duplicates_skipped_total", channel="hook") == 1
            ),
            "the duplicate to be skipped",
            timeout=15,
        )
    finally:
        await service.stop()

    # A notifier that crashed before acking gets the event redelivered; recreating the
    # durable consumer replays the stream the same way.
    await nc.jetstream().delete_consumer(nats_config.subjects.alerts_stream, DURABLE)
    service = await started(config, nc)
    try:
        await wait_until(
            lambda: (
                value(service.registry, "signalfire_notifier_duplicates_skipped_total", channel="hook") == 2
            ),
            "redeliveries to be skipped",
            timeout=15,
        )
    finally:
        await service.stop()
    assert len(receiver.posted()) == 1
    assert [r.status for r in results] == ["sent"]

    # The resolved transition of the same alert is a new notification.
    service = await started(config, nc)
    try:
        await publish_alert(
            nc, nats_config, make_alert(id=alert.id, status="resolved", ends_at=alert.time + 60)
        )
        await wait_until(lambda: len(results) == 2, "the resolved delivery", timeout=15)
    finally:
        await service.stop()
    assert [b["status"] for b in receiver.bodies("hook")] == ["firing", "resolved"]


async def test_failing_receiver_is_retried_until_it_accepts(
    nc: Any, nats_config: NatsConfig, results: list[DeliveryResult]
) -> None:
    with WebhookReceiver() as receiver:
        receiver.statuses["hook"] = [500, 429, 500]
        service = await started(config_for(nats_config, receiver, max_attempts=5), nc)
        try:
            alert = make_alert()
            await publish_alert(nc, nats_config, alert)
            await wait_until(
                lambda: bool(results) and results[-1].status == "sent", "the delivery", timeout=15
            )
        finally:
            await service.stop()
    assert [(r.status, r.attempt) for r in results] == [
        ("retrying", 1),
        ("retrying", 2),
        ("retrying", 3),
        ("sent", 4),
    ]
    assert results[0].error == 'HTTP 500: {"error": "scripted failure"}'
    assert results[1].error is not None and results[1].error.startswith("HTTP 429")
    assert len(receiver.posted()) == 4
    assert {b["alert"]["id"] for b in receiver.bodies("hook")} == {alert.id}


async def settled(nc: Any, nats_config: NatsConfig) -> Any:
    """The notifier's consumer once nothing is left waiting for an ack: an event is acknowledged
    after its delivery is recorded, which is after its result is published (what the tests
    wait for first), a malformed one terminated."""
    js = nc.jetstream()

    async def check() -> bool:
        info = await js.consumer_info(nats_config.subjects.alerts_stream, DURABLE)
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await wait_until(check, "every message acknowledged or terminated", timeout=10)
    return await js.consumer_info(nats_config.subjects.alerts_stream, DURABLE)


async def test_rejecting_receiver_fails_without_retries(
    nc: Any, nats_config: NatsConfig, results: list[DeliveryResult]
) -> None:
    with WebhookReceiver() as receiver:
        receiver.statuses["hook"] = [400]
        service = await started(config_for(nats_config, receiver, max_attempts=5), nc)
        try:
            await publish_alert(nc, nats_config, make_alert(id="rejected"))
            await wait_until(lambda: len(results) == 1, "the failed delivery", timeout=15)
            await publish_alert(nc, nats_config, make_alert(id="accepted"))
            await wait_until(lambda: len(results) == 2, "the next delivery", timeout=15)
            info = await settled(nc, nats_config)
        finally:
            await service.stop()
    assert [(r.alert_id, r.status, r.attempt) for r in results] == [
        ("rejected", "failed", 1),
        ("accepted", "sent", 1),
    ]
    assert results[0].error == 'HTTP 400: {"error": "scripted failure"}'
    assert [b["alert"]["id"] for b in receiver.bodies("hook")] == ["rejected", "accepted"]
    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0


async def test_malformed_message_is_terminated_and_counted_and_the_next_one_delivered(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, results: list[DeliveryResult]
) -> None:
    service = await started(config_for(nats_config, receiver), nc)
    try:
        js = nc.jetstream()
        await js.publish(f"{nats_config.prefix}.alerts.x", b"{not json")
        await js.publish(f"{nats_config.prefix}.alerts.x", b'{"id": "a", "status": "exploded"}')
        await publish_alert(nc, nats_config, make_alert(id="good"))
        await wait_until(lambda: len(results) == 1, "the good delivery", timeout=15)
        info = await settled(nc, nats_config)
    finally:
        await service.stop()
    assert value(service.registry, "signalfire_notifier_rejected_messages_total", reason="malformed") == 2
    assert [b["alert"]["id"] for b in receiver.bodies("hook")] == ["good"]
    assert info.num_redelivered == 0


async def test_unrouted_alerts_are_acked_and_counted(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver
) -> None:
    config = config_for(nats_config, receiver)
    config.routes[0].match["severity"] = "critical"
    service = await started(config, nc)
    try:
        await publish_alert(nc, nats_config, make_alert(severity="low"))
        await wait_until(
            lambda: value(service.registry, "signalfire_notifier_alerts_unrouted_total") == 1,
            "the alert to be routed nowhere",
            timeout=15,
        )
    finally:
        await service.stop()
    assert receiver.posted() == []


async def test_replicas_share_the_work_without_sending_twice(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, results: list[DeliveryResult]
) -> None:
    config = config_for(nats_config, receiver)
    replicas = [await started(config, nc) for _ in range(2)]
    try:
        alerts = [make_alert() for _ in range(20)]
        for alert in alerts:
            await publish_alert(nc, nats_config, alert)
        await wait_until(lambda: len(results) == 20, "all deliveries", timeout=15)
    finally:
        for replica in replicas:
            await replica.stop()
    ids = [b["alert"]["id"] for b in receiver.bodies("hook")]
    assert sorted(ids) == sorted(a.id for a in alerts)
    assert (
        sum(value(r.registry, "signalfire_notifier_alerts_received_total", status="firing") for r in replicas)
        == 20
    )


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """``notify test`` run in-process points the root logger at this test's captured stderr;
    put the handlers back, or later log lines (aiosmtpd's) go to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_handlers")
def test_notify_test_sends_through_one_channel_and_reports_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    with WebhookReceiver() as receiver:
        receiver.statuses["hook"] = [200, 403]
        path = tmp_path / "notify.yaml"
        path.write_text(
            f"channels:\n  hook:\n    type: webhook\n    url: {receiver.url('hook')}\n"
            "    secret_env: HOOK_SECRET\n"
        )
        args = argparse.Namespace(config=str(path), channel="hook", severity="critical")
        assert notify_test(args) == 0
        assert "sent a test notification through hook (webhook)" in capsys.readouterr().out
        assert notify_test(args) == 1
        assert "HTTP 403" in capsys.readouterr().err
        assert notify_test(argparse.Namespace(config=str(path), channel="nope", severity="low")) == 2
        assert f"unknown channel 'nope' (configured: hook; {path})" in capsys.readouterr().err
    [first, _] = receiver.posted()
    assert (first.body["test"], first.body["alert"]["severity"]) == (True, "critical")
    assert verify(SECRET.encode(), first.raw, first.headers[SIGNATURE_HEADER])


@pytest.mark.usefixtures("root_handlers")
def test_notify_test_inside_a_repository_running_make_up_uses_the_notify_config_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make up`` names its notify config in ``.signalfire/env``; ``notify test CHANNEL`` run
    anywhere in that repository without ``--config`` sends through that file's channel, and
    outside one it says that no config was given."""
    monkeypatch.delenv("SF_UP_NOTIFY_FILE", raising=False)
    with WebhookReceiver() as receiver:
        repository = tmp_path / "repo"
        (repository / ".signalfire").mkdir(parents=True)
        (repository / "deploy").mkdir()
        notify = repository / "deploy" / "notify.yaml"
        notify.write_text(f"channels:\n  hook:\n    type: webhook\n    url: {receiver.url('hook')}\n")
        (repository / ".signalfire" / "env").write_text(f"SF_UP_NOTIFY_FILE={notify}\n")
        monkeypatch.chdir(repository / "deploy")
        assert notify_test(argparse.Namespace(config=None, channel="hook", severity="low")) == 0
        out, err = capsys.readouterr()
        assert "sent a test notification through hook (webhook)" in out
        assert f"notify: {notify}, the notify config `make up` runs" in err
        assert [p.channel for p in receiver.posted()] == ["hook"]

        monkeypatch.chdir(tmp_path)
        assert notify_test(argparse.Namespace(config=None, channel="hook", severity="low")) == 2
        assert (
            "unknown channel 'hook' (configured: none; no notify config given: --config FILE)"
            in capsys.readouterr().err
        )


def test_missing_secret_stops_start_up(nats_config: NatsConfig, receiver: WebhookReceiver) -> None:
    from signalfire.config import ConfigError

    service = NotifierService(config_for(nats_config, receiver), environ={})
    with pytest.raises(
        ConfigError, match=r"channels.hook.secret_env: environment variable HOOK_SECRET is not set"
    ):
        asyncio.run(service.start())

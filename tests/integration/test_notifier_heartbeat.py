"""The heartbeat, a dead man's switch: a notifier requests the outside service's URL every
``heartbeat.every`` while JetStream answers it, and stops when it does not (NATS down), so
the service pages about what no alert of Signalfire's can report. Real NATS (a private
server, stopped and started again) and a loopback HTTP server as the outside service."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from signalfire.bus import NatsConfig, request_every
from signalfire.config import ConfigError, Duration
from signalfire.control import NOTIFIER_STATUS, read_statuses
from signalfire.notifier.channels.webhook import WebhookChannelConfig
from signalfire.notifier.cli import render_status
from signalfire.notifier.config import HeartbeatConfig, NotifyConfig, Route
from signalfire.notifier.service import NotifierService
from tests.support.alerts import firing_alert, publish_alert
from tests.support.httpserver import loopback_httpserver
from tests.support.metrics import value
from tests.support.notifiers import notifier_services
from tests.support.polling import wait_until
from tests.support.private_nats import private_nats
from tests.support.webhook import WebhookReceiver

STUCK = "the intake is stuck (no alert event taken or finished for over 1s): no heartbeat sent"
#: The check's secret, in the URL's path as healthchecks.io and Dead Man's Snitch have it.
SECRET = "5f0c2b9e-hb-secret"
EVERY = 0.3


class Switch:
    """The outside service: records every request to ``/ping/<check>`` with its time, and
    answers with the status set."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.status = 200
        self._lock = threading.Lock()
        self.pings: list[tuple[str, float, Request]] = []
        server.expect_request("/ping/" + SECRET, method="GET").respond_with_handler(self._ping("main"))
        server.expect_request("/ping/other-" + SECRET, method="GET").respond_with_handler(self._ping("other"))

    def _ping(self, check: str) -> Any:
        def handler(request: Request) -> Response:
            with self._lock:
                self.pings.append((check, time.monotonic(), request))
            return Response("OK" if self.status == 200 else "down for maintenance", status=self.status)

        return handler

    def url(self, check: str = "") -> str:
        return self.server.url_for("/ping/" + check + SECRET)

    def count(self, check: str = "main") -> int:
        with self._lock:
            return sum(1 for name, _, _ in self.pings if name == check)

    def times(self, check: str = "main") -> list[float]:
        with self._lock:
            return [at for name, at, _ in self.pings if name == check]


@pytest.fixture
def switch() -> Iterator[Switch]:
    with loopback_httpserver() as server:
        yield Switch(server)


def config(
    nats: NatsConfig, *, every: float = EVERY, env: str = "HEARTBEAT_URL", stalled_after: float = 180.0
) -> NotifyConfig:
    heartbeat = HeartbeatConfig(
        url_env=env, every=Duration(every), timeout=Duration(every), stalled_after=Duration(stalled_after)
    )
    return NotifyConfig(
        nats=nats, evaluation_watch=Duration(0), storage_watch=Duration(0), heartbeat=heartbeat
    )


def heartbeats(service: NotifierService, result: str) -> float:
    return value(service.registry, "signalfire_notifier_heartbeats_total", result=result)


@pytest.mark.slow
async def test_heartbeats_stop_while_nats_is_down_and_resume_when_it_is_back(
    tmp_path: Path, switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "signalfire.notifier.heartbeat")
    server, nats = await private_nats(tmp_path / "nats", "hb")
    service = NotifierService(config(nats), environ={"HEARTBEAT_URL": switch.url()})
    try:
        await service.start()
        await wait_until(lambda: switch.count() >= 3, "three heartbeats", 5)
        gaps = [b - a for a, b in zip(switch.times(), switch.times()[1:], strict=False)]
        assert all(EVERY * 0.7 < gap < EVERY * 3 for gap in gaps), gaps
        request = switch.pings[0][2]
        assert request.headers["User-Agent"].startswith("signalfire-notifier/")

        server.stop()
        stopped = time.monotonic()
        await wait_until(lambda: heartbeats(service, "skipped") >= 3, "heartbeats skipped", 10)
        # at most the one already asked for when the server stopped, none after
        assert [at for at in switch.times() if at > stopped + EVERY] == []
        down_count = switch.count()

        await asyncio.to_thread(server.start)
        await wait_until(lambda: switch.count() >= down_count + 3, "heartbeats again", 20)
    finally:
        await service.stop()
        server.stop()
    warnings = [
        r.getMessage() for r in caplog.records if r.name.endswith("heartbeat") and r.levelname == "WARNING"
    ]
    assert warnings == ["JetStream did not answer (no answer within the timeout): no heartbeat sent"]
    assert any(r.getMessage() == "heartbeat sent again" for r in caplog.records)
    assert SECRET not in caplog.text


async def test_a_heartbeat_the_service_refuses_is_counted_and_logged_without_its_url(
    nc: Any, nats_config: NatsConfig, switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "signalfire.notifier.heartbeat")
    switch.status = 503
    async with notifier_services(nc, environ={"HEARTBEAT_URL": switch.url()}) as start:
        service = await start(config(nats_config))
        await wait_until(lambda: heartbeats(service, "failed") >= 2, "refused heartbeats", 5)
        assert heartbeats(service, "sent") == 0
        switch.status = 200
        await wait_until(lambda: heartbeats(service, "sent") >= 1, "a heartbeat taken", 5)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("heartbeat")]
    # the change is logged once each way, not every heartbeat
    assert lines == [
        "the heartbeat was not taken: HTTP 503: down for maintenance",
        "heartbeat sent again",
    ]
    assert SECRET not in caplog.text


async def test_a_notifier_whose_deliveries_all_hang_stops_its_heartbeat_until_one_finishes(
    nc: Any, nats_config: NatsConfig, switch: Switch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its one delivery slot held by a receiver that answers only after 3 s: from
    ``stalled_after`` (1 s) on, no heartbeat (the replica takes no page), then the answer
    comes, the alert is delivered once and the heartbeats go on."""
    caplog.set_level(logging.INFO, "signalfire.notifier.heartbeat")
    status_subject = nats_config.subjects.control("notifier", NOTIFIER_STATUS)
    hold = 3.0
    with WebhookReceiver(delay=hold) as receiver:
        settings = msgspec.structs.replace(
            config(nats_config, stalled_after=1.0),
            max_in_flight=1,
            routes=[Route(channels=["hook"])],
            channels={"hook": WebhookChannelConfig(url=receiver.url("hook"), max_attempts=1)},
        )
        async with notifier_services(nc, environ={"HEARTBEAT_URL": switch.url()}) as start:
            service = await start(settings)
            await wait_until(lambda: switch.count() >= 2, "heartbeats", 5)
            alert = firing_alert()
            await publish_alert(nc, nats_config, alert)
            await wait_until(lambda: len(receiver.requests) == 1, "the delivery under way", 5)
            posted = receiver.requests[0].at
            await wait_until(lambda: heartbeats(service, "skipped") >= 2, "heartbeats skipped", hold)
            # what `notify status`, the API and the Notifications page show meanwhile
            [stuck] = read_statuses(await request_every(nc, status_subject, timeout=2))[0]
            assert (stuck.heartbeat_last, stuck.heartbeat_trouble) == ("skipped", STUCK)
            assert value(service.registry, "signalfire_notifier_intake_idle_seconds") > 1.0
            assert render_status([stuck]).splitlines()[1].endswith(f"every {EVERY:g}s, last skipped: {STUCK}")
            sent_while_stuck = heartbeats(service, "sent")
            answered = posted + hold
            # the switch records a heartbeat before its answer reaches the notifier, which then
            # counts it as sent and shows it in its status
            await wait_until(
                lambda: (
                    any(at > answered for at in switch.times())
                    and heartbeats(service, "sent") > sent_while_stuck
                ),
                "a heartbeat after the answer",
                5,
            )
            # none from a beat after stalled_after (+ the beat under way) until the answer came:
            # read once the heartbeats after the answer are in, so every one before it is too
            during = [at for at in switch.times() if posted + 1.0 + 2 * EVERY < at < answered]
            assert during == []
            assert [p.alert_id for p in receiver.requests] == [alert.id]
            [going] = read_statuses(await request_every(nc, status_subject, timeout=2))[0]
            assert (going.heartbeat_last, going.heartbeat_trouble) == ("sent", None)
            assert value(service.registry, "signalfire_notifier_intake_idle_seconds") < 3.0
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("heartbeat")]
    assert lines == [STUCK, "heartbeat sent again"]


async def test_a_reload_moves_the_heartbeat_and_one_without_its_secret_changes_nothing(
    nc: Any, nats_config: NatsConfig, switch: Switch
) -> None:
    environ = {"HEARTBEAT_URL": switch.url(), "OTHER_URL": switch.url("other-")}
    async with notifier_services(nc, environ=environ) as start:
        service = await start(config(nats_config))
        await wait_until(lambda: switch.count() >= 1, "a heartbeat", 5)

        with pytest.raises(ConfigError) as refused:
            await service.reload(config(nats_config, env="MISSING_URL"))
        assert str(refused.value) == (
            "heartbeat.url_env: environment variable MISSING_URL is not set (it must hold the url)"
        )
        before = switch.count()
        await wait_until(lambda: switch.count() >= before + 2, "heartbeats on the old URL", 5)

        await service.reload(config(nats_config, env="OTHER_URL"))
        await wait_until(lambda: switch.count("other") >= 2, "heartbeats on the new URL", 5)
        moved = switch.count()
        await asyncio.sleep(EVERY * 2)
        assert switch.count() <= moved + 1  # one may have been under way

        no_heartbeat = NotifyConfig(nats=nats_config, evaluation_watch=Duration(0), storage_watch=Duration(0))
        await service.reload(no_heartbeat)
        await asyncio.sleep(EVERY)
        off = switch.count("other")
        await asyncio.sleep(EVERY * 3)
        assert switch.count("other") == off


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (None, "heartbeat.url_env: environment variable HEARTBEAT_URL is not set (it must hold the url)"),
        (
            "hc-ping.example/" + SECRET,
            "heartbeat.url_env: the heartbeat URL must be an http:// or https:// URL",
        ),
        (
            "ftp://example.net/" + SECRET,
            "heartbeat.url_env: the heartbeat URL must be an http:// or https:// URL",
        ),
    ],
)
async def test_a_heartbeat_url_that_cannot_be_used_stops_start_up_naming_the_setting(
    nats_config: NatsConfig, url: str | None, reason: str
) -> None:
    environ = {} if url is None else {"HEARTBEAT_URL": url}
    service = NotifierService(config(nats_config), environ=environ)
    with pytest.raises(ConfigError) as error:
        await service.start()
    assert str(error.value).startswith(reason)
    assert SECRET not in str(error.value)

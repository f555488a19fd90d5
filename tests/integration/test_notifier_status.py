"""Who delivers the alerts: every notifier replica answers ``sf.control.notifier.status``, and
``GET /api/v1/notifiers`` lists them; with none running the list is empty (the dashboard's
Overview then says that firing alerts notify nobody). Real NATS, notifiers and a gateway."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from signalfire.bus import NatsConfig, request_every
from signalfire.config import Duration
from signalfire.control import NOTIFIER_STATUS
from signalfire.notifier.channels.log import LogChannelConfig
from signalfire.notifier.channels.webhook import WebhookChannelConfig
from signalfire.notifier.config import NotifyConfig, Route
from tests.integration.gateway_support import gateway_config, running_gateway
from tests.support.cli import signalfire_cli
from tests.support.notifiers import notifier_services
from tests.support.polling import wait_until


def notify_config(nats: NatsConfig) -> NotifyConfig:
    return NotifyConfig(
        nats=nats,
        channels={"ops-log": LogChannelConfig(), "hook": WebhookChannelConfig(url="http://127.0.0.1:9/hook")},
        routes=[Route(channels=["ops-log"]), Route(channels=["hook"])],
        evaluation_watch=Duration(0),
        storage_watch=Duration(0),
    )


@pytest.mark.timeout(60)
async def test_the_gateway_lists_every_notifier_and_none_once_they_stopped(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw, gw.client() as api:
        # none yet: the list is empty, answered within control_timeout
        asked = time.monotonic()
        none = await api.get("/api/v1/notifiers")
        assert none.status_code == 200, none.text
        assert none.json() == {"notifiers": []}
        assert time.monotonic() - asked < 5

        before = time.time()
        async with notifier_services(nc) as start:
            a = await start(notify_config(nats_config))
            b = await start(notify_config(nats_config))
            listed = (await api.get("/api/v1/notifiers")).json()["notifiers"]
            assert [n["replica"] for n in listed] == sorted([a.replica, b.replica])
            for answer in listed:
                assert answer["channels"] == {"ops-log": "log", "hook": "webhook"}
                assert answer["routes"] == 2
                assert answer["hostname"] == socket.gethostname()
                assert before - 1 < answer["started"] <= time.time()
                assert answer["in_flight"] == 0
                assert (answer["heartbeat_every"], answer["heartbeat_last"], answer["heartbeat_trouble"]) == (
                    None,
                    None,
                    None,
                )

            await b.stop()
            listed = (await api.get("/api/v1/notifiers")).json()["notifiers"]
            assert [n["replica"] for n in listed] == [a.replica]

        async def nobody() -> bool:
            return bool((await api.get("/api/v1/notifiers")).json() == {"notifiers": []})

        await wait_until(nobody, "no notifier to answer once both stopped", 10)


async def test_an_answer_that_is_not_a_notifiers_status_is_skipped_and_the_others_listed(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    subject = nats_config.subjects.control("notifier", NOTIFIER_STATUS)

    async def impostor(msg: Any) -> None:
        await msg.respond(b'{"replica": 7}')

    odd = await nc.subscribe(subject, cb=impostor)
    try:
        async with (
            notifier_services(nc) as start,
            running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw,
            gw.client() as api,
        ):
            real = await start(notify_config(nats_config))
            answer = await api.get("/api/v1/notifiers")
            assert answer.status_code == 200, answer.text
            assert [n["replica"] for n in answer.json()["notifiers"]] == [real.replica]
    finally:
        await odd.unsubscribe()
    assert "an answer on the notifiers' status subject is not readable" in caplog.text


async def test_every_answer_is_collected_until_the_replies_go_quiet(nc: Any, nats_config: NatsConfig) -> None:
    subject = nats_config.subjects.control("notifier", "echo-test")

    async def answer(msg: Any) -> None:
        await msg.respond(msgspec.json.encode({"n": 1}))

    subs = [await nc.subscribe(subject, cb=answer) for _ in range(3)]
    try:
        asked = time.monotonic()
        got = await request_every(nc, subject, timeout=5)
        took = time.monotonic() - asked
    finally:
        for sub in subs:
            await sub.unsubscribe()
    assert len(got) == 3
    assert took < 1.5  # quiet 0.25 s after the last answer, not the whole timeout
    # nobody listens: the server says so, and nothing is waited for
    asked = time.monotonic()
    assert await request_every(nc, subject, timeout=5) == []
    assert time.monotonic() - asked < 1


async def notify_status(nats: NatsConfig, *args: str) -> tuple[int, str, str]:
    """``signalfire notify status`` run as a user runs it, with the bus's settings from ``SF_*``."""
    return await signalfire_cli(
        "notify", "status", *args, env={"SF_NATS_URL": nats.url, "SF_NATS_PREFIX": nats.prefix}
    )


async def test_notify_status_prints_every_replica_and_fails_when_none_runs(
    nc: Any, nats_config: NatsConfig
) -> None:
    code, out, err = await notify_status(nats_config)
    assert (code, out, err) == (1, "", "no notifier answers: firing alerts notify nobody\n")

    async with notifier_services(nc) as start:
        a = await start(notify_config(nats_config))
        b = await start(notify_config(nats_config))
        code, out, err = await notify_status(nats_config)
        assert code == 0, err
        header, *rows = out.splitlines()
        assert header.split() == [
            "replica",
            "host",
            "started",
            "channels",
            "routes",
            "in",
            "flight",
            "heartbeat",
        ]
        assert [row.split()[0] for row in rows] == sorted([a.replica, b.replica])
        assert all("ops-log (log), hook (webhook)" in row and row.endswith("off") for row in rows), rows

        code, out, _ = await notify_status(nats_config, "--json")
        assert code == 0
        listed = json.loads(out)["notifiers"]
        assert [(n["replica"], n["routes"]) for n in listed] == [
            (r, 2) for r in sorted([a.replica, b.replica])
        ]

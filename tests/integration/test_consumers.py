"""The shared durable-consumer helper against a real nats-server: creating and converging a
consumer, and fetching through idle periods and errors."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.consumers import Backoff, Fetcher, ensure_durable


def _wanted(subject: str, ack_wait: float, start: datetime) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name="reader",
        description="test reader",
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=5,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
    )


async def test_replicas_starting_together_share_one_consumer_and_a_restart_converges_its_settings(
    nats_config: NatsConfig,
) -> None:
    nc = await connect(nats_config, "pytest")
    try:
        js = nc.jetstream()
        await ensure_streams(js, nats_config)
        stream, subject = nats_config.subjects.alerts_stream, nats_config.subjects.actions
        start = datetime.now(UTC) - timedelta(minutes=5)
        await asyncio.gather(*(ensure_durable(js, stream, _wanted(subject, 30.0, start)) for _ in range(3)))
        created = (await js.consumer_info(stream, "reader")).config
        assert created.ack_wait == 30.0

        # A restart with a new ack_wait and a later start: the setting converges, the start
        # position (fixed when the consumer was created) does not move.
        await ensure_durable(js, stream, _wanted(subject, 45.0, datetime.now(UTC)))
        converged = (await js.consumer_info(stream, "reader")).config
        assert converged.ack_wait == 45.0
        assert converged.opt_start_time == created.opt_start_time
    finally:
        await nc.close()


async def test_fetcher_waits_out_idle_streams_quietly_and_backs_off_errors_logging_them_once(
    nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await connect(nats_config, "pytest")
    js = nc.jetstream()
    await ensure_streams(js, nats_config)
    stream, subject = nats_config.subjects.alerts_stream, nats_config.subjects.actions
    sub = await ensure_durable(js, stream, _wanted(subject, 30.0, datetime.now(UTC) - timedelta(minutes=1)))
    pauses: list[float] = []
    errors: list[Exception] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    fetcher = Fetcher(
        sub, "reader", timeout=0.2, backoff=Backoff(first=0.5, cap=2.0), on_error=errors.append, pause=pause
    )
    with caplog.at_level(logging.WARNING, logger="signalfire.consumers"):
        assert await fetcher.fetch(10) == []  # idle: no error, no pause, no log
        assert (pauses, errors, caplog.records) == ([], [], [])

        await js.publish(subject, b"{}")
        assert [m.data for m in await fetcher.fetch(10)] == [b"{}"]

        await nc.close()  # every fetch now fails
        for _ in range(4):
            assert await fetcher.fetch(10) == []
    assert pauses == [0.5, 1.0, 2.0, 2.0]
    assert len(errors) == 4
    assert [r.getMessage() for r in caplog.records if r.name == "signalfire.consumers"] == [
        "fetch failed; retrying"
    ]

    # A good fetch resets the back-off.
    nc2 = await connect(nats_config, "pytest")
    try:
        js2 = nc2.jetstream()
        fetcher.sub = await js2.pull_subscribe_bind(durable="reader", stream=stream)
        await js2.publish(subject, b"[]")
        assert len(await fetcher.fetch(10)) >= 1
        await nc2.close()
        await fetcher.fetch(10)
        assert pauses[-1] == 0.5
    finally:
        await nc2.close()


def test_backoff_doubles_to_its_cap_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(first=1.0, cap=5.0, stable=60.0)
    delays = [backoff.delay(None)]
    for _ in range(4):
        delays.append(backoff.delay(delays[-1], uptime=1.0))
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.delay(5.0, uptime=60.0) == 1.0

"""Committed frames as the API processes receive them when publishing goes wrong: an item too
large for any frame, a connection that is gone, a frame that never arrives."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from signalfire.bus import NatsConfig, connect
from signalfire.events import AgentStatus
from signalfire.gateway.committed import CommittedFeed, CommittedFrame, CommittedPublisher, FrameBatch
from signalfire.gateway.live import LiveFeed
from signalfire.gateway.store import LatestValues, MetricsWritten, SeriesKey, labels_json
from signalfire.gateway.stream import StreamHub, Subscription
from signalfire.telemetry import Registry
from tests.integration.gateway_support import eventually
from tests.support.metrics import value

LOGGER = "signalfire.gateway.committed"


def _batch(host: str, pad: int = 0) -> tuple[str, list[SeriesKey], float, list[float]]:
    """A stored batch of one sample, as the store reports it."""
    labels = labels_json({"pad": "x" * pad} if pad else {})
    return (host, [(host, "m", labels)], 1.0, [1.0])


async def test_an_item_too_large_for_any_frame_is_counted_and_the_others_are_published(
    nc: Any, nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    frames: list[CommittedFrame] = []

    async def received(msg: Msg) -> None:
        frames.append(msgspec.json.decode(msg.data, type=CommittedFrame))

    await nc.subscribe(nats_config.subjects.all_committed, cb=received)
    registry = Registry("signalfire_test")
    publisher = CommittedPublisher(nc, nats_config.subjects, "test-origin", registry)
    huge = _batch("huge", pad=nc.max_payload)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await publisher.metrics(MetricsWritten(uniform=[_batch("before"), huge, _batch("after")]), [])
        await nc.flush()

    async def both_small_ones_arrived() -> None:
        hosts = [msgspec.json.decode(item, type=FrameBatch).host for f in frames for item in f.items]
        assert hosts == ["before", "after"]

    await eventually(both_small_ones_arrived, timeout=5)
    assert value(registry, "signalfire_test_committed_publish_errors_total", reason="too_large") == 1
    # the frame not made took its number: an API process that had the one before sees the gap
    assert [f.seq for f in frames] == [2]
    # (the two small ones share one frame: the huge one is set aside, not a frame break)
    assert value(registry, "signalfire_test_committed_frames_published_total", kind="metrics") == 1
    [record] = [r for r in caplog.records if "too large for a committed frame" in r.getMessage()]
    assert record.__dict__["bytes"] == len(publisher.metric_items(MetricsWritten(uniform=[huge]))[0])


async def test_a_frame_that_cannot_be_published_is_counted_and_does_not_fail_the_ingest(
    nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await connect(nats_config, "pytest-closed")
    await closed.close()
    registry = Registry("signalfire_test")
    publisher = CommittedPublisher(closed, nats_config.subjects, "test-origin", registry)
    status = AgentStatus(host="web-1", status="online", time=1.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        # Stored already: the ingest carries on; the API processes read it from the database.
        await asyncio.wait_for(
            publisher.metrics(MetricsWritten(uniform=[_batch("a"), _batch("b")]), [status]), timeout=5
        )
    assert value(registry, "signalfire_test_committed_publish_errors_total", reason="publish_failed") == 2
    assert value(registry, "signalfire_test_committed_frames_published_total", kind="metrics") == 0
    assert sum("cannot publish a committed frame" in r.getMessage() for r in caplog.records) == 2


async def test_an_api_process_that_missed_a_frame_tells_its_live_clients_to_reload(
    nc: Any, nats_config: NatsConfig
) -> None:
    """Over a real NATS: the frames another ingest publishes reach this process's live
    clients; one that never arrives (its item too large for any frame: the same gap as one
    published while this process was reconnecting) makes every client reload."""
    hub, registry = StreamHub(), Registry("signalfire_test")
    client, _ = hub.connect(Subscription())
    feed = CommittedFeed(
        nc, nats_config.subjects, latest=LatestValues(), live=LiveFeed(hub), commits=None, registry=registry
    )
    await feed.start()
    try:
        publisher = CommittedPublisher(nc, nats_config.subjects, "worker-1", Registry("signalfire_worker"))
        await publisher.metrics(MetricsWritten(uniform=[_batch("web-1")]), [])
        await publisher.metrics(MetricsWritten(uniform=[_batch("web-1", pad=nc.max_payload)]), [])
        await publisher.metrics(MetricsWritten(uniform=[_batch("web-2")]), [])
        await nc.flush()

        async def reset_then_sample() -> None:
            assert value(registry, "signalfire_test_committed_frames_received_total", kind="metrics") == 2
            assert value(registry, "signalfire_test_committed_frames_missed_total") == 1

        await eventually(reset_then_sample, timeout=5)
        frames = [msgspec.json.decode(f.data) for f in await client.next_frames(0.1)]
        assert [(f["kind"], f.get("host")) for f in frames] == [
            ("metric", "web-1"),
            ("reset", None),
            ("metric", "web-2"),
        ]
        assert hub.resets == 1
    finally:
        await feed.stop()

"""Agent statuses committed by another ingest process reach this API process's live stream."""

from __future__ import annotations

import json
from typing import cast

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from signalfire.events import AgentStatus
from signalfire.gateway.committed import CommittedFeed, CommittedFrame
from signalfire.gateway.live import LiveFeed
from signalfire.gateway.store import LatestValues, Store
from signalfire.gateway.stream import StreamHub, Subscription
from signalfire.subjects import Subjects
from signalfire.telemetry import Registry
from tests.support.metrics import value

SUBJECTS = Subjects("sf")


def _feed(hub: StreamHub, registry: Registry) -> CommittedFeed:
    # A status frame touches neither the connection (apply is what the subscription calls)
    # nor the database: None for both, so a use of either fails the test.
    return CommittedFeed(
        cast(NATS, None),
        SUBJECTS,
        store=Store(cast(asyncpg.Pool, None)),
        latest=LatestValues(),
        live=LiveFeed(hub),
        commits=None,
        registry=registry,
        origin="this-process",
    )


def _frame(origin: str, *items: bytes) -> bytes:
    return msgspec.json.encode(CommittedFrame(origin=origin, items=[msgspec.Raw(i) for i in items]))


async def test_a_status_frame_from_another_ingest_shows_on_the_live_stream() -> None:
    hub, registry = StreamHub(), Registry("signalfire_test")
    client, _ = hub.connect(Subscription())
    feed = _feed(hub, registry)
    offline = msgspec.json.encode(AgentStatus(host="web-1", status="offline", time=5.0))
    feed.apply(SUBJECTS.committed("status"), _frame("worker-1", offline, b'{"host": 3}'))
    frames = [json.loads(f.data) for f in await client.next_frames(0.1)]
    assert [(f["kind"], f["host"], f["status"]) for f in frames] == [("host", "web-1", "offline")]
    assert value(registry, "signalfire_test_committed_frames_received_total", kind="status") == 1
    assert value(registry, "signalfire_test_committed_frames_rejected_total", kind="status") == 1
    # This process's own frames: its ingest fed the stream directly already.
    feed.apply(SUBJECTS.committed("status"), _frame("this-process", offline))
    assert await client.next_frames(0.1) == []
    assert value(registry, "signalfire_test_committed_frames_received_total", kind="status") == 1

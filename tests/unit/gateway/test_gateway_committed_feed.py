"""What another ingest process committed (agent statuses, samples) reaches this API process's
live stream and latest values; bad items are counted and cost nothing else."""

from __future__ import annotations

import asyncio
import json
from typing import cast

import msgspec
import pytest
from nats.aio.client import Client as NATS

from signalfire.events import AgentStatus
from signalfire.gateway import committed
from signalfire.gateway.committed import CommittedFeed, CommittedFrame, CommittedPublisher
from signalfire.gateway.live import LiveFeed
from signalfire.gateway.store import LatestValues, MetricsWritten
from signalfire.gateway.stream import StreamHub, Subscription
from signalfire.subjects import Subjects
from signalfire.telemetry import Registry
from tests.support.metrics import value

SUBJECTS = Subjects("sf")


def _feed(hub: StreamHub, registry: Registry) -> CommittedFeed:
    # A frame touches neither the connection (apply is what the subscription calls) nor the
    # database: None for the connection, so a use of it fails the test.
    return CommittedFeed(
        cast(NATS, None),
        SUBJECTS,
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


async def test_samples_another_ingest_stored_reach_the_latest_values_and_the_live_stream() -> None:
    hub, registry = StreamHub(), Registry("signalfire_test")
    client, _ = hub.connect(Subscription())
    feed = _feed(hub, registry)
    publisher = CommittedPublisher(cast(NATS, None), SUBJECTS, "worker-1", Registry("signalfire_worker"))
    cpu, disk = ("web-1", "cpu.usage_percent", "{}"), ("web-1", "disk.used_percent", '{"mount":"/"}')
    written = MetricsWritten()
    written.uniform.append(("web-1", [cpu, disk], 10.0, [12.5, 40.0]))
    written.uniform.append(("web-1", [cpu, disk], 20.0, [13.5, 41.0]))  # the same layout again
    written.rows.append((("db-1", "load.1m", "{}"), 15.0, 0.5))  # a sample with its own time
    items = publisher.metric_items(written)
    # the layout's series are named in the same bytes each time (a receiver looks them up)
    assert items[0].count(b"disk.used_percent") == 1 and items[0][:60] == items[1][:60]
    bad = [
        b'["b","web-2",[["x.y","{}"]],1.0,"AAAAAAAA8D8=",7]',  # a field too many
        b'["b","web-2",[["x.y","{}"]],1.0,"AAAA"]',  # 3 bytes of values
        b'["b","web-2",[["x.y","{}"],["x.z","{}"]],1.0,"AAAAAAAA8D8="]',  # 2 series, 1 value
        b'["z","web-2"]',  # no such item
    ]
    feed.apply(SUBJECTS.committed("metrics"), _frame("worker-1", *items, *bad))
    assert feed.latest.get(cpu) == (20.0, 13.5)
    assert feed.latest.get(disk) == (20.0, 41.0)
    assert feed.latest.get(("db-1", "load.1m", "{}")) == (15.0, 0.5)
    assert feed.latest.get(("web-2", "x.y", "{}")) is None
    frames = [json.loads(f.data) for f in await client.next_frames(0.1)]
    # the stream coalesces by series: the newest sample of each
    assert sorted((f["host"], f["metric"], f["labels"], f["time"], f["value"]) for f in frames) == [
        ("db-1", "load.1m", {}, 15.0, 0.5),
        ("web-1", "cpu.usage_percent", {}, 20.0, 13.5),
        ("web-1", "disk.used_percent", {"mount": "/"}, 20.0, 41.0),
    ]
    assert value(registry, "signalfire_test_committed_frames_received_total", kind="metrics") == 1
    assert value(registry, "signalfire_test_committed_frames_rejected_total", kind="metrics") == 1
    # This process's own frames: its ingest fed the values directly already.
    written = MetricsWritten(uniform=[("web-1", [cpu], 30.0, [99.0])])
    feed.apply(SUBJECTS.committed("metrics"), _frame("this-process", *publisher.metric_items(written)))
    assert feed.latest.get(cpu) == (20.0, 13.5)


def _numbered(origin: str, seq: int, *items: bytes) -> bytes:
    frame = CommittedFrame(origin=origin, items=[msgspec.Raw(i) for i in items], seq=seq)
    return msgspec.json.encode(frame)


async def test_a_frame_missed_tells_every_live_client_to_reload() -> None:
    """A frame of another ingest lost on the way (a NATS node died while this process was
    reconnecting): its samples are stored, but the charts fed live would keep a hole until
    reloaded. The skipped number resets every client, whatever it subscribed to."""
    hub, registry = StreamHub(), Registry("signalfire_test")
    web = hub.connect(Subscription(hosts=["web-1"]))[0]
    quiet = hub.connect(Subscription(hosts=["db-9"], alerts=False, host_status=False))[0]
    feed = _feed(hub, registry)
    status = msgspec.json.encode(AgentStatus(host="web-1", status="online", time=5.0))

    feed.apply(SUBJECTS.committed("status"), _numbered("worker-1", 7, status))  # first seen: no gap
    feed.apply(SUBJECTS.committed("status"), _numbered("worker-1", 8, status))
    feed.apply(SUBJECTS.committed("status"), _numbered("worker-2", 1, status))
    assert [json.loads(f.data)["kind"] for f in await web.next_frames(0.1)] == ["host", "host", "host"]
    assert await quiet.next_frames(0.1) == []
    assert value(registry, "signalfire_test_committed_frames_missed_total") == 0

    feed.apply(SUBJECTS.committed("status"), _numbered("worker-1", 11, status))  # 9 and 10 lost
    for client in (web, quiet):
        frames = [json.loads(f.data) for f in await client.next_frames(0.1)]
        assert frames[0]["kind"] == "reset" and "missed" in frames[0]["reason"]
    assert value(registry, "signalfire_test_committed_frames_missed_total") == 2
    assert hub.resets == 1
    # a tab that resumes from before the gap reloads too
    assert hub.connect(Subscription(), last_seq=hub.seq - 1, epoch=hub.epoch)[1] is False

    # late or repeated numbers, and unnumbered frames (older publishers), change nothing
    feed.apply(SUBJECTS.committed("status"), _numbered("worker-1", 10, status))
    feed.apply(SUBJECTS.committed("status"), _numbered("worker-1", 12, status))
    feed.apply(SUBJECTS.committed("status"), _frame("worker-3", status))
    assert [json.loads(f.data)["kind"] for f in await web.next_frames(0.1)] == ["host", "host", "host"]
    assert hub.resets == 1


async def test_gaps_one_after_the_other_reload_a_page_once_then_once_more_after_the_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publisher whose frames keep going missing (an item too large every round) must not
    reload the open pages every round: one reset at once, the next gaps' one after
    ``RESET_EVERY``, which covers them all."""
    monkeypatch.setattr(committed, "RESET_EVERY", 0.3)
    hub, registry = StreamHub(), Registry("signalfire_test")
    client = hub.connect(Subscription())[0]
    feed = _feed(hub, registry)
    status = msgspec.json.encode(AgentStatus(host="web-1", status="online", time=5.0))
    for seq in (1, 3, 5, 7):  # a gap before each but the first
        feed.apply(SUBJECTS.committed("status"), _numbered("worker-1", seq, status))
    assert hub.resets == 1
    await asyncio.sleep(0.45)
    assert hub.resets == 2
    kinds = [json.loads(f.data)["kind"] for f in await client.next_frames(0.1)]
    assert kinds.count("reset") == 2
    assert value(registry, "signalfire_test_committed_frames_missed_total") == 3
    await feed.stop()

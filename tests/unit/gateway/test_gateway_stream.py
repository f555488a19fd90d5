"""The stream hub: encode once, coalesce metrics, never drop alerts, resume by sequence."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signalfire.gateway.stream import (
    REPLAY_CHUNK,
    AccessRevoked,
    ClientStalled,
    StreamClosed,
    StreamHub,
    Subscription,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decoded(frames: Any) -> list[dict[str, Any]]:
    return [json.loads(f.data) for f in frames]


async def test_frames_carry_sequence_and_are_encoded_once() -> None:
    hub = StreamHub()
    a, _ = hub.connect(Subscription())
    b, _ = hub.connect(Subscription())
    hub.publish_samples("web-1", [("cpu.usage_percent", {}, 1.0, 12.5)])
    fa, fb = await a.next_frames(0.1), await b.next_frames(0.1)
    assert fa[0] is fb[0]  # the same encoded bytes object for every subscriber
    assert decoded(fa) == [
        {
            "seq": 1,
            "kind": "metric",
            "host": "web-1",
            "metric": "cpu.usage_percent",
            "labels": {},
            "time": 1.0,
            "value": 12.5,
        }
    ]


async def test_revoking_a_token_ends_only_its_clients_and_wakes_them_at_once() -> None:
    hub = StreamHub()
    revoked_a, _ = hub.connect(Subscription(), token_id=7)
    revoked_b, _ = hub.connect(Subscription(hosts=["web-1"]), token_id=7)
    other, _ = hub.connect(Subscription(), token_id=8)
    assert hub.token_ids() == {7, 8}
    waiting = asyncio.create_task(revoked_a.next_frames(timeout=30))
    await asyncio.sleep(0)
    assert hub.revoke({7, 99}) == 2
    with pytest.raises(AccessRevoked):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(AccessRevoked):
        await revoked_b.next_frames(0.1)
    hub.publish("alert", "web-1", {"id": "a"}, key="a")
    assert [f["id"] for f in decoded(await other.next_frames(0.1))] == ["a"]
    assert hub.revoke({7}) == 0  # already ended: counted once
    assert hub.clients_revoked == 2


async def test_subscriptions_filter_by_host_and_metric_globs() -> None:
    hub = StreamHub()
    client, _ = hub.connect(Subscription(hosts=["web-*"], metrics=["cpu.*"], alerts=False))
    hub.publish_samples("web-1", [("cpu.usage_percent", {}, 1.0, 1.0), ("mem.used_percent", {}, 1.0, 2.0)])
    hub.publish_samples("db-1", [("cpu.usage_percent", {}, 1.0, 3.0)])
    hub.publish("alert", "web-1", {"id": "a"}, key="a")
    assert [(f["host"], f["metric"]) for f in decoded(await client.next_frames(0.1))] == [
        ("web-1", "cpu.usage_percent")
    ]


async def test_slow_client_gets_latest_metric_per_series_and_every_alert() -> None:
    hub = StreamHub()
    client, _ = hub.connect(Subscription())
    for i in range(100):
        hub.publish_samples("web-1", [("cpu.usage_percent", {"core": "0"}, float(i), float(i))])
        if i % 10 == 0:
            hub.publish("alert", "web-1", {"id": f"a{i}"}, key=f"a{i}")
    frames = decoded(await client.next_frames(0.1))
    metrics = [f for f in frames if f["kind"] == "metric"]
    alerts = [f for f in frames if f["kind"] == "alert"]
    assert [m["value"] for m in metrics] == [99.0]
    assert [a["id"] for a in alerts] == [f"a{i}" for i in range(0, 100, 10)]
    assert [f["seq"] for f in frames] == sorted(f["seq"] for f in frames)
    assert hub.frames_coalesced == 99


async def test_a_late_older_sample_does_not_replace_the_newer_one_pending() -> None:
    # Several ingest processes commit out of order: the tab must end on the newest sample.
    hub = StreamHub()
    client, _ = hub.connect(Subscription())
    for at in (10.0, 30.0, 20.0):
        hub.publish_samples("web-1", [("cpu.usage_percent", {}, at, at)])
    frames = decoded(await client.next_frames(0.1))
    assert [(f["time"], f["value"]) for f in frames] == [(30.0, 30.0)]


async def test_client_that_never_reads_alerts_is_stalled() -> None:
    hub = StreamHub(client_max_pending=5)
    slow, _ = hub.connect(Subscription())
    fast, _ = hub.connect(Subscription())
    for i in range(7):
        hub.publish("alert", "h", {"id": i}, key=str(i))
        await fast.next_frames(0.1)
    with pytest.raises(ClientStalled):
        await slow.next_frames(0.1)
    assert hub.clients_stalled == 1


async def test_resume_replays_exactly_what_was_missed() -> None:
    hub = StreamHub()
    first, _ = hub.connect(Subscription())
    for i in range(5):
        hub.publish("alert", "h", {"n": i}, key=str(i))
    seen = await first.next_frames(0.1)
    hub.disconnect(first)
    for i in range(5, 8):
        hub.publish("alert", "h", {"n": i}, key=str(i))
    again, complete = hub.connect(Subscription(), last_seq=seen[-1].seq)
    assert complete
    assert [f["n"] for f in decoded(await again.next_frames(0.1))] == [5, 6, 7]


async def test_resume_replays_every_sample_missed_not_only_the_newest_per_series() -> None:
    hub = StreamHub()
    watching, _ = hub.connect(Subscription())  # another tab keeps the frames coming
    tab, _ = hub.connect(Subscription(hosts=["web-1"]))
    hub.publish_samples("web-1", [("cpu", {}, 0.0, 0.0)])
    [seen] = await tab.next_frames(0.1)
    hub.disconnect(tab)
    for second in range(1, 6):  # away for a few seconds: one sample a second of two series
        hub.publish_samples("web-1", [("cpu", {}, float(second), float(second)), ("load", {}, 0.0, second)])
        hub.publish_samples("db-1", [("cpu", {}, float(second), 99.0)])  # not this tab's
    back, complete = hub.connect(Subscription(hosts=["web-1"]), last_seq=seen.seq)
    assert complete
    hub.publish_samples("web-1", [("cpu", {}, 6.0, 6.0)])  # live again
    frames = decoded(await back.next_frames(0.1))
    assert [(f["metric"], f["value"]) for f in frames] == [
        (m, float(s)) for s in range(1, 6) for m in ("cpu", "load")
    ]
    assert [f["value"] for f in decoded(await back.next_frames(0.1))] == [6.0]
    assert watching.pending()


async def test_a_long_replay_comes_in_chunks_in_order() -> None:
    hub = StreamHub()
    hub.connect(Subscription())
    for i in range(REPLAY_CHUNK + 10):
        hub.publish_samples("h", [("cpu", {}, float(i), float(i))])
    client, complete = hub.connect(Subscription(), last_seq=0)
    assert complete
    first, second = await client.next_frames(0.1), await client.next_frames(0.1)
    assert len(first) == REPLAY_CHUNK and len(second) == 10
    assert [f.seq for f in first + second] == list(range(1, REPLAY_CHUNK + 11))


async def test_resume_past_the_ring_asks_for_a_reset() -> None:
    clock = Clock()
    hub = StreamHub(ring_seconds=60, clock=clock)
    hub.publish("alert", "h", {"n": 0}, key="0")
    clock.now += 120
    hub.publish("alert", "h", {"n": 1}, key="1")
    client, complete = hub.connect(Subscription(), last_seq=0)
    assert not complete
    assert [f["n"] for f in decoded(await client.next_frames(0.1))] == [1]


async def test_resume_from_another_epoch_or_the_future_asks_for_a_reset() -> None:
    old, new = StreamHub(), StreamHub()
    assert old.epoch != new.epoch
    for i in range(3):
        new.publish("alert", "h", {"n": i}, key=str(i))
    # A number from the gateway before its restart means nothing to this one.
    client, complete = new.connect(Subscription(), last_seq=1, epoch=old.epoch)
    assert not complete
    assert await client.next_frames(0.01) == []
    _, complete = new.connect(Subscription(), last_seq=99, epoch=new.epoch)
    assert not complete
    _, complete = new.connect(Subscription(), last_seq=1, epoch=new.epoch)
    assert complete


async def test_a_resume_across_skipped_metric_frames_asks_for_a_reset() -> None:
    hub = StreamHub()
    hub.publish("alert", "h", {"n": 0}, key="0")
    hub.skip_metrics()  # metrics arrived while nobody was connected
    hub.publish("alert", "h", {"n": 1}, key="1")
    _, complete = hub.connect(Subscription(), last_seq=1)
    assert not complete
    # A client that connected after the skipped stretch resumes normally.
    _, complete = hub.connect(Subscription(), last_seq=2)
    assert complete


async def test_close_ends_every_waiting_client() -> None:
    hub = StreamHub()
    client, _ = hub.connect(Subscription())
    waiting = asyncio.create_task(client.next_frames(30))
    await asyncio.sleep(0)
    hub.close()
    with pytest.raises(StreamClosed):
        await waiting
    late, _ = hub.connect(Subscription())
    with pytest.raises(StreamClosed):
        await late.next_frames(30)


async def test_waiting_client_wakes_on_publish_and_times_out_quietly() -> None:
    hub = StreamHub()
    client, _ = hub.connect(Subscription())
    assert await client.next_frames(0.01) == []
    hub.publish("host", "h", {"status": "down"})
    assert decoded(await client.next_frames(0.1))[0]["status"] == "down"


def test_bad_subscription_is_refused() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"hostz": ["a"]}, Subscription)


@settings(max_examples=50, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["metric", "alert"]), st.integers(0, 3)), min_size=1, max_size=60
    ),
    cut=st.integers(0, 60),
)
def test_resume_never_duplicates_or_loses_alerts(events: list[tuple[str, int]], cut: int) -> None:
    import asyncio

    async def run() -> None:
        hub = StreamHub()
        client, _ = hub.connect(Subscription())
        received: list[dict[str, Any]] = []
        for i, (kind, series) in enumerate(events):
            if kind == "metric":
                hub.publish_samples("h", [(f"m{series}", {}, float(i), float(i))])
            else:
                hub.publish("alert", "h", {"i": i}, key=str(i))
            if i == min(cut, len(events) - 1):
                received += decoded(await client.next_frames(0.01))
                hub.disconnect(client)
                last = received[-1]["seq"] if received else 0
                client, complete = hub.connect(Subscription(), last_seq=last)
                assert complete
        received += decoded(await client.next_frames(0.01))
        seqs = [f["seq"] for f in received]
        assert seqs == sorted(set(seqs))  # increasing: no duplicate
        alerts = [f["i"] for f in received if f["kind"] == "alert"]
        assert alerts == [i for i, (k, _) in enumerate(events) if k == "alert"]  # none lost
        # the last value of every series arrives
        last_values = {f["metric"]: f["value"] for f in received if f["kind"] == "metric"}
        expected = {f"m{s}": float(i) for i, (k, s) in enumerate(events) if k == "metric"}
        assert last_values == expected

    asyncio.run(run())

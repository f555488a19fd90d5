"""Stream and bucket creation against a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import socket
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from devstack import NatsCluster
from nats.errors import NoServersError
from nats.js.api import KeyValueConfig, StreamConfig

from signalfire.bus import (
    WATCH_HEARTBEAT,
    BucketReadError,
    DirectGetError,
    NatsConfig,
    bucket_entries,
    bucket_latest,
    connect,
    direct_messages,
    ensure_streams,
    stream_configs,
    watch,
    watch_listed,
)
from signalfire.config import Duration


async def test_ensure_streams_is_idempotent_and_concurrent(nats_config: NatsConfig) -> None:
    clients = [await connect(nats_config, f"c{i}") for i in range(3)]
    try:
        await asyncio.gather(*(ensure_streams(c.jetstream(), nats_config) for c in clients))
        await ensure_streams(clients[0].jetstream(), nats_config)
        js = clients[0].jetstream()
        s = nats_config.subjects
        metrics = await js.stream_info(s.metrics_stream)
        alerts = await js.stream_info(s.alerts_stream)
        assert set(metrics.config.subjects or []) == {s.all_metrics, s.all_events, s.all_agents}
        assert set(alerts.config.subjects or []) == {s.all_alerts, s.actions, s.all_notifications}
        for short in ("alert_state", "notify_state", "silences"):
            kv = await js.key_value(s.bucket(short))
            await kv.put("probe", b"1")
    finally:
        for c in clients:
            await c.close()


async def test_changed_retention_converges(nats_config: NatsConfig) -> None:
    nc = await connect(nats_config, "t")
    try:
        js = nc.jetstream()
        await ensure_streams(js, nats_config)
        longer = msgspec.structs.replace(nats_config, metrics_max_age=48 * 3600)
        await ensure_streams(js, longer)
        info = await js.stream_info(nats_config.subjects.metrics_stream)
        assert info.config.max_age == pytest.approx(48 * 3600)
    finally:
        await nc.close()


async def test_published_batch_lands_in_the_metrics_stream(nc, nats_config: NatsConfig) -> None:
    js = nc.jetstream()
    ack = await js.publish(nats_config.subjects.metrics("web-1.example"), b'{"host":"web-1.example"}')
    assert ack.stream == nats_config.subjects.metrics_stream


async def test_unreachable_server_is_a_clear_error() -> None:
    from devstack import free_port

    config = NatsConfig(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=Duration(0.5))
    with pytest.raises(NoServersError):
        await connect(config, "t", max_reconnect_attempts=1)


async def test_on_a_cluster_every_stream_and_bucket_has_a_replica_on_each_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = NatsCluster(tmp_path, 3)
    await asyncio.to_thread(cluster.start)
    try:
        grown = cluster.nats_config(prefix="tgrown")
        one = msgspec.structs.replace(grown, replicas=1)  # made while the deployment had one node
        nc = await connect(grown, "t")
        try:
            js = nc.jetstream()
            fresh = cluster.nats_config(prefix="tfresh")
            await ensure_streams(js, fresh)
            for name in _stream_names(fresh):
                info = await js.stream_info(name)
                assert info.config.num_replicas == 3, name
                assert info.cluster is not None and len(info.cluster.replicas or []) == 2, name

            await ensure_streams(js, one)
            with caplog.at_level(logging.WARNING, logger="signalfire.bus"):
                await ensure_streams(js, grown)
            s = grown.subjects
            for name in (s.metrics_stream, s.alerts_stream):  # the streams follow the config
                assert (await js.stream_info(name)).config.num_replicas == 3, name
            for short in (
                "alert_state",
                "notify_state",
                "silences",
            ):  # a bucket's is only an admin's to change
                bucket = s.bucket(short)
                assert (await js.stream_info(f"KV_{bucket}")).config.num_replicas == 1
                assert any(
                    "--replicas 3" in r.getMessage() and f"KV_{bucket}" in r.getMessage()
                    for r in caplog.records
                ), bucket
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(cluster.stop)


def test_a_cluster_node_whose_port_was_taken_before_it_bound_it_starts_on_another(tmp_path: Path) -> None:
    """``make up NATS_NODES=3`` asks for 4222 and the ports after it; one taken between the
    check and the node's start (an outgoing connection's local port, in tests) is picked
    again, and the first node keeps the port asked for."""
    from devstack import free_port

    first = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cluster = NatsCluster(tmp_path, 3, ports=[first, taken.getsockname()[1], free_port()])
        cluster.start()
        try:
            assert cluster.nodes[0].port == first
            assert taken.getsockname()[1] not in {node.port for node in cluster.nodes}
            assert all(node.healthy() for node in cluster.nodes)
        finally:
            cluster.stop()


def _stream_names(nats: NatsConfig) -> list[str]:
    s = nats.subjects
    return [
        s.metrics_stream,
        s.alerts_stream,
        *(f"KV_{s.bucket(b)}" for b in ("alert_state", "notify_state", "silences")),
    ]


async def test_closing_a_connection_is_logged_as_information_not_as_a_fault(
    nats_config: NatsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A service that stops and a CLI that is done close their connection: that is not
    "disconnected from NATS", the warning an operator looks for when the bus goes away."""
    nc = await connect(nats_config, "close-test")
    with caplog.at_level(logging.INFO, logger="signalfire.bus"):
        await nc.close()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "signalfire.bus"]
    assert (logging.INFO, "NATS connection closed") in messages
    assert not [m for level, m in messages if level >= logging.WARNING], messages


async def signalfire_bucket(nc: Any, nats_config: NatsConfig, short: str) -> tuple[str, Any]:
    """One of Signalfire's buckets, made as the services make them: its name and itself."""
    await ensure_streams(nc.jetstream(), nats_config)
    bucket = nats_config.subjects.bucket(short)
    return bucket, await nc.jetstream().key_value(bucket)


async def test_a_bucket_is_read_whole_with_its_deletions_and_a_listing_that_cannot_be_is_an_error(
    nc: Any, nats_config: NatsConfig
) -> None:
    js = nc.jetstream()
    bucket, kv = await signalfire_bucket(nc, nats_config, "alert_state")
    for key in ("a.1", "a.2", "b.1", "gone"):
        await kv.put(key, key.encode())
    await kv.delete("gone")
    assert sorted(await bucket_entries(kv)) == ["a.1", "a.2", "b.1"]
    watcher, listed = await watch_listed(kv, "a.>")
    await watcher.stop()
    assert [e.key for e in listed] == ["a.1", "a.2"]
    watcher, listed = await watch_listed(kv)
    await watcher.stop()
    assert [(e.key, e.operation) for e in listed][-1] == ("gone", "DEL")  # the deletion listed too
    # A message in the bucket's stream that a watch never lists (a marker of a reason this
    # client does not know): the bucket holds one more message than any listing can show.
    await js.publish(f"$KV.{bucket}.odd", b"", headers={"Nats-Marker-Reason": "Unknown"})
    with pytest.raises(
        BucketReadError, match=rf"KV bucket {bucket}: > not read whole in 5 attempts \(4 of 5 keys listed\)"
    ):
        await bucket_entries(kv, timeout=1.0)
    # A bucket keeping more than one value a key cannot be counted by its messages.
    await js.create_key_value(KeyValueConfig(bucket=f"{bucket}_hist", history=3))
    with pytest.raises(ValueError, match="keeps 3 values a key"):
        await bucket_entries(await js.key_value(f"{bucket}_hist"))


async def test_a_watch_gives_each_keys_entry_then_every_write_in_order_until_it_is_stopped(
    nc: Any, nats_config: NatsConfig
) -> None:
    js = nc.jetstream()
    bucket, kv = await signalfire_bucket(nc, nats_config, "notify_state")
    await kv.put("track.a", b"1")
    await kv.put("track.a", b"2")  # replaces the first: the watch starts from this one
    await kv.put("other", b"x")
    follower = await watch(kv, "track.>")
    first = await follower.updates(timeout=5.0)
    assert (first.key, first.value, first.operation, first.delta) == ("track.a", b"2", None, 0)
    await kv.put("other", b"y")  # not under track.
    await kv.put("track.b", b"3")
    await kv.delete("track.a")
    await kv.purge("track.b")
    # the server's own markers of an entry's end (nats-server 2.11+)
    await js.publish(f"$KV.{bucket}.track.c", b"", headers={"Nats-Marker-Reason": "Remove"})
    await js.publish(f"$KV.{bucket}.track.d", b"", headers={"Nats-Marker-Reason": "MaxAge"})
    await js.publish(f"$KV.{bucket}.track.e", b"", headers={"Nats-Marker-Reason": "Unknown"})
    await kv.put("track.f", b"4")
    got = [await follower.updates(timeout=5.0) for _ in range(6)]
    assert [(e.key, e.value, e.operation) for e in got] == [
        ("track.b", b"3", None),
        ("track.a", b"", "DEL"),
        ("track.b", b"", "PURGE"),
        ("track.c", b"", "DEL"),
        ("track.d", b"", "PURGE"),
        ("track.f", b"4", None),  # the marker of a reason it does not know is skipped
    ]
    assert [e.revision for e in got] == sorted(e.revision or 0 for e in got)
    with pytest.raises(TimeoutError):
        await follower.updates(timeout=0.3)
    await follower.stop()
    assert [e async for e in follower] == []  # an iteration ends once it is stopped
    with pytest.raises(StopAsyncIteration):
        await follower.updates(timeout=0.3)
    await follower.stop()  # stopping twice is harmless


async def test_a_buckets_latest_entries_are_read_without_a_consumer_with_their_deletions(
    nc: Any, nats_config: NatsConfig
) -> None:
    js = nc.jetstream()
    bucket, kv = await signalfire_bucket(nc, nats_config, "silences")
    assert await bucket_latest(kv) == (0, [])
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    await kv.put("a", b"3")
    await kv.delete("b")
    await kv.put("c", b"4")
    await kv.purge("c")
    last, entries = await bucket_latest(kv)
    assert last == 6
    assert sorted((e.key, e.value, e.revision, e.operation) for e in entries) == [
        ("a", b"3", 3, None),
        ("b", b"", 4, "DEL"),
        ("c", b"", 6, "PURGE"),
    ]
    assert (await js.stream_info(f"KV_{bucket}")).state.consumer_count == 0  # no consumer made


async def test_a_watch_whose_consumer_went_away_makes_it_again_and_misses_nothing(
    nc: Any, nats_config: NatsConfig
) -> None:
    # The server removes a watch's consumer WATCH_INACTIVE after nobody listens to it (a
    # client away that long), as it loses it with the node that served it.
    bucket, kv = await signalfire_bucket(nc, nats_config, "silences")
    follower = await watch(kv)
    try:
        await kv.put("a", b"1")
        assert (await follower.updates(timeout=5.0)).value == b"1"
        assert follower._sub is not None
        await nc.jetstream().delete_consumer(f"KV_{bucket}", follower._sub._consumer)
        await kv.put("a", b"2")
        await kv.put("b", b"3")
        got = [await follower.updates(timeout=4 * WATCH_HEARTBEAT + 2) for _ in range(2)]
        assert [(e.key, e.value) for e in got] == [("a", b"2"), ("b", b"3")]
    finally:
        await follower.stop()


async def test_a_streams_history_is_read_with_direct_gets_in_order_across_batches(
    nc: Any, nats_config: NatsConfig
) -> None:
    js = nc.jetstream()
    s = nats_config.subjects
    before = time.time() - 1
    for i in range(35):
        await js.publish(s.metrics(f"dg-{i % 3}"), f"{i}".encode())
    read = [m async for m in direct_messages(nc, s.metrics_stream, start_time=before, batch=10)]
    assert [m.data for m in read] == [f"{i}".encode() for i in range(35)]  # four requests
    assert [m.subject for m in read[:3]] == [s.metrics("dg-0"), s.metrics("dg-1"), s.metrics("dg-2")]
    assert all(b.seq == a.seq + 1 for a, b in itertools.pairwise(read))
    assert all(before <= m.time <= time.time() for m in read)
    assert read[-1].pending == 0
    # up to a sequence; from a sequence; from after the last message: nothing
    middle = [
        m.seq async for m in direct_messages(nc, s.metrics_stream, seq=read[5].seq, up_to_seq=read[9].seq)
    ]
    assert middle == [m.seq for m in read[5:10]]
    assert [m async for m in direct_messages(nc, s.metrics_stream, start_time=time.time() + 60)] == []
    # one subject's messages only, across batches too
    one = [
        m
        async for m in direct_messages(
            nc, s.metrics_stream, start_time=before, subject=s.metrics("dg-1"), batch=4
        )
    ]
    assert [m.data for m in one] == [f"{i}".encode() for i in range(1, 35, 3)]  # 12: three requests


async def test_a_direct_get_of_a_stream_that_does_not_allow_them_is_an_error_naming_it(nc: Any) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="NODIRECT", subjects=["nodirect.>"]))
    try:
        await js.publish("nodirect.a", b"1")
        with pytest.raises(DirectGetError, match="NODIRECT answered 503"):
            [m async for m in direct_messages(nc, "NODIRECT", seq=1)]
    finally:
        await js.delete_stream("NODIRECT")


async def test_a_metrics_stream_made_before_direct_gets_is_given_them(nats_config: NatsConfig) -> None:
    """A deployment from before: its metrics stream without ``allow_direct``; the gateway (or
    an admin) converges it at its start, and the evaluator's history reads work again."""
    nc = await connect(nats_config, "t")
    try:
        js = nc.jetstream()
        old = dataclasses.replace(stream_configs(nats_config)[0], allow_direct=False)
        await js.add_stream(old)
        assert not (await js.stream_info(nats_config.subjects.metrics_stream)).config.allow_direct
        await ensure_streams(js, nats_config)
        assert (await js.stream_info(nats_config.subjects.metrics_stream)).config.allow_direct
    finally:
        await nc.close()

"""kill -9 of the JetStream leader node of a three-node cluster while batches are published:
every batch stored exactly once, the publisher carries on through another node, and the
killed node, started again, catches up."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from devstack import NatsServer

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.collector.outbox import Outbox, Outgoing
from signalfire.events import MetricBatch, Sample, decode, encode
from tests.faults.support import (
    eventually,
    kill9,
    report,
    secured_cluster,
)
from tests.support.streams import stream_messages

BATCHES = 600
RATE = 60.0  # batches per second: 10 s of publishing, the kill lands in its first third
KILL_AFTER = 150  # batches acknowledged when the leader is killed
PUBLISH_TIMEOUT = 2.0  # the agent's: a publish unanswered this long is retried with the same id
HOST = "fault-cluster"


def _port(url: Any) -> int | None:
    return None if url is None else int(url.port)


async def _connect_to(nats: NatsConfig, node: NatsServer, name: str) -> Any:
    """A client connected (through the one bus helper, servers in random order as every service
    connects) to ``node``: connect until the random pick is that node, so the kill takes the
    publisher's own connection away too."""
    for _ in range(40):
        nc = await connect(nats, name)
        if _port(nc.connected_url) == node.port:
            return nc
        await nc.close()
    raise AssertionError(f"never connected to {node.name} in 40 tries")


async def _move_stream_leader(nc: Any, stream: str, to: str) -> None:
    """Make ``to`` the stream's leader (a leader step-down with a preferred successor)."""
    js = nc.jetstream()
    for _ in range(10):
        if (await js.stream_info(stream)).cluster.leader == to:
            return
        request = json.dumps({"placement": {"preferred": to}}).encode()
        await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5)
        await asyncio.sleep(0.5)
    raise AssertionError(f"{to} never became the leader of {stream}")


def _node_messages(node: NatsServer, stream: str) -> int:
    """How many messages ``node``'s own replica of ``stream`` holds (its monitoring page)."""
    try:
        page = node.monitoring("/jsz?accounts=true&streams=true")
    except (OSError, ValueError):
        return -1
    for account in page.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == stream:
                return int(detail["state"]["messages"])
    return -1


async def _publish_through_outbox(
    js: Any, nats: NatsConfig, acknowledged: list[int], failures: list[float], deadline: float
) -> None:
    """Publish every batch as the agent does: each queued in an :class:`Outbox` with its own
    ``Nats-Msg-Id``, the oldest published first, and one that fails (timeout, no leader,
    connection gone) put back and published again with the same id after a pause."""
    outbox = Outbox(capacity=BATCHES)
    start = time.time() - 3600
    for b in range(BATCHES):
        batch = MetricBatch(host=HOST, time=start + b, samples=[Sample(name="fault.seq", value=float(b))])
        outbox.put(Outgoing(nats.subjects.metrics(HOST), encode(batch), f"cluster-{b}"))
        while taken := outbox.take(1):
            item = taken[0]
            assert time.monotonic() < deadline, f"batch {item.msg_id} still not published"
            try:
                await js.publish(
                    item.subject, item.data, headers={"Nats-Msg-Id": item.msg_id}, timeout=PUBLISH_TIMEOUT
                )
            except Exception:
                failures.append(time.monotonic())
                outbox.put_back(taken)
                await asyncio.sleep(0.2)
                continue
            outbox.done(item)
            acknowledged.append(int(item.msg_id.rpartition("-")[2]))
        await asyncio.sleep(1 / RATE)


@pytest.mark.slow
async def test_killing_the_leader_node_loses_and_doubles_nothing_and_it_catches_up(tmp_path: Path) -> None:
    # with the bus's credentials, as `make up` runs it; the publisher (an agent's outbox,
    # publishing one host) and the test's other clients as the admin
    cluster, nats = await secured_cluster(tmp_path, "fleader", metrics_max_bytes=16 << 20)
    clients: list[Any] = []
    try:
        stream = nats.subjects.metrics_stream
        admin = await connect(nats, "fault-admin")
        clients.append(admin)
        await ensure_streams(admin.jetstream(), nats)
        info = await admin.jetstream().stream_info(stream)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.leader is not None
        followers = info.cluster.replicas or []
        assert len(followers) == 2 and all(peer.current for peer in followers), followers

        # The victim leads both the cluster's metadata and the stream, and serves the publisher.
        meta_leader = cluster.nodes[0].monitoring("/jsz")["meta_cluster"]["leader"]
        victim = cluster.node(meta_leader)
        await _move_stream_leader(admin, stream, meta_leader)
        publisher = await _connect_to(nats, victim, "fault-publisher")
        clients.append(publisher)

        acknowledged: list[int] = []
        failures: list[float] = []
        started = time.monotonic()
        publishing = asyncio.create_task(
            _publish_through_outbox(publisher.jetstream(), nats, acknowledged, failures, started + 45)
        )
        await eventually(
            lambda: len(acknowledged) >= KILL_AFTER or publishing.done(), "the first batches", 20
        )
        kill9(victim)
        killed_at, acknowledged_at_kill = time.monotonic(), len(acknowledged)
        await eventually(
            lambda: len(acknowledged) > acknowledged_at_kill or publishing.done(),
            "a publish after the kill",
            20,
        )
        resumed_after = time.monotonic() - killed_at
        await publishing  # raises if a batch could not be published at all
        publish_seconds = time.monotonic() - started

        js = admin.jetstream()
        after = await js.stream_info(stream)
        stored = [decode(data, MetricBatch) for _, data in await stream_messages(js, stream)]
        sequence = [int(batch.samples[0].value) for batch in stored]
        assert after.cluster is not None
        new_leader = after.cluster.leader
        # before the node returns, so the client cannot have gone back to it
        serving = _port(publisher.connected_url)

        await asyncio.to_thread(victim.start)
        restarted_at = time.monotonic()
        await eventually(lambda: _node_messages(victim, stream) == BATCHES, "the restarted node's copy", 20)
        caught_up_after = time.monotonic() - restarted_at
        caught_up = (await js.stream_info(stream)).cluster
        peers = (caught_up.replicas if caught_up is not None else None) or []

        report(
            "nats-leader-kill-9",
            batches=BATCHES,
            acknowledged=len(acknowledged),
            stored=after.state.messages,
            distinct=len(set(sequence)),
            failed_attempts=len(failures),
            resumed_after_s=f"{resumed_after:.1f}",
            publish_s=f"{publish_seconds:.1f}",
            killed=victim.name,
            new_leader=new_leader,
            reconnects=publisher.stats["reconnects"],
            caught_up_after_s=f"{caught_up_after:.1f}",
        )
        assert sorted(acknowledged) == list(range(BATCHES))
        # exactly once: every batch, none twice, in the order published
        assert after.state.messages == BATCHES
        assert sequence == list(range(BATCHES))
        assert new_leader is not None and new_leader != victim.name
        assert publisher.stats["reconnects"] >= 1
        assert serving in {node.port for node in cluster.nodes if node is not victim}
        assert any(peer.name == victim.name and peer.current for peer in peers), peers
    finally:
        for nc in clients:
            await nc.close()
        await asyncio.to_thread(cluster.stop)

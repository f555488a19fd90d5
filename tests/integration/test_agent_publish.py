"""The agent against a real nats-server: what lands in the stream, and buffering while it cannot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, ClassVar

from devstack import NatsServer

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.collector.agent import AGENT_METRICS, Agent
from signalfire.collector.collectors import MetricSpec
from signalfire.collector.config import AgentConfig
from signalfire.config import Duration
from signalfire.events import AgentStatus, MetricBatch, Sample, decode
from tests.support.polling import wait_until
from tests.support.private_nats import private_nats
from tests.support.streams import stream_messages

INTERVAL = 0.2


async def stored(js: Any, config: NatsConfig) -> list[tuple[str, bytes]]:
    """Every message in the metrics stream, oldest first, as (subject, data)."""
    return await stream_messages(js, config.subjects.metrics_stream)


async def stored_batches(js: Any, config: NatsConfig, host: str) -> list[MetricBatch]:
    subject = config.subjects.metrics(host)
    return [decode(data, MetricBatch) for s, data in await stored(js, config) if s == subject]


def counters(agent: Agent) -> dict[str, float]:
    return {s.name: s.value for s in agent.own_samples() if not s.labels}


def own(batch: MetricBatch, name: str) -> float:
    return next(s.value for s in batch.samples if s.name == name)


def agent_config(nats: NatsConfig, **fields: Any) -> AgentConfig:
    return AgentConfig(nats=nats, interval=Duration(INTERVAL), **fields)


async def test_online_then_batches_then_offline(nats_config: NatsConfig, nc: Any) -> None:
    js = nc.jetstream()
    agent = Agent(agent_config(nats_config, hostname="web-1.example.com", labels={"env": "test"}))
    await agent.start()
    try:
        await wait_until(lambda: counters(agent)["agent.batches_sent"] >= 3, "three batches", timeout=20)
    finally:
        await agent.stop()

    messages = await stored(js, nats_config)
    subjects = [subject for subject, _ in messages]
    prefix = nats_config.prefix
    # The host name's dots would be subject separators: the subject carries a safe token.
    assert subjects[0] == f"{prefix}.agents.web-1_example_com"
    assert subjects[-1] == f"{prefix}.agents.web-1_example_com"
    assert set(subjects[1:-1]) == {f"{prefix}.metrics.web-1_example_com"}

    online = decode(messages[0][1], AgentStatus)
    assert (online.status, online.host, online.interval) == ("online", "web-1.example.com", INTERVAL)
    assert online.facts.cpu_count > 0 and online.facts.memory_total_bytes > 0
    assert online.facts.kernel and online.facts.os and online.facts.agent_version
    assert online.facts.boot_time is not None and online.facts.boot_time < time.time()
    offline = decode(messages[-1][1], AgentStatus)
    assert offline.status == "offline" and offline.time >= online.time

    batches = [decode(data, MetricBatch) for _, data in messages[1:-1]]
    assert len(batches) >= 3
    for i, batch in enumerate(batches):
        assert batch.host == "web-1.example.com"
        assert batch.labels == {"env": "test"}
        names = {s.name for s in batch.samples}
        assert {"mem.used_percent", "disk.used_percent"} <= names
        # CPU shares need a clock tick (10 ms) of a core to pass since the reading before: the
        # first batch of a busy machine may come sooner after the agent's start
        if i > 0:
            assert {"cpu.usage_percent", "cpu.core.usage_percent"} <= names
        # (agent.invalid_values is sent once a collector made such a value)
        assert {spec.name for spec in AGENT_METRICS} - {"agent.invalid_values"} <= names
        assert all(
            s.labels.get("mount") or s.labels.get("device")
            for s in batch.samples
            if s.name.startswith("disk.")
        )
    times = [b.time for b in batches]
    assert times == sorted(times) and len(set(times)) == len(times)


async def test_a_clean_stop_with_a_borrowed_connection_says_offline(nats_config: NatsConfig, nc: Any) -> None:
    agent = Agent(agent_config(nats_config, hostname="db-1"), nc=nc)
    await agent.start()
    js = nc.jetstream()
    agents_subject = nats_config.subjects.agents("db-1")

    async def online_published() -> bool:
        return any(s == agents_subject for s, _ in await stored(js, nats_config))

    await wait_until(online_published, "online status", timeout=20)
    await agent.stop()
    statuses = [
        decode(d, AgentStatus).status for s, d in await stored(js, nats_config) if s == agents_subject
    ]
    assert statuses == ["online", "offline"]
    assert nc.is_connected  # the caller's connection is the caller's to close


async def test_batches_wait_for_a_missing_stream_and_keep_their_times(nats_config: NatsConfig) -> None:
    # No ensure_streams yet: every publish fails with "no stream" until the streams exist.
    agent = Agent(agent_config(nats_config, hostname="late-stream"))
    await agent.start()
    try:
        await wait_until(lambda: len(agent.outbox) >= 4, "four buffered batches", timeout=20)
        assert counters(agent)["agent.publish_errors"] >= 1
        created_at = time.time()
        admin = await connect(nats_config, "test-admin")
        try:
            await ensure_streams(admin.jetstream(), nats_config)
            await wait_until(
                lambda: counters(agent)["agent.batches_sent"] >= 6, "replay and new batches", timeout=20
            )
            await wait_until(lambda: len(agent.outbox) == 0, "an empty buffer", timeout=20)
            batches = await stored_batches(admin.jetstream(), nats_config, "late-stream")
            statuses = [s for s, _ in await stored(admin.jetstream(), nats_config)]
        finally:
            await admin.close()
    finally:
        await agent.stop()

    assert statuses[0] == nats_config.subjects.agents("late-stream")  # online still comes first
    before = [b for b in batches if b.time < created_at]
    assert len(before) >= 4  # made while publishing failed, stored later with their own times
    times = [b.time for b in batches]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len(batches) >= counters(agent)["agent.batches_sent"] - 1  # all but possibly the last
    assert max(own(b, "agent.batches_buffered") for b in batches) >= 3
    assert own(batches[-1], "agent.publish_errors") >= 1
    assert all(own(b, "agent.batches_dropped") == 0 for b in batches)


async def test_a_full_buffer_drops_the_oldest_and_counts_them(nats_config: NatsConfig) -> None:
    agent = Agent(agent_config(nats_config, hostname="small-buffer", buffer_size=3))
    await agent.start()
    try:
        await wait_until(lambda: agent.outbox.dropped >= 4, "dropped batches", timeout=20)
        started_replay = time.time()
        admin = await connect(nats_config, "test-admin")
        try:
            await ensure_streams(admin.jetstream(), nats_config)
            await wait_until(lambda: counters(agent)["agent.batches_sent"] >= 5, "replay", timeout=20)
            batches = await stored_batches(admin.jetstream(), nats_config, "small-buffer")
        finally:
            await admin.close()
    finally:
        await agent.stop()

    before = [b for b in batches if b.time < started_replay]
    assert 1 <= len(before) <= 4  # at most the buffer, plus one being published as streams appeared
    assert own(before[0], "agent.batches_dropped") >= 1  # the survivors are the newest
    assert own(batches[-1], "agent.batches_dropped") >= 4
    times = [b.time for b in batches]
    assert times == sorted(times)
    made = agent.batches_made
    c = counters(agent)
    assert c["agent.batches_sent"] + c["agent.batches_dropped"] + c["agent.batches_buffered"] == made


async def test_replay_after_the_server_restarts(tmp_path: Path) -> None:
    server, nats = await private_nats(tmp_path / "nats", "restart")
    agent = Agent(agent_config(nats, hostname="survivor"))
    await agent.start()
    try:
        await wait_until(lambda: counters(agent)["agent.batches_sent"] >= 2, "first batches", timeout=20)
        down_at = time.time()
        await asyncio.to_thread(server.stop)
        await wait_until(
            lambda: len(agent.outbox) >= 5, "batches buffered while the server is down", timeout=20
        )
        up_at = time.time()
        server = await asyncio.to_thread(NatsServer(tmp_path / "nats", port=server.port).start)
        sent_before = counters(agent)["agent.batches_sent"]
        await wait_until(
            lambda: counters(agent)["agent.batches_sent"] >= sent_before + 7, "replay", timeout=20
        )
    finally:
        await agent.stop()
    admin = await connect(nats, "test-admin")
    try:
        batches = await stored_batches(admin.jetstream(), nats, "survivor")
    finally:
        await admin.close()
        await asyncio.to_thread(server.stop)

    times = [b.time for b in batches]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len([t for t in times if down_at < t < up_at]) >= 5  # made during the outage, not lost
    assert len(batches) == counters(agent)["agent.batches_sent"]
    assert counters(agent)["agent.batches_dropped"] == 0


class OneHugeBatch:
    """A collector whose first batch is larger than the server's max_payload (1 MB)."""

    name: ClassVar[str] = "huge"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self) -> None:
        self.calls = 0

    def collect(self, now: float) -> list[Sample]:
        self.calls += 1
        if self.calls > 1:
            return [Sample("huge.ok", 1.0)]
        return [Sample("huge.value", float(i), {"pad": "x" * 200}) for i in range(6000)]


async def test_a_batch_too_large_for_the_server_is_dropped(nats_config: NatsConfig, nc: Any) -> None:
    agent = Agent(agent_config(nats_config, hostname="huge"), nc=nc, collectors=[OneHugeBatch()])
    await agent.start()
    try:
        await wait_until(
            lambda: counters(agent)["agent.batches_sent"] >= 2, "batches after the huge one", timeout=20
        )
    finally:
        await agent.stop()
    batches = await stored_batches(nc.jetstream(), nats_config, "huge")
    assert all(len(b.samples) < 100 for b in batches)
    assert counters(agent)["agent.batches_dropped"] == 1

"""Reading the metrics stream's history back for a takeover (``signalfire.evaluator.replay``)
on a real JetStream: every message from the start time on, in order, with the time the stream
stored it; over the bound, the newest ones (what nobody judged is at the end)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from signalfire.bus import NatsConfig
from signalfire.evaluator.replay import Read, read_history
from signalfire.events import MetricBatch, Sample, decode, encode


async def publish(js: Any, nats: NatsConfig, host: str, value: float) -> None:
    batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=value)])
    await js.publish(nats.subjects.metrics(host), encode(batch), timeout=5)


async def history(js: Any, nats: NatsConfig, start: float, **bounds: Any) -> tuple[list[Any], Read]:
    s = nats.subjects
    read = Read()
    got = [
        (subject, decode(data, MetricBatch).samples[0].value, stored)
        async for subject, data, stored in read_history(
            js, s.metrics_stream, [s.all_metrics, s.all_events, s.all_agents], start, result=read, **bounds
        )
    ]
    return got, read


async def test_the_history_from_a_start_time_is_read_in_order_with_its_stored_times(
    nc: Any, nats_config: NatsConfig
) -> None:
    js = nc.jetstream()
    await publish(js, nats_config, "web-1", 1.0)
    await asyncio.sleep(0.05)
    start = time.time()
    for value in (2.0, 3.0, 4.0):
        await publish(js, nats_config, "web-2" if value == 3.0 else "web-1", value)
    got, read = await history(js, nats_config, start, seconds=10)
    assert [(subject.rpartition(".")[2], value) for subject, value, _ in got] == [
        ("web-1", 2.0),
        ("web-2", 3.0),
        ("web-1", 4.0),
    ]
    times = [stored for _, _, stored in got]
    assert times == sorted(times) and start - 1 < times[0] <= time.time()
    assert (read.messages, read.truncated, read.trimmed) == (3, None, False)


async def test_nothing_since_the_start_time_reads_nothing(nc: Any, nats_config: NatsConfig) -> None:
    js = nc.jetstream()
    await publish(js, nats_config, "web-1", 1.0)
    got, read = await history(js, nats_config, time.time() + 1, seconds=10)
    assert got == [] and read.truncated is None


async def test_over_the_bound_the_newest_messages_are_read(nc: Any, nats_config: NatsConfig) -> None:
    js = nc.jetstream()
    start = time.time() - 1
    for value in range(10):
        await publish(js, nats_config, "web-1", float(value))
    got, read = await history(js, nats_config, start, seconds=10, max_batches=4)
    assert [value for _, value, _ in got] == [6.0, 7.0, 8.0, 9.0]
    assert read.trimmed and read.truncated is None

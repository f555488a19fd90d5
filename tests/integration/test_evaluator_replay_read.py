"""Reading the metrics stream's history back for a takeover (``signalfire.evaluator.replay``)
on a real JetStream: every wanted message from the start time on, in order, with the time the
stream stored it; over the bound, the recent part whole and the oldest left out."""

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


async def history(
    js: Any, nats: NatsConfig, start: float, keep_from: float | None = None, **bounds: Any
) -> tuple[list[Any], Read]:
    s = nats.subjects
    read = Read()
    history = read_history(
        js,
        s.metrics_stream,
        start,
        keep_from=start if keep_from is None else keep_from,
        wanted=lambda subject: not subject.endswith(".skipped"),
        result=read,
        **bounds,
    )
    got = [
        (subject, decode(data, MetricBatch).samples[0].value, stored)
        async for subject, data, stored in history
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


async def test_over_the_bound_the_recent_part_is_read_whole_and_the_oldest_left_out(
    nc: Any, nats_config: NatsConfig
) -> None:
    js = nc.jetstream()
    start = time.time() - 1
    for value in range(6):
        await publish(js, nats_config, "web-1", float(value))
    await asyncio.sleep(0.05)
    keep_from = time.time()
    for value in range(6, 10):
        await publish(js, nats_config, "web-1", float(value))
    got, read = await history(js, nats_config, start, keep_from, seconds=10, max_batches=6)
    assert [value for _, value, _ in got] == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert read.trimmed and read.truncated is None


async def test_older_history_comes_first_and_unwanted_subjects_are_left_out(
    nc: Any, nats_config: NatsConfig
) -> None:
    js = nc.jetstream()
    start = time.time() - 1
    await publish(js, nats_config, "web-1", 1.0)
    await publish(js, nats_config, "skipped", 2.0)
    await asyncio.sleep(0.05)
    keep_from = time.time()
    await publish(js, nats_config, "web-1", 3.0)
    got, read = await history(js, nats_config, start, keep_from, seconds=10)
    assert [value for _, value, _ in got] == [1.0, 3.0]
    assert (read.messages, read.trimmed, read.truncated) == (3, False, None)

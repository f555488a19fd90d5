"""kill -9 of the gateway while samples stream in: every sample is stored exactly once, with
ingest in the gateway's own process and with ingest workers (which then stop on their own)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from devstack import free_port

from signalfire.bus import NatsConfig
from signalfire.buspolicy import metrics_consumer
from signalfire.events import MetricBatch, Sample, encode
from signalfire.gateway.api.query import HOURS
from tests.faults.support import (
    consumer_numbers,
    eventually,
    fetch_count,
    gateway_process,
    kill9,
    report,
    service_env,
)
from tests.support.metrics import scrape, total

BATCHES = 200
SAMPLES_PER_BATCH = 50
RATE = 40.0  # batches per second: the whole flow takes 5 s, the kill lands in its first half
KILL_AFTER = 70  # batches published when the gateway is killed
HOSTS = 4


async def publish_steadily(js: Any, nats: NatsConfig, published: list[int], *, live: bool = False) -> None:
    """Publish every batch once, at ``RATE``, each with its own ``Nats-Msg-Id``; a publish that
    times out is retried with the same id (as the agent does), so JetStream keeps one copy.
    The batches are stamped an hour back, 1 s apart (minutes long ended), or with ``live``
    stamped as they are sent (their minutes still going on)."""
    start = time.time() - 3600
    for b in range(BATCHES):
        host = f"fault-gw-{b % HOSTS}"
        batch = MetricBatch(
            host=host,
            time=time.time() if live else start + b,
            samples=[
                Sample(name="fault.value", value=float(i), labels={"i": str(i)})
                for i in range(SAMPLES_PER_BATCH)
            ],
        )
        for _ in range(20):
            try:
                await js.publish(
                    nats.subjects.metrics(host), encode(batch), headers={"Nats-Msg-Id": f"gw-{b}"}, timeout=2
                )
                break
            except Exception:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"batch {b} could not be published")
        published.append(b)
        await asyncio.sleep(1 / RATE)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a gateway's ingest workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an ended process not yet reaped by its new parent does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "shape",
    [(0, "flush"), (0, "minute"), (2, "minute")],
    ids=["in-process", "minute-merges", "2-workers-minute-merges"],
)
async def test_gateway_kill_9_under_ingest_stores_every_sample_once(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path, shape: tuple[int, str]
) -> None:
    """``minute-merges``: the default ``rollup_merge``, with live batches, so the killed gateway
    holds stored batches unacknowledged for their minute's merge; they come back to the next
    one, which merges each once. ``2-workers``: each worker stores a share of the hosts through
    a consumer of its own (``gateway-metrics-1of2``, ``-2of2``); both are killed with it."""
    workers, merge = shape
    js = nc.jetstream()
    port = free_port()
    env = service_env(
        nats_config,
        database_url,
        identity="gateway",
        # Short, so the killed gateway's unacknowledged rounds come back within seconds
        # (30 s by default) and rollups are merged (then acknowledged) twice a second.
        SF_ACK_WAIT="3s",
        SF_ROLLUP_FLUSH="0.5s",
        SF_ROLLUP_MERGE=merge,
        SF_FETCH_BATCH="20",
        SF_FETCH_TIMEOUT="0.2s",
        SF_INGEST_WORKERS=str(workers),
    )

    expected = BATCHES * SAMPLES_PER_BATCH
    gateway = await gateway_process(env, port, tmp_path)
    published: list[int] = []
    publisher = asyncio.create_task(publish_steadily(js, nats_config, published, live=merge == "minute"))
    try:
        await eventually(
            lambda: len(published) >= KILL_AFTER, "the first batches to be published", 30, gateway
        )

        async def some_stored() -> bool:
            return await fetch_count(database_url, "SELECT count(*) FROM samples") > 0

        await eventually(some_stored, "the first samples to be stored", 30, gateway)
        assert gateway.proc is not None
        orphans = children(gateway.proc.pid)
        assert len(orphans) == workers
        kill9(gateway)
        at_kill = await fetch_count(database_url, "SELECT count(*) FROM samples")
        published_at_kill = len(published)
        await asyncio.sleep(1)  # down for a second while the publisher goes on
        gateway = await gateway_process(env, port, tmp_path)

        async def orphans_stopped() -> bool:  # the killed gateway's workers saw their stdin close
            return not any(map(running, orphans))

        await eventually(orphans_stopped, "the killed gateway's workers to stop", 40, gateway)
        await asyncio.wait_for(publisher, 60)

        async def all_merged() -> bool:
            return await fetch_count(database_url, "SELECT sum(count) FROM samples_1m") >= expected

        # minute merges: the last batches' minute must end first
        await eventually(
            all_merged, f"{expected} samples stored and rolled up", 60 if merge == "flush" else 150, gateway
        )
        await asyncio.sleep(4)  # past ack_wait: any redelivery of the killed gateway's rounds is in
        rows = await fetch_count(database_url, "SELECT count(*) FROM samples")
        distinct = await fetch_count(database_url, "SELECT count(DISTINCT (series_id, time)) FROM samples")
        rollup_1m = await fetch_count(database_url, "SELECT sum(count) FROM samples_1m")
        # the 1-hour rollups as queries read them (the samples' hour may have ended < 2 min ago)
        rollup_1h = await fetch_count(database_url, f"SELECT sum(count) FROM {HOURS} AS r")
        consumers = [
            await consumer_numbers(
                js, nats_config.subjects.metrics_stream, metrics_consumer(k, max(1, workers))
            )
            for k in range(1, max(1, workers) + 1)
        ]
        metrics = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        publisher.cancel()
        gateway.stop()
    report(
        "gateway-kill-9"
        + (f"-workers-{workers}" if workers else "")
        + ("-minute-merges" if merge == "minute" else ""),
        published=expected,
        batches=len(published),
        killed_after_batches=published_at_kill,
        stored_at_kill=at_kill,
        stored=rows,
        distinct=distinct,
        rollup_1m=rollup_1m,
        rollup_1h=rollup_1h,
        duplicates_skipped=int(total(metrics, "signalfire_gateway_ingest_duplicate_samples_total")),
        ack_pending=sum(c["ack_pending"] for c in consumers),
    )
    assert at_kill < expected, "the gateway had stored everything before it was killed"
    assert rows == distinct == expected, "lost or duplicated samples"
    assert rollup_1m == rollup_1h == expected, "a sample is missing from or counted twice in the rollups"
    assert [(c["ack_pending"], c["pending"]) for c in consumers] == [(0, 0)] * len(consumers)

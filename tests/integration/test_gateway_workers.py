"""Several gateways side by side, one with ingest workers (real processes), on one NATS and one
PostgreSQL: every sample stored once, the rollups equal to the raw samples' aggregates, and the
live stream of every API process complete; committed frames that cannot be decoded are
counted and cost nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.events import MetricBatch, Sample, encode
from signalfire.gateway.api.query import HOURS
from signalfire.gateway.committed import CommittedFrame, CommittedPublisher, FrameBatch
from signalfire.gateway.store import MetricsWritten, labels_json
from signalfire.partitions import fnv1a_32
from signalfire.subjects import subject_token
from signalfire.telemetry import Registry
from tests.integration.gateway_support import RunningGateway, eventually, gateway_config, running_gateway
from tests.support.metrics import value

HOSTS = [f"fleet-{i}" for i in range(4)]
BATCHES_PER_HOST = 40
#: Metrics whose series are new in every batch (label ``b``): the stream cannot coalesce them,
#: so a client must get every one of their samples.
UNIQUE = ["disk.used_percent", "mem.used_percent", "net.rx_per_second"]
#: Metrics with one series per host across all batches: several samples per rollup bucket.
STABLE = ["cpu.usage_percent", "load.1m"]

Point = tuple[str, str, str, float, float]  # host, metric, labels JSON, time, value


def stored_as(batches: list[MetricBatch]) -> MetricsWritten:
    """What an ingest's store reports for ``batches`` (each with one time for its samples)."""
    written = MetricsWritten()
    for b in batches:
        keys = [(b.host, s.name, labels_json({**b.labels, **s.labels})) for s in b.samples]
        written.uniform.append((b.host, keys, b.time, [s.value for s in b.samples]))
    return written


#: The 1-hour rollups as queries read them (folded hours' rows, open hours from their minutes),
#: one row per series and hour.
HOURLY = (
    "(SELECT series_id, date_bin('1 hour', bucket, 'epoch') AS bucket, sum(count) AS count,"
    f" sum(sum) AS sum, min(min) AS min, max(max) AS max FROM {HOURS} AS r GROUP BY 1, 2)"
)


async def assert_stored_once_and_rolled_up_exactly(conn: asyncpg.Connection, expected: list[Point]) -> None:
    """Every sample of ``expected`` stored exactly once (the same count, the same sum, the same
    points), and the 1-minute and 1-hour rollups equal to the raw samples' aggregates."""
    rows = await conn.fetch(
        "SELECT s.host, s.name, s.labels::text AS labels,"
        " extract(epoch FROM x.time)::float8 AS t, x.value"
        " FROM samples x JOIN series s ON s.id = x.series_id"
    )
    stored = [(r["host"], r["name"], r["labels"], r["t"], r["value"]) for r in rows]
    assert len(stored) == len(expected)
    assert math.fsum(p[4] for p in stored) == math.fsum(p[4] for p in expected)
    normalized = sorted((h, n, json.dumps(json.loads(lb), sort_keys=True), t, v) for h, n, lb, t, v in stored)
    assert normalized == sorted(expected)
    for table, width in (("samples_1m", 60), (HOURLY, 3600)):
        rolled = await conn.fetch(
            f"SELECT series_id, extract(epoch FROM bucket)::float8 AS b, count, sum, min, max"
            f" FROM {table} AS t ORDER BY 1, 2"
        )
        raw = await conn.fetch(
            f"SELECT series_id, floor(extract(epoch FROM time) / {width}) * {width} AS b,"
            " count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max"
            " FROM samples GROUP BY 1, 2 ORDER BY 1, 2"
        )
        assert [tuple(r) for r in rolled] == [
            (r["series_id"], float(r["b"]), r["count"], r["sum"], r["min"], r["max"]) for r in raw
        ], table
        assert any(r["count"] > 1 for r in rolled), table  # buckets really merged samples


def ws_url(gw: RunningGateway) -> str:
    return gw.url.replace("http://", "ws://") + f"/api/v1/stream?token={gw.token}"


def fleet_batches() -> list[MetricBatch]:
    """A bounded, known set of batches: 4 hosts x 40 batches 23 s apart, starting 70 minutes
    ago, so they cover many minutes and two hours; values are halves (exact float sums)."""
    hour = math.floor(time.time() / 3600) * 3600
    base = hour - 3600 - 600
    batches = []
    for h, host in enumerate(HOSTS):
        for i in range(BATCHES_PER_HOST):
            samples = [
                Sample(name=name, value=(h * 1000 + i * 10 + k) / 2, labels={"b": str(i)})
                for k, name in enumerate(UNIQUE)
            ]
            samples += [Sample(name=name, value=(i * 7 + k + h) / 2) for k, name in enumerate(STABLE)]
            batches.append(MetricBatch(host=host, time=base + i * 23 + h, samples=samples))
    return batches


def points(batches: list[MetricBatch]) -> list[Point]:
    return [
        (b.host, s.name, json.dumps(s.labels, sort_keys=True), b.time, s.value)
        for b in batches
        for s in b.samples
    ]


async def collect_stream(ws: ClientConnection, into: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """Every metric frame ``ws`` receives, until ``stop``."""
    while not stop.is_set():
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
        except TimeoutError:
            continue
        for frame in message if isinstance(message, list) else [message]:
            if frame.get("kind") == "metric":
                into.append(frame)


def received(frames: list[dict[str, Any]]) -> set[Point]:
    return {
        (f["host"], f["metric"], json.dumps(f["labels"], sort_keys=True), f["time"], f["value"])
        for f in frames
    }


async def test_three_gateways_two_with_two_workers_store_once_roll_up_exactly_and_stream_everything(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A and B run 2 ingest workers each (worker k of both reads share k of the hosts); C
    ingests in its own process through the one consumer of everything (a gateway left at
    another number of workers: each sample is then stored by whichever gets it first, and
    counted once)."""
    # (one database, so one admin token file: the first gateway to start writes it)
    # Rounds of 5 messages: the 160 batches are shared by the five ingest processes.
    # Every process looks at the metrics consumers every 0.5 s: none of another number that is
    # read is removed.
    quick = {"fetch_batch": 5, "ingest_prune_after": Duration(1.0)}
    with_workers = gateway_config(nats_config, database_url, tmp_path, ingest_workers=2, **quick)
    in_process = gateway_config(nats_config, database_url, tmp_path, **quick)
    caplog.set_level(logging.WARNING, "signalfire.gateway.ingest")
    batches = fleet_batches()
    expected = points(batches)
    async with (
        running_gateway(with_workers) as a,
        running_gateway(with_workers) as b,
        running_gateway(in_process) as c,
    ):
        gateways = {"a": a, "b": b, "c": c}
        for gw in (a, b):
            assert gw.service.workers is not None and gw.service.workers.running() == 2
            assert all(pid != os.getpid() for pid in gw.service.workers.pids())
        streams: dict[str, list[dict[str, Any]]] = {name: [] for name in gateways}
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as sockets:
            readers = []
            for name, gw in gateways.items():
                ws = await sockets.enter_async_context(websockets.connect(ws_url(gw)))
                await ws.send(json.dumps({"subscribe": {"alerts": False, "host_status": False}}))
                assert json.loads(await ws.recv())["kind"] == "hello"
                readers.append(asyncio.create_task(collect_stream(ws, streams[name], stop)))
            js = nc.jetstream()
            for batch in batches:
                await js.publish(nats_config.subjects.metrics(batch.host), encode(batch))

            conn = await asyncpg.connect(database_url)
            try:

                async def all_rolled_up() -> None:
                    rolled = await conn.fetchval(f"SELECT coalesce(sum(count), 0) FROM {HOURS} AS r")
                    assert rolled == len(expected)

                await eventually(all_rolled_up, timeout=90)
                unique = {p for p in expected if p[1] in UNIQUE}

                async def streams_complete() -> None:
                    for name in gateways:
                        assert unique <= received(streams[name]), name

                await eventually(streams_complete, timeout=30)
                stop.set()
                await asyncio.gather(*readers)
                await assert_stored_once_and_rolled_up_exactly(conn, expected)
            finally:
                await conn.close()
        # Each stream holds every sample of the series that cannot be coalesced, and the newest
        # value of every other series.
        for name in gateways:
            newest: dict[tuple[str, str], float] = {}
            for frame in sorted(streams[name], key=lambda f: f["time"]):
                newest[(frame["host"], frame["metric"])] = frame["value"]
            for host in HOSTS:
                for metric in STABLE:
                    last = max((p for p in expected if p[0] == host and p[1] == metric), key=lambda p: p[3])
                    assert newest[(host, metric)] == last[4], (name, host, metric)
        # The latest values of every API process (A's and B's fed by the workers' frames, C's by
        # its own ingest and the others' frames) hold the newest sample of every series.
        for gw in gateways.values():
            for host in HOSTS:
                for metric in STABLE:
                    last = max((p for p in expected if p[0] == host and p[1] == metric), key=lambda p: p[3])
                    assert gw.service.latest.get((host, metric, "{}")) == (last[3], last[4])
        # The gateways with workers show them on /metrics, their ingest counters labelled.
        for gw in (a, b):
            assert value(gw.service.registry, "signalfire_gateway_ingest_workers_running") == 2

        async def counted_once() -> None:
            by_workers = [
                value(gw.service.registry, "signalfire_gateway_ingest_samples_total", worker=w)
                for gw in (a, b)
                for w in ("1", "2")
            ]
            by_c = value(c.service.registry, "signalfire_gateway_ingest_samples_total")
            assert sum(by_workers) + by_c == len(expected)

        await eventually(counted_once, timeout=15)
        assert set(await metrics_consumers(nc.jetstream(), nats_config.subjects.metrics_stream)) == {
            "gateway-metrics",
            "gateway-metrics-1of2",
            "gateway-metrics-2of2",
        }
        assert c.counter("ingest_pruned_consumers_total") == 0
        for gw in (a, b):
            for w in ("1", "2"):
                assert gw.counter("ingest_pruned_consumers_total", worker=w) == 0

        # C's (the workers log in their own processes), once each: every 10 minutes at most. A
        # look sees a share read when a pull of it waits there or its sequences moved since the
        # look before, so the second share may be seen a few looks later (its workers busy).
        def mixed() -> list[str]:
            return sorted(
                r.__dict__.get("consumer", "")
                for r in caplog.records
                if "another number of ingest workers read" in r.getMessage()
            )

        async def both_warned() -> None:
            assert mixed() == ["gateway-metrics-1of2", "gateway-metrics-2of2"]

        await eventually(both_warned, timeout=15)
        await asyncio.sleep(1.5)  # three more looks: still once each, and nothing read removed
        assert mixed() == ["gateway-metrics-1of2", "gateway-metrics-2of2"]
        assert c.counter("ingest_pruned_consumers_total") == 0


def share_of(host: str, shares: int) -> int:
    """The share (1-based) of the hosts ``host`` is in among ``shares`` (docs/scaling.md)."""
    return fnv1a_32(subject_token(host).encode()) % shares + 1


async def metrics_consumers(js: Any, stream: str) -> dict[str, Any]:
    return {i.name: i for i in await js.consumers_info(stream) if i.name.startswith("gateway-metrics")}


async def test_each_worker_stores_its_share_of_the_hosts_and_a_new_number_goes_on_where_storing_stood(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    """One process, then two workers, then one process again, on one stream: worker k stores
    (and merges the rollups of) the hosts of share k alone; each change of the number starts
    where storing stood (nothing stored twice, the stream not read again from its start), and
    the consumers of the number no gateway runs any more are removed."""
    js = nc.jetstream()
    subjects = nats_config.subjects
    stream = subjects.metrics_stream
    batches = fleet_batches()
    phases = [
        [b for n, b in enumerate(batches) if lo <= n % BATCHES_PER_HOST < hi]
        for lo, hi in ((0, 14), (14, 28), (28, 40))
    ]
    assert {share_of(h, 2) for h in HOSTS} == {1, 2}  # both shares hold hosts
    quick = {"ingest_prune_after": Duration(1.0), "fetch_batch": 5}
    conn = await asyncpg.connect(database_url)
    published: list[MetricBatch] = []

    async def publish(phase: list[MetricBatch]) -> None:
        for batch in phase:
            await js.publish(subjects.metrics(batch.host), encode(batch))
        published.extend(phase)

    async def stored_and_acknowledged(names: set[str]) -> None:
        assert await conn.fetchval(f"SELECT coalesce(sum(count), 0) FROM {HOURS} AS r") == len(
            points(published)
        )
        consumers = await metrics_consumers(js, stream)
        for name in names:
            assert (consumers[name].num_pending, consumers[name].num_ack_pending) == (0, 0), name

    async def only(names: set[str]) -> None:
        assert set(await metrics_consumers(js, stream)) == names

    try:
        async with running_gateway(gateway_config(nats_config, database_url, tmp_path, **quick)):
            await publish(phases[0])
            await eventually(lambda: stored_and_acknowledged({"gateway-metrics"}), timeout=30)

        shares = {"gateway-metrics-1of2", "gateway-metrics-2of2"}
        config = gateway_config(nats_config, database_url, tmp_path, ingest_workers=2, **quick)
        async with running_gateway(config) as gw:
            consumers = await metrics_consumers(js, stream)
            stood = (await js.stream_info(stream)).state.last_seq
            for name in shares:  # each share starts after what the one consumer had stored
                assert consumers[name].config.opt_start_seq == stood + 1, name
            await publish(phases[1])
            await eventually(lambda: stored_and_acknowledged(shares), timeout=30)
            await eventually(lambda: only(shares), timeout=15)  # the one of one process, removed

            async def by_share() -> None:
                for k in (1, 2):
                    worker = str(k)
                    mine = [b for b in phases[1] if share_of(b.host, 2) == k]
                    assert gw.counter("ingest_samples_total", worker=worker) == sum(
                        len(b.samples) for b in mine
                    )
                    assert gw.counter("ingest_passed_messages_total", worker=worker) == len(phases[1]) - len(
                        mine
                    )
                    assert gw.counter("ingest_duplicate_samples_total", worker=worker) == 0
                pruned = [gw.counter("ingest_pruned_consumers_total", worker=w) for w in ("1", "2")]
                assert sum(pruned) == 1

            await eventually(by_share, timeout=15)

        async with running_gateway(gateway_config(nats_config, database_url, tmp_path, **quick)) as gw:
            stood = (await js.stream_info(stream)).state.last_seq
            consumer = (await metrics_consumers(js, stream))["gateway-metrics"]
            assert consumer.config.opt_start_seq == stood + 1
            await publish(phases[2])
            await eventually(lambda: stored_and_acknowledged({"gateway-metrics"}), timeout=30)
            await eventually(lambda: only({"gateway-metrics"}), timeout=15)

            async def pruned_both() -> None:  # counted once the removal's answer is back
                assert gw.counter("ingest_pruned_consumers_total") == 2

            await eventually(pruned_both, timeout=5)
            assert gw.counter("ingest_samples_total") == len(points(phases[2]))
            assert gw.counter("ingest_duplicate_samples_total") == 0
        await assert_stored_once_and_rolled_up_exactly(conn, points(batches))
    finally:
        await conn.close()


async def test_a_metrics_consumer_removed_while_the_gateway_runs_is_made_again_where_it_stood(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    """Removed by hand (or by a gateway of another number of workers while this one could not
    read): made again from its floor at the gateway's last look, and storing goes on."""
    js = nc.jetstream()
    subjects = nats_config.subjects
    batches = fleet_batches()
    first, then = batches[::2], batches[1::2]
    config = gateway_config(nats_config, database_url, tmp_path, ingest_prune_after=Duration(1.0))
    async with running_gateway(config) as gw:
        for batch in first:
            await js.publish(subjects.metrics(batch.host), encode(batch))

        async def stored(count: int) -> None:
            assert gw.counter("ingest_samples_total") == count

        await eventually(lambda: stored(len(points(first))), timeout=30)
        last = (await js.stream_info(subjects.metrics_stream)).state.last_seq

        async def looked() -> None:  # every 0.5 s (ingest_prune_after / 2) it notes its floor
            assert gw.service.ingest is not None and gw.service.ingest._floor == last

        await eventually(looked, timeout=15)
        await js.delete_consumer(subjects.metrics_stream, "gateway-metrics")
        for batch in then:
            await js.publish(subjects.metrics(batch.host), encode(batch))
        await eventually(lambda: stored(len(points(batches))), timeout=30)
        assert gw.counter("ingest_duplicate_samples_total") == 0


async def test_a_committed_frame_that_cannot_be_decoded_is_counted_and_the_rest_is_delivered(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    subject = nats_config.subjects.committed("metrics")
    good = MetricBatch(host="web-1", time=time.time(), samples=[Sample(name="cpu.usage_percent", value=12.5)])
    also_good = MetricBatch(
        host="web-2", time=time.time(), samples=[Sample(name="cpu.usage_percent", value=7.5)]
    )
    publisher = CommittedPublisher(nc, nats_config.subjects, "another", Registry("signalfire_test"))
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        async with websockets.connect(ws_url(gw)) as ws:
            await ws.send(json.dumps({"subscribe": {"alerts": False, "host_status": False}}))
            assert json.loads(await ws.recv())["kind"] == "hello"
            frames: list[dict[str, Any]] = []
            stop = asyncio.Event()
            reader = asyncio.create_task(collect_stream(ws, frames, stop))
            await nc.publish(subject, b"\xff not json")
            await nc.publish(nats_config.subjects.committed("nonsense"), b"{}")
            good_item, also_good_item = publisher.metric_items(stored_as([good, also_good]))
            mixed = CommittedFrame(
                origin="another-gateway",
                items=[
                    msgspec.Raw(b'{"host": "web-9"}'),
                    # two series, one value
                    msgspec.Raw(
                        msgspec.json.encode(
                            FrameBatch("web-8", msgspec.Raw(b'[["a.b","{}"],["c.d","{}"]]'), 1.0, b"\0" * 8)
                        )
                    ),
                    msgspec.Raw(good_item),
                ],
            )
            await nc.publish(subject, msgspec.json.encode(mixed))
            # a frame after the bad ones, and a batch a real ingest commits, still arrive
            await nc.publish(
                subject,
                msgspec.json.encode(CommittedFrame(origin="another", items=[msgspec.Raw(also_good_item)])),
            )
            await nc.jetstream().publish(
                nats_config.subjects.metrics("web-3"),
                encode(
                    MetricBatch(
                        host="web-3", time=time.time(), samples=[Sample(name="cpu.usage_percent", value=1.0)]
                    )
                ),
            )

            async def all_arrived() -> None:
                assert {(f["host"], f["value"]) for f in frames} >= {
                    ("web-1", 12.5),
                    ("web-2", 7.5),
                    ("web-3", 1.0),
                }

            await eventually(all_arrived, timeout=15)
            stop.set()
            await reader
        assert gw.counter("committed_frames_rejected_total", kind="metrics") == 2
        assert gw.counter("committed_frames_rejected_total", kind="unknown") == 1
        assert gw.counter("committed_frames_received_total", kind="metrics") == 2
        # the latest values were fed from the frames too, and from none of the bad items
        assert gw.service.latest.get(("web-2", "cpu.usage_percent", "{}")) is not None
        assert gw.service.latest.get(("web-8", "a.b", "{}")) is None


async def test_a_round_larger_than_max_payload_is_split_over_frames_and_all_of_it_arrives(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    # Four batches of ~400 KB each: about 1.6 MB, past the server's 1 MB max_payload.
    big = [
        MetricBatch(
            host=f"big-{i}",
            time=time.time(),
            samples=[Sample(name=f"m.{k}", value=float(k), labels={"pad": "x" * 20}) for k in range(5000)],
        )
        for i in range(4)
    ]
    assert sum(len(encode(b)) for b in big) > nc.max_payload
    registry = Registry("signalfire_test")
    publisher = CommittedPublisher(nc, nats_config.subjects, "test-origin", registry)
    async with running_gateway(gateway_config(nats_config, database_url, tmp_path)) as gw:
        await publisher.metrics(stored_as(big), [])
        await nc.flush()

        async def all_applied() -> None:
            for i in range(4):
                assert gw.service.latest.get((f"big-{i}", "m.4999", '{"pad":"' + "x" * 20 + '"}')) is not None

        await eventually(all_applied, timeout=15)
    assert value(registry, "signalfire_test_committed_frames_published_total", kind="metrics") >= 2
    assert value(registry, "signalfire_test_committed_publish_errors_total", reason="too_large") == 0


async def test_a_worker_that_dies_is_started_again_and_stop_ends_every_worker(
    nc: Any, nats_config: NatsConfig, database_url: str, tmp_path: Path
) -> None:
    # ack_wait 5 s: what the killed worker held is redelivered to the others soon
    config = gateway_config(
        nats_config, database_url, tmp_path, ingest_workers=2, fetch_batch=5, ack_wait=Duration(5)
    )
    js = nc.jetstream()
    sent = 0

    async def publish(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            sent += 1
            batch = MetricBatch(
                host="web-1", time=time.time(), samples=[Sample(name="cpu.usage_percent", value=float(sent))]
            )
            await js.publish(nats_config.subjects.metrics("web-1"), encode(batch))

    async with running_gateway(config) as gw:
        workers = gw.service.workers
        assert workers is not None
        first = workers.pids()
        await publish(20)
        os.kill(first[0], signal.SIGKILL)

        async def restarted() -> None:
            assert gw.counter("ingest_worker_restarts_total", worker="1") == 1
            assert workers.running() == 2

        await eventually(restarted, timeout=30)
        assert workers.pids()[0] != first[0] and workers.pids()[1] == first[1]
        await publish(20)
        conn = await asyncpg.connect(database_url)
        try:

            async def all_stored() -> None:
                assert await conn.fetchval("SELECT count(*) FROM samples") == sent

            await eventually(all_stored, timeout=30)
        finally:
            await conn.close()
        running = workers.pids()
    # stopped with the gateway: no worker process is left
    for pid in running:
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is an ended process its parent has not reaped yet
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"

"""Evaluator start → first judged alert: how long after ``signalfire evaluator`` is spawned
the first alert event of a sample published all along arrives, unpartitioned
(``SF_PARTITIONS=0``) and with the default partitions (16).

Starts a private nats-server on loopback, then per round and mode a real evaluator process
(each round under a prefix of its own, so with empty buckets) in three ways: its first start,
a start after the previous process stopped cleanly (SIGTERM), and a start after it was killed
with SIGKILL (its leases and announcement left behind). From just before the spawn a hot
sample of a host the evaluator has never seen is published every 10 ms; the time is from the
spawn to the alert event's arrival on a core subscription, so it includes the interpreter's
start, the rules' load, the connections and, partitioned, the first round of leases and the
history read.

    uv run python bench/evaluator_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack import NatsServer, ServiceProcess
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.support import percentiles
from signalfire.bus import NatsConfig, connect, ensure_streams, request_json
from signalfire.events import MetricBatch, Sample, encode

RULES = """
rules:
  - {name: StartHot, metric: temp, condition: "> 90", severity: high}
"""
WAYS = ("first start", "after a clean stop", "after kill -9")


async def wait_ready(config: NatsConfig, nc: NATS) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await request_json(nc, config.subjects.control("evaluator", "rules"), timeout=0.5)
            return
        except (LookupError, TimeoutError):
            if time.monotonic() > deadline:
                raise SystemExit("the evaluator did not start; see its log") from None
            await asyncio.sleep(0.1)


async def first_alert(config: NatsConfig, nc: NATS, host: str, spawn: ServiceProcess) -> float:
    """Seconds from spawning ``spawn`` to the first alert event of ``host``, whose hot sample
    is published every 10 ms meanwhile."""
    arrived: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def on_alert(msg: Msg) -> None:
        if not arrived.done():
            arrived.set_result(time.monotonic())

    sub = await nc.subscribe(config.subjects.alerts(host), cb=on_alert)
    await nc.flush()

    async def publish() -> None:
        while True:
            batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=99.0)])
            await nc.publish(config.subjects.metrics(host), encode(batch))
            await asyncio.sleep(0.01)

    publisher = asyncio.create_task(publish())
    try:
        await asyncio.sleep(0.05)  # the samples flow before the process exists
        spawned = time.monotonic()
        spawn.start()
        return await asyncio.wait_for(arrived, 60) - spawned
    finally:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        await sub.unsubscribe()


async def round_of(root: Path, url: str, partitions: int, number: int) -> dict[str, float]:
    prefix = f"b{partitions}r{number}"
    config = NatsConfig(url=url, prefix=prefix)
    nc = await connect(config, "bench")
    await ensure_streams(nc.jetstream(), config)
    env = {
        **os.environ,
        "SF_NATS_URL": url,
        "SF_NATS_PREFIX": prefix,
        "SF_RULES": str(root / "rules.yaml"),
        "SF_LOG_LEVEL": "warning",
        "SF_PARTITIONS": str(partitions),
    }
    times: dict[str, float] = {}
    process = ServiceProcess(f"evaluator-{prefix}", ["evaluator"], env, root)
    try:
        times[WAYS[0]] = await first_alert(config, nc, "start-first", process)
        process.stop()  # SIGTERM, waited for
        times[WAYS[1]] = await first_alert(config, nc, "start-clean", process)
        await asyncio.sleep(1.5)  # a poll or more: leases renewed since the start
        assert process.proc is not None
        os.killpg(process.proc.pid, signal.SIGKILL)
        process.proc.wait()
        times[WAYS[2]] = await first_alert(config, nc, "start-killed", process)
        await wait_ready(config, nc)
    finally:
        process.stop()
        await nc.close()
    return times


async def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        root = Path(tmp)
        (root / "rules.yaml").write_text(RULES)
        nats = NatsServer(root / "nats").start()
        results: dict[tuple[int, str], list[float]] = {}
        try:
            for number in range(rounds):
                for partitions in (0, 16):  # alternately, under the same load
                    times = await round_of(root, nats.url, partitions, number)
                    for way, seconds in times.items():
                        results.setdefault((partitions, way), []).append(seconds)
        finally:
            nats.stop()
    print(f"spawn → first alert event, seconds ({rounds} rounds, {os.cpu_count()} cores, loopback)")
    print(f"{'':<34}{'p50':>8}{'max':>8}   runs")
    for (partitions, way), values in sorted(results.items(), key=lambda kv: (kv[0][0], WAYS.index(kv[0][1]))):
        p = percentiles(values)
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{f'partitions {partitions}, {way}':<34}{p['p50']:>8.2f}{max(values):>8.2f}   {runs}")


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What NATS costs per agent batch: one node against a three-node cluster, and the evaluators'
fan-out, measured in one run (the figures docs/scaling.md sizes NATS from).

Every phase publishes the same ``--batches`` MetricBatches of ``--samples`` samples (the size of
an agent's batch: about 150 samples on a small VM, docs/agent.md) from ``--hosts`` hosts to
``SF_METRICS`` as the agent does (JetStream publish with a ``Nats-Msg-Id``, waiting for the
ack, ``--in-flight`` at once), and reads the CPU time of every nats-server process from
``/proc`` before and after. Phases:

* **core** (the reference): the same payloads published with core NATS to one node, no
  stream and no subscriber: what the server spends on receiving and routing a message;
* **1 node**: JetStream, the stream on one node (``replicas: 1``);
* **3 nodes**: JetStream on a three-node cluster, ``replicas: 3`` (what ``make up
  NATS_NODES=3`` and ``compose.scaled.yaml`` run);
* **3 nodes + N subscribers**: the same with ``--subscribers`` core subscriptions on
  ``sf.metrics.>`` each receiving every batch (an evaluator replica subscribes like this and
  skips other replicas' hosts after receiving them), from processes of their own.

It prints batches per second, nats-server CPU microseconds per batch (all nodes together) and
the ratio to the core reference.

    uv run python bench/nats_cluster.py [--batches 20000] [--samples 150] [--subscribers 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack import NatsCluster, NatsServer

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.events import MetricBatch, Sample, encode

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def payloads(hosts: int, samples: int) -> list[tuple[str, bytes]]:
    """One encoded batch per host, ``samples`` samples with an agent's names and labels."""
    out = []
    for h in range(hosts):
        host = f"bench-{h:05d}"
        batch = MetricBatch(
            host=host,
            time=time.time(),
            labels={"env": "prod", "role": "web"},
            samples=[
                Sample(name=f"bench.metric_{i % 40}", value=float(i), labels={"device": f"d{i // 40}"})
                for i in range(samples)
            ],
        )
        out.append((f"sf.metrics.{host}", encode(batch)))
    return out


async def _publish(
    config: NatsConfig, batches: Sequence[tuple[str, bytes]], count: int, in_flight: int, jetstream: bool
) -> float:
    """Publish ``count`` batches (cycling through ``batches``); the seconds it took."""
    nc = await connect(config, "bench-publisher")
    js = nc.jetstream()
    next_index = 0
    run = time.monotonic_ns()  # every phase's ids new: the stream drops a repeated id
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            subject, data = batches[i % len(batches)]
            if jetstream:
                await js.publish(subject, data, headers={"Nats-Msg-Id": f"{run}:{subject}:{i}"}, timeout=10)
            else:
                # Outside SF_METRICS's subjects: a core publish to them would be stored too.
                await nc.publish("bench.core" + subject.removeprefix("sf.metrics"), data)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    if not jetstream:
        await nc.flush(timeout=30)
    took = time.perf_counter() - started
    await nc.close()
    return took


async def _ensure_streams(config: NatsConfig) -> None:
    nc = await connect(config, "bench-setup")
    try:
        await ensure_streams(nc.jetstream(), config)
    finally:
        await nc.close()
    await asyncio.sleep(2)


def _subscriber(url: str, servers: list[str], expected: int, ready: Any, done: Any) -> None:
    """A process with one core subscription on ``sf.metrics.>`` counting ``expected`` batches."""
    logging.getLogger("signalfire.bus").setLevel(logging.ERROR)

    async def run() -> None:
        nc = await connect(NatsConfig(url=url, servers=servers), "bench-subscriber")
        got = 0
        finished = asyncio.Event()

        async def on_message(_msg: object) -> None:
            nonlocal got
            got += 1
            if got >= expected:
                finished.set()

        await nc.subscribe(
            "sf.metrics.>", cb=on_message, pending_msgs_limit=1_000_000, pending_bytes_limit=-1
        )
        await nc.flush()
        ready.set()
        try:
            await asyncio.wait_for(finished.wait(), timeout=300)
        finally:
            await nc.close()
            done.set()

    asyncio.run(run())


def phase(
    name: str,
    servers: list[NatsServer],
    config: NatsConfig,
    batches: Sequence[tuple[str, bytes]],
    args: argparse.Namespace,
    *,
    jetstream: bool = True,
    subscribers: int = 0,
) -> tuple[float, float]:
    """Run one phase; (batches per second, nats-server CPU microseconds per batch)."""
    procs, dones = [], []
    ctx = multiprocessing.get_context("spawn")
    for _ in range(subscribers):
        ready, done = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_subscriber, args=(config.url, config.servers, args.batches, ready, done))
        proc.start()
        if not ready.wait(30):
            raise RuntimeError("a subscriber did not subscribe within 30 s")
        procs.append(proc)
        dones.append(done)
    if jetstream:
        asyncio.run(_ensure_streams(config))  # created (and the cluster settled) before timing
    pids = [server.proc.pid for server in servers if server.proc is not None]
    before = sum(cpu_seconds(pid) for pid in pids)
    took = asyncio.run(_publish(config, batches, args.batches, args.in_flight, jetstream))
    for done in dones:
        done.wait(120)
    time.sleep(0.5)  # the replicas' last appends
    used = sum(cpu_seconds(pid) for pid in pids) - before
    for proc in procs:
        proc.join(10)
    rate, per_batch = args.batches / took, used / args.batches * 1e6
    print(f"{name:<34} {rate:>10,.0f} batches/s  nats-server CPU {per_batch:>7.1f} µs/batch", flush=True)
    return rate, per_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=20_000, help="batches per phase (default 20000)")
    parser.add_argument("--samples", type=int, default=150, help="samples per batch (default 150)")
    parser.add_argument("--hosts", type=int, default=1_000, help="hosts the batches come from (default 1000)")
    parser.add_argument(
        "--in-flight", type=int, default=64, help="publishes awaiting their ack at once (default 64)"
    )
    parser.add_argument(
        "--subscribers", type=int, default=4, help="core subscribers in the last phase (default 4)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each phase, alternating (default 3)")
    args = parser.parse_args(argv)
    logging.getLogger("signalfire.bus").setLevel(logging.ERROR)  # "disconnected" at every close
    batches = payloads(args.hosts, args.samples)
    size = sum(len(data) for _, data in batches) / len(batches)
    print(
        f"{args.batches:,} batches a phase, {args.samples} samples ({size / 1024:.1f} KiB) each, "
        f"{args.hosts:,} hosts, {args.in_flight} in flight; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    state = Path(tempfile.mkdtemp(prefix="sf-bench-nats-"))
    runs: dict[str, list[tuple[float, float]]] = {"core": [], "1": [], "3": [], "3+": []}
    try:
        # Each phase --repeat times, alternating, so a change in the machine's load shows as
        # spread between repeats instead of as a difference between phases.
        single = NatsServer(state / "single").start()
        try:
            config = NatsConfig(url=single.url)
            for _ in range(args.repeat):
                runs["core"].append(
                    phase("core NATS, 1 node (reference)", [single], config, batches, args, jetstream=False)
                )
                runs["1"].append(phase("JetStream, 1 node, R1", [single], config, batches, args))
        finally:
            single.stop()
        cluster = NatsCluster(state / "cluster", 3).start()
        try:
            config = cluster.nats_config()
            for _ in range(args.repeat):
                runs["3"].append(phase("JetStream, 3 nodes, R3", cluster.nodes, config, batches, args))
                runs["3+"].append(
                    phase(
                        f"JetStream, 3 nodes, R3, {args.subscribers} subscribers",
                        cluster.nodes,
                        config,
                        batches,
                        args,
                        subscribers=args.subscribers,
                    )
                )
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    # The median repeat of each phase (CPU per batch; on a shared machine, other work only adds).
    results = {key: sorted(values, key=lambda r: r[1])[len(values) // 2] for key, values in runs.items()}
    reference = results["core"][1]
    print("\nnats-server CPU per batch (median of the repeats) against core NATS (the reference):")
    for key, label in (
        ("1", "1 node, R1"),
        ("3", "3 nodes, R3"),
        ("3+", f"3 nodes, R3, {args.subscribers} subscribers"),
    ):
        print(f"  {label:<28} {results[key][1] / reference:5.1f}x  ({results[key][1]:.1f} µs/batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

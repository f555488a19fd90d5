"""Scaling out: evaluator replicas sharing host partitions, measured in one run.

**Throughput, 1 vs 2 replicas.** A private nats-server and real ``signalfire evaluator``
processes (``partitions: 16``), the 50 mixed rules of ``bench/evaluator_throughput.py`` over
``--hosts`` hosts x 100 series. One warm-up round (every series created), then ``--rounds``
rounds of one MetricBatch per host published at once; the time until the replicas' ``batches``
counters (``/metrics``) account for every batch gives samples per second. The same rules,
hosts and batches run with one replica, then with two; the ratio is the figure (each replica
receives every batch but skips another replica's before decoding it).

**Detection delay during a failover.** Two replicas, ``--failover-after`` (10 s), a ``for: 0``
threshold over ``--failover-hosts`` hosts reporting every 0.5 s. The replica holding the most
partitions is killed with SIGKILL, and right then the hosts start running hot one after the
other, spread over ``failover_after`` + 2 s. The delay of each host is from its first hot
sample's publish to its firing AlertEvent's arrival; p99 over the hosts that moved is held
against ``failover_after`` + 1 s. The survivor reads the moved partitions' recent history
back from the metrics stream when it takes them (docs/scaling.md); ``--failover-window``
adds a rule averaging over that many seconds (that never fires), so it reads that much more,
and the replicas run that long before the kill.

**Gateway ingest workers, 1 vs 2.** ``bench/ingest.py``'s measurement (the raw COPY
ceilings, then agents' batches published to JetStream into a real ``signalfire gateway``) run
twice in the same run, the gateway with ``--workers 1`` then ``--workers 2``: throughput and
the efficiency ratio (CPU seconds per million samples of gateway + workers + PostgreSQL +
nats-server against the raw COPY's) of each.

    uv run python bench/scale.py [--hosts 400] [--rounds 8] [--failover-hosts 200] [--failover-after 10]
        [--failover-window 0] [--part all|evaluator|gateway] [--gateway-seconds 20] [--gateway-rate 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack import NatsServer, ServiceProcess, free_port

from bench import ingest as ingest_bench
from bench.evaluator_throughput import bench_rules_text, make_batches
from bench.support import percentiles
from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.evaluator.leases import read_bucket
from signalfire.evaluator.partitions import host_partition
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode

PARTITIONS = 16
SAMPLES_PER_BATCH = 100  # make_batches: 20 metrics x 5 devices
_BATCHES = re.compile(r'^signalfire_evaluator_batches_total\{kind="metrics"\} ([0-9.e+]+)$', re.M)


def scrape_batches(port: int, pattern: re.Pattern[str] = _BATCHES) -> float:
    """The ``batches{kind="metrics"}`` counter (or the one ``pattern`` finds) of the evaluator
    serving /metrics on ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0


def _replayed(mode: str) -> re.Pattern[str]:
    return re.compile(rf'^signalfire_evaluator_replayed_batches_total\{{mode="{mode}"\}} ([0-9.e+]+)$', re.M)


class Replicas:
    """``count`` evaluator processes on one prefix, each with its own /metrics port."""

    def __init__(
        self, root: Path, url: str, *, prefix: str, rules: Path, count: int, failover_after: float
    ) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.processes: dict[str, ServiceProcess] = {}
        for i, port in enumerate(self.ports):
            replica = f"r{i}"
            env = {
                **os.environ,
                "SF_NATS_URL": url,
                "SF_NATS_PREFIX": prefix,
                "SF_RULES": str(rules),
                "SF_LOG_LEVEL": "warning",
                "SF_PARTITIONS": str(PARTITIONS),
                "SF_FAILOVER_AFTER": f"{failover_after:g}s",
                "SF_REPLICA_ID": replica,
                "SF_METRICS_LISTEN": f"127.0.0.1:{port}",
                "SF_WATCH_INTERVAL": "0",
            }
            name = f"{prefix}-{replica}"
            self.processes[replica] = ServiceProcess(name, ["evaluator"], env, root).start()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()

    async def batches(self) -> float:
        counts = await asyncio.gather(*(asyncio.to_thread(scrape_batches, p) for p in self.ports))
        return sum(counts)


async def holders(kv: Any) -> dict[str, str]:
    """Partition → the replica holding its lease."""
    return {
        key.removeprefix("partition."): entry.lease.replica
        for key, entry in (await read_bucket(kv)).items()
        if key.startswith("partition.")
    }


async def wait_balanced(kv: Any, replicas: int, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # the bucket appears with the first replica
            held = await holders(kv)
            if len(held) == PARTITIONS + 1 and len(set(held.values())) == replicas:
                return held
        if time.monotonic() > deadline:
            raise RuntimeError("the evaluator replicas did not share the partitions in time")
        await asyncio.sleep(0.2)


async def throughput(root: Path, url: str, replicas: int, hosts: int, rounds: int) -> float:
    """Samples per second that ``replicas`` evaluators judge, saturated."""
    prefix = f"scale{replicas}"
    nats = NatsConfig(url=url, prefix=prefix)
    nc = await connect(nats, "bench-scale")
    js = nc.jetstream()
    await ensure_streams(js, nats)
    rules = root / "rules.yaml"
    rules.write_text(bench_rules_text())
    group = Replicas(root, url, prefix=prefix, rules=rules, count=replicas, failover_after=10.0)
    try:
        await wait_balanced(await js.key_value(nats.subjects.bucket("evaluator_leases")), replicas)
        batches = make_batches(hosts, rounds + 1)
        subjects = [nats.subjects.metrics(f"host-{h}") for h in range(hosts)]

        async def publish(round_: list[bytes]) -> None:
            for subject, payload in zip(subjects, round_, strict=True):
                await nc.publish(subject, payload)
            await nc.flush()

        async def judged(total: float, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while await group.batches() < total:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the evaluators judged {await group.batches():.0f} of {total:.0f}")
                await asyncio.sleep(0.05)

        await publish(batches[0])  # warm-up: every series created
        await judged(hosts, 120)
        started = time.monotonic()
        for round_ in batches[1:]:
            await publish(round_)
        await judged(hosts * (rounds + 1), 180)
        elapsed = time.monotonic() - started
    finally:
        group.stop()
        await nc.close()
    return hosts * rounds * SAMPLES_PER_BATCH / elapsed


FAILOVER_RULES = """\
rules:
  - {name: ScaleHot, metric: scale.temp, condition: "> 50", resolve: "< 40", severity: high}
"""


def failover_rules(window: float) -> str:
    """:data:`FAILOVER_RULES`, and with ``window`` a rule averaging over that window that never
    fires: the takeover then reads that much more history back (what it costs)."""
    if not window:
        return FAILOVER_RULES
    return (
        FAILOVER_RULES
        + f"""  - {{name: ScaleWindow, metric: scale.temp, aggregate: avg, window: {window:g}s,
     condition: "> 1000", severity: low}}
"""
    )


async def failover(
    root: Path, url: str, hosts: int, failover_after: float, window: float = 0.0
) -> dict[str, Any]:
    """Detection delays (seconds) of hosts turning hot while a replica is killed."""
    nats = NatsConfig(url=url, prefix="scalefo")
    nc = await connect(nats, "bench-scale-failover")
    js = nc.jetstream()
    await ensure_streams(js, nats)
    rules = root / "failover-rules.yaml"
    rules.write_text(failover_rules(window))
    names = [f"fo-{i}" for i in range(hosts)]
    hot_from: dict[str, float] = {}  # host → monotonic time it starts running hot
    first_hot: dict[str, float] = {}  # host → publish time of its first hot sample
    fired: dict[str, float] = {}
    all_fired = asyncio.Event()

    async def on_alert(msg: Any) -> None:
        event = decode(msg.data, AlertEvent)
        if event.status == "firing":
            fired.setdefault(event.host, time.monotonic())
            if len(fired) == hosts:
                all_fired.set()

    async def report_every_half_second() -> None:
        while True:
            for host in names:
                now = time.monotonic()
                hot = host in hot_from and now >= hot_from[host]
                batch = MetricBatch(
                    host=host, time=time.time(), samples=[Sample(name="scale.temp", value=90 if hot else 30)]
                )
                await nc.publish(nats.subjects.metrics(host), encode(batch))
                if hot:
                    first_hot.setdefault(host, now)
            await asyncio.sleep(0.5)

    alerts = await nc.subscribe(nats.subjects.all_alerts, cb=on_alert)
    group = Replicas(root, url, prefix="scalefo", rules=rules, count=2, failover_after=failover_after)
    publisher = asyncio.create_task(report_every_half_second())
    try:
        kv = await js.key_value(nats.subjects.bucket("evaluator_leases"))
        held = await wait_balanced(kv, 2)
        await asyncio.sleep(max(2.0, window))  # every host seen by its owner; windows full
        victim = max(("r0", "r1"), key=lambda r: list(held.values()).count(r))
        moved = {h for h in names if held[host_partition(h, PARTITIONS)] == victim}
        process = group.processes[victim]
        assert process.proc is not None
        process.proc.kill()
        process.proc.wait(10)
        killed = time.monotonic()
        spread = failover_after + 2
        for i, host in enumerate(names):
            hot_from[host] = killed + spread * i / hosts
        with contextlib.suppress(TimeoutError):  # the missing ones are reported
            await asyncio.wait_for(all_fired.wait(), spread + failover_after + 15)
        taken = await holders(kv)
        survivor_port = group.ports[0 if victim == "r1" else 1]
        replayed = {
            mode: await asyncio.to_thread(scrape_batches, survivor_port, _replayed(mode))
            for mode in ("warm", "judged")
        }
    finally:
        publisher.cancel()
        group.stop()
        await alerts.unsubscribe()
        await nc.close()
    delays = {h: fired[h] - first_hot[h] for h in names if h in fired and h in first_hot}
    return {
        "moved": sorted(moved),
        "delays_moved": [delays[h] for h in moved if h in delays],
        "delays_stayed": [d for h, d in delays.items() if h not in moved],
        "missing": sorted(set(names) - set(fired)),
        "survivor_holds_all": set(taken.values()) == {"r1" if victim == "r0" else "r0"},
        "replayed": replayed,
    }


async def gateway_workers(args: argparse.Namespace) -> bool:
    """The ingest benchmark with 1 then 2 gateway ingest workers; whether nothing was lost."""
    measured: dict[int, dict[str, float]] = {}
    for workers in (1, 2):
        print(f"--- gateway with {workers} ingest worker(s)")
        measured[workers] = await ingest_bench.measure(args, workers)
    print(
        f"gateway ingest workers, {args.seconds:g} s each,"
        f" offered {args.rate or float('nan'):,.0f} samples/s:"
    )
    for workers, m in measured.items():
        print(
            f"  {workers} worker(s)  {m['rate']:>10,.0f} samples/s   efficiency {m['efficiency']:.2f}x"
            f" ({m['path_cpu']:.2f} against the COPY's {m['reference']:.2f} CPU s per million samples)"
            f"   p99 publish→commit {m['p99']:.2f} s   lost {m['lost']:,.0f}"
        )
    print(f"  throughput 2 / 1 workers: {measured[2]['rate'] / measured[1]['rate']:.2f}x")
    return all(m["lost"] == 0 for m in measured.values())


async def run(args: argparse.Namespace) -> int:
    if args.part == "gateway":
        return 0 if await gateway_workers(args) else 1
    gateway_ok = True
    if args.part == "all":
        gateway_ok = await gateway_workers(args)
    root = Path(tempfile.mkdtemp(prefix="sf-scale-"))
    try:
        server = NatsServer(root / "nats").start()
        try:
            one = await throughput(root, server.url, 1, args.hosts, args.rounds)
            two = await throughput(root, server.url, 2, args.hosts, args.rounds)
            result = await failover(
                root, server.url, args.failover_hosts, args.failover_after, args.failover_window
            )
        finally:
            server.stop()
    finally:
        if args.keep:
            print(f"run directory (logs): {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    ratio = two / one
    print(f"evaluator throughput, {args.hosts} hosts x 100 series, 50 rules, {args.rounds} rounds:")
    print(f"  1 replica   {one:>12,.0f} samples/s")
    print(f"  2 replicas  {two:>12,.0f} samples/s   ratio {ratio:.2f}x (target >= 1.6x)")
    moved, stayed = result["delays_moved"], result["delays_stayed"]
    limit = args.failover_after + 1
    print(
        f"detection delay during a failover (failover_after {args.failover_after:g}s, "
        f"{args.failover_hosts} hosts):"
    )
    for name, values in (("moved hosts", moved), ("other hosts", stayed)):
        if values:
            p = percentiles(values)
            print(
                f"  {name:<12} n={len(values):<4} p50 {p['p50']:.2f}s  p99 {p['p99']:.2f}s  "
                f"max {max(values):.2f}s"
            )
    replayed = result["replayed"]
    print(
        f"  survivor's history read back on taking the partitions (all takeovers of its life): "
        f"{replayed['warm']:,.0f} batches warm, {replayed['judged']:,.0f} judged"
    )
    if result["missing"]:
        print(f"  never fired: {len(result['missing'])} hosts ({', '.join(result['missing'][:5])} ...)")
    p99 = percentiles(moved)["p99"] if moved else float("inf")
    ok = (
        ratio >= 1.6
        and p99 <= limit
        and not result["missing"]
        and result["survivor_holds_all"]
        and gateway_ok
    )
    print(
        f"  p99 of moved hosts {p99:.2f}s (target <= {limit:g}s); survivor holds every partition: "
        f"{result['survivor_holds_all']}"
    )
    return 0 if ok else 1


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=400, help="hosts of the throughput runs")
    parser.add_argument("--rounds", type=int, default=8, help="batches per host, timed")
    parser.add_argument("--failover-hosts", type=int, default=200)
    parser.add_argument("--failover-after", type=float, default=10.0)
    parser.add_argument(
        "--failover-window",
        type=float,
        default=0.0,
        help="add a rule averaging over this many seconds (never firing): history read back on takeover",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory and its logs")
    parser.add_argument(
        "--part", choices=("all", "evaluator", "gateway"), default="all", help="which measurements to run"
    )
    parser.add_argument(
        "--gateway-seconds",
        dest="seconds",
        type=float,
        default=20.0,
        help="length of each gateway measurement",
    )
    parser.add_argument(
        "--gateway-rate",
        dest="rate",
        type=float,
        default=0.0,
        help="samples/s published to the gateway (default: as fast as it keeps up)",
    )
    ingest_bench.add_arguments(parser)
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

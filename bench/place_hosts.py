"""Placing hosts resolved by hand after an evaluator's start or takeover: what
``EvaluatorService._place`` costs against reading the same last batches with one batched
direct get (``multi_last``, the raw ceiling), in one run.

A private nats-server and a metrics stream like ``SF_METRICS`` holding ``--batches`` batches
of each of ``--hosts`` hosts (100 samples each, about an agent's). An engine holds one alert
per host, each resolved by hand a minute ago; ``_place`` then reads each host's last batch
(``STREAM.MSG.GET`` last by subject, 32 requests at a time) and notes its delay. The
reference reads the same last messages with one ``$JS.API.DIRECT.GET`` request naming every
subject (``multi_last``). Prints wall time per host of each and the ratio.

    uv run python bench/place_hosts.py [--hosts 1000] [--batches 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

import msgspec
import nats
from devstack import NatsServer
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from signalfire.bus import NatsConfig
from signalfire.evaluator.engine import Engine
from signalfire.evaluator.rules import parse_rule_text
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService
from signalfire.events import AlertAction, MetricBatch, Sample, encode

RULES = 'rules:\n  - {name: Hot, metric: temp, condition: "> 50", severity: high}\n'


async def multi_last(nc: NATS, stream: str, subjects: list[str]) -> int:
    """The last message of each of ``subjects`` in one batched direct get; how many came."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    got = 0
    try:
        request = {"multi_last": subjects, "batch": len(subjects)}
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode(request), reply=inbox)
        while True:
            msg = await sub.next_msg(timeout=10)
            status = (msg.headers or {}).get("Status")
            if status == "204":
                return got
            if status:
                raise RuntimeError(f"direct get answered {status}: {msg.headers}")
            got += 1
    finally:
        await sub.unsubscribe()


def resolved_engine(hosts: list[str], now: float) -> Engine:
    """An engine with one alert per host, each resolved by hand a minute before ``now``."""
    rules, errors = parse_rule_text(RULES, "bench.yaml")
    assert not errors, errors
    engine = Engine(rules)
    for host in hosts:
        [firing] = engine.metrics(
            MetricBatch(host=host, time=now - 120, samples=[Sample(name="temp", value=90.0)]), now - 120
        ).events
        action = AlertAction(alert_id=firing.id, action="resolve", actor="bench", time=now - 60)
        engine.action(action, now - 60)
    states = list(engine.states.values())
    fresh = Engine(rules)  # as after a start: nothing heard from any host
    fresh.load(states, now)
    return fresh


async def run(hosts: int, batches: int, rounds: int) -> None:
    names = [f"place-{i:05d}" for i in range(hosts)]
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            config = NatsConfig(url=server.url)
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            stream = config.subjects.metrics_stream
            await js.add_stream(
                StreamConfig(name=stream, subjects=[config.subjects.all_metrics], allow_direct=True)
            )
            samples = [Sample(name=f"m{j}", value=float(j)) for j in range(100)]
            for b in range(batches):
                for first in range(0, hosts, 100):
                    await asyncio.gather(
                        *(
                            js.publish(
                                config.subjects.metrics(host),
                                encode(
                                    MetricBatch(host=host, time=time.time() - (batches - b), samples=samples)
                                ),
                            )
                            for host in names[first : first + 100]
                        )
                    )
            rule_file = Path(tmp) / "rules.yaml"
            rule_file.write_text(RULES)
            service = EvaluatorService(EvaluatorConfig(nats=config, rules=[str(rule_file)]), nc=nc)
            service._js = js
            subjects = [config.subjects.metrics(host) for host in names]
            for _ in range(rounds):
                engine = resolved_engine(names, time.time())
                assert len(engine.unplaced(time.time() - 3600)) == hosts
                wall = time.perf_counter()
                await service._place(engine)
                placed = time.perf_counter() - wall
                assert engine.unplaced(time.time() - 3600) == [], "a host not placed"
                wall = time.perf_counter()
                got = await multi_last(nc, stream, subjects)
                ceiling = time.perf_counter() - wall
                assert got == hosts, got
                print(
                    f"{hosts:,} hosts resolved by hand: placed in {placed:.3f} s "
                    f"({placed / hosts * 1e6:.0f} µs a host), their last batches in one batched "
                    f"direct get {ceiling:.3f} s ({ceiling / hosts * 1e6:.0f} µs): "
                    f"{placed / ceiling:.2f}x the time"
                )
            await nc.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=3, help="batches stored per host")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.hosts, args.batches, args.rounds))


if __name__ == "__main__":
    main()

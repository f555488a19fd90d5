"""Publish → alert event latency, against the raw NATS round trip measured in the same run.

Starts a private nats-server and a real ``signalfire evaluator`` process on loopback, then
for N transitions publishes a MetricBatch that crosses a ``for: 0`` threshold (alternately
firing and resolving) and times until the AlertEvent arrives on ``sf.alerts.<host>``.
The reference is the same publish echoed straight back by NATS (a core subscription on the
metrics subject): the floor any design on this bus could reach.

    uv run python bench/alert_latency.py [--transitions 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

from devstack import NatsServer, ServiceProcess

from signalfire.bus import NatsConfig, connect, ensure_streams, request_json
from signalfire.events import MetricBatch, Sample, encode

RULES = """
rules:
  - name: BenchCPU
    metric: cpu.usage_percent
    condition: "> 90"
    resolve: "< 50"
    severity: high
"""


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "mean": statistics.fmean(ordered)}


async def measure(url: str, transitions: int) -> tuple[list[float], list[float]]:
    config = NatsConfig(url=url)
    nc = await connect(config, "bench")
    js = nc.jetstream()
    await ensure_streams(js, config)
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def on_message(msg: object) -> None:
        arrived.put_nowait(time.perf_counter())

    deadline = time.monotonic() + 30
    while True:
        try:
            await request_json(nc, "sf.control.evaluator.rules", timeout=1)
            break
        except LookupError:
            if time.monotonic() > deadline:
                raise SystemExit("the evaluator did not start; see its log") from None
            await asyncio.sleep(0.2)

    # Reference: the raw round trip of one publish through the server.
    echo = await nc.subscribe("sf.metrics.bench-ref", cb=on_message)
    raw: list[float] = []
    for i in range(transitions):
        batch = MetricBatch(host="bench-ref", time=time.time(), samples=[Sample(name="x.y", value=float(i))])
        sent = time.perf_counter()
        await js.publish("sf.metrics.bench-ref", encode(batch))
        raw.append(await asyncio.wait_for(arrived.get(), 5) - sent)
    await echo.unsubscribe()

    alerts = await nc.subscribe("sf.alerts.>", cb=on_message)
    ours: list[float] = []
    for i in range(transitions):
        host = f"bench-{i // 2}"
        value = 99.0 if i % 2 == 0 else 10.0
        batch = MetricBatch(
            host=host, time=time.time(), samples=[Sample(name="cpu.usage_percent", value=value)]
        )
        sent = time.perf_counter()
        await js.publish(f"sf.metrics.{host}", encode(batch))
        ours.append(await asyncio.wait_for(arrived.get(), 5) - sent)
    await alerts.unsubscribe()
    await nc.close()
    return raw, ours


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transitions", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        root = Path(tmp)
        (root / "rules.yaml").write_text(RULES)
        nats = NatsServer(root / "nats").start()
        env = {
            **os.environ,
            "SF_NATS_URL": nats.url,
            "SF_RULES": str(root / "rules.yaml"),
            "SF_LOG_LEVEL": "warning",
        }
        evaluator = ServiceProcess("evaluator", ["evaluator"], env, root).start()
        try:
            raw, ours = asyncio.run(measure(nats.url, args.transitions))
        finally:
            evaluator.stop()
            nats.stop()
    r, o = percentiles(raw), percentiles(ours)
    print(f"transitions: {args.transitions}   (2 cores, loopback)")
    print(f"{'':28}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}")
    print(
        "raw NATS publish→receive    "
        + "".join(f"{r[k] * 1000:>8.2f}ms" for k in ("p50", "p95", "p99", "mean"))
    )
    print(
        "publish→AlertEvent          "
        + "".join(f"{o[k] * 1000:>8.2f}ms" for k in ("p50", "p95", "p99", "mean"))
    )
    print(f"ratio (ours / raw, p50):    {o['p50'] / r['p50']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

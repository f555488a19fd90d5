"""AlertEvent published → webhook receiver arrival, against the raw NATS round trip measured
in the same run; then a sustained rate of alerts to the webhook, checking none is lost.

Starts a private nats-server and a real ``signalfire notifier`` process on loopback with one
``webhook`` channel pointing at a small HTTP receiver inside this script (on its own event
loop, so arrival times are taken the moment a request is read). Latency: N alerts published
one at a time to ``sf.alerts.<host>`` (JetStream, with its ack), each timed until its POST
arrives. Reference: the same JetStream publish echoed back to a core subscription on the
same server — the floor any design on this bus could reach. Sustained: ``--rate`` alerts per
second for ``--seconds``, then wait (bounded) until every one has arrived.

    uv run python bench/notify_latency.py [--alerts 1000] [--rate 1000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

from devstack import NatsServer, ServiceProcess

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.events import AlertEvent, encode

#: How long the sustained run may take to drain after the last publish before it counts loss.
DRAIN_LIMIT = 60.0


class Receiver:
    """A minimal HTTP/1.1 keep-alive server: records when each alert's POST arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.server: asyncio.Server | None = None
        self._arrived = asyncio.Event()

    async def all_of(self, wanted: set[str]) -> None:
        """Return once every alert in ``wanted`` has arrived."""
        while not wanted.issubset(self.arrivals):
            self._arrived.clear()
            await self._arrived.wait()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                arrived = time.perf_counter()
                alert_id = json.loads(body)["alert"]["id"]
                self.arrivals.setdefault(alert_id, arrived)
                self._arrived.set()
                waiter = self.waiters.pop(alert_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(arrived)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the notifier closed the connection, or the benchmark is over
        finally:
            writer.close()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "mean": statistics.fmean(ordered)}


def make_alert(alert_id: str) -> AlertEvent:
    now = time.time()
    return AlertEvent(
        id=alert_id,
        fingerprint=f"fp-{alert_id}",
        rule="BenchAlert",
        status="firing",
        severity="high",
        host="bench-1",
        starts_at=now,
        time=now,
        annotations={"summary": "benchmark alert"},
    )


async def measure(url: str, receiver: Receiver, alerts: int, rate: int, seconds: float) -> dict[str, object]:
    config = NatsConfig(url=url)
    nc = await connect(config, "bench")
    js = nc.jetstream()
    await ensure_streams(js, config)
    subjects = config.subjects

    # wait for the notifier: one alert through end to end
    warm = f"warm-{uuid.uuid4().hex}"
    receiver.waiters[warm] = asyncio.get_running_loop().create_future()
    await js.publish(subjects.alerts("bench-1"), encode(make_alert(warm)))
    await asyncio.wait_for(receiver.waiters[warm], 60)

    # Reference: the raw round trip of one JetStream publish through the same server.
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def on_message(msg: object) -> None:
        arrived.put_nowait(time.perf_counter())

    echo = await nc.subscribe("sf.notifications.bench-ref", cb=on_message)
    raw: list[float] = []
    for i in range(alerts):
        payload = encode(make_alert(f"ref-{i}"))
        sent = time.perf_counter()
        await js.publish("sf.notifications.bench-ref", payload)
        raw.append(await asyncio.wait_for(arrived.get(), 5) - sent)
    await echo.unsubscribe()

    ours: list[float] = []
    for i in range(alerts):
        alert_id = f"lat-{i}-{uuid.uuid4().hex[:6]}"
        waiter = asyncio.get_running_loop().create_future()
        receiver.waiters[alert_id] = waiter
        payload = encode(make_alert(alert_id))
        sent = time.perf_counter()
        await js.publish(subjects.alerts("bench-1"), payload)
        ours.append(await asyncio.wait_for(waiter, 10) - sent)

    # Sustained: `rate` alerts per second, in slices of 10 ms.
    published: dict[str, float] = {}
    total = int(rate * seconds)
    slice_size = max(1, rate // 100)
    start = time.perf_counter()
    for n in range(0, total, slice_size):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        for k in range(n, min(total, n + slice_size)):
            alert_id = f"load-{k}"
            published[alert_id] = time.perf_counter()
            await js.publish(subjects.alerts("bench-1"), encode(make_alert(alert_id)))
    publish_seconds = time.perf_counter() - start
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(receiver.all_of(set(published)), DRAIN_LIMIT)
    received = [a for a in published if a in receiver.arrivals]
    last = max((receiver.arrivals[a] for a in received), default=start)
    load_latency = [receiver.arrivals[a] - published[a] for a in received]
    await nc.close()
    return {
        "raw": raw,
        "ours": ours,
        "sent": total,
        "received": len(received),
        "publish_seconds": publish_seconds,
        "delivered_seconds": last - start,
        "load_latency": load_latency,
    }


async def run(url: str, root: Path, args: argparse.Namespace) -> dict[str, object]:
    receiver = Receiver()
    port = await receiver.start()
    (root / "notify.yaml").write_text(
        f"""\
log_level: warning
max_in_flight: {args.in_flight}
channels:
  hook: {{type: webhook, url: "http://127.0.0.1:{port}/hook"}}
routes:
  - channels: [hook]
"""
    )
    env = {**os.environ, "SF_NATS_URL": url}
    notifier = ServiceProcess(
        "notifier", ["notifier", "--config", str(root / "notify.yaml")], env, root
    ).start()
    try:
        return await measure(url, receiver, args.alerts, args.rate, args.seconds)
    finally:
        notifier.stop()


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--alerts", type=int, default=1000, help="alerts timed one at a time")
    parser.add_argument("--rate", type=int, default=1000, help="alerts per second in the sustained run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the sustained run")
    parser.add_argument("--in-flight", type=int, default=64, help="the notifier's max_in_flight")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        try:
            found = asyncio.run(run(nats.url, root, args))
        finally:
            nats.stop()
    raw, ours = found["raw"], found["ours"]
    assert isinstance(raw, list) and isinstance(ours, list)
    r, o = percentiles(raw), percentiles(ours)
    print(f"alerts timed one at a time: {args.alerts}   (2 cores, loopback)")
    print(f"{'':34}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}")
    print("raw JetStream publish→receive     " + "".join(f"{r[k] * 1000:>8.2f}ms" for k in r))
    print("AlertEvent→webhook arrival        " + "".join(f"{o[k] * 1000:>8.2f}ms" for k in o))
    print(f"ratio (ours / raw, p50):          {o['p50'] / r['p50']:.1f}x   (p99: {o['p99'] / r['p99']:.1f}x)")
    sent, received = found["sent"], found["received"]
    load = found["load_latency"]
    assert isinstance(load, list)
    delivered = found["delivered_seconds"]
    assert isinstance(sent, int) and isinstance(received, int) and isinstance(delivered, float)
    print(
        f"sustained: {sent} alerts at {args.rate}/s published in {found['publish_seconds']:.2f}s; "
        f"{received} arrived ({sent - received} lost), the last {delivered:.2f}s after the first "
        f"publish: {received / delivered:.0f} alerts/s delivered"
    )
    if load:
        p = percentiles(load)
        print("under load, publish→arrival      " + "".join(f"{p[k] * 1000:>8.2f}ms" for k in p))
    return 0 if sent == received else 1


if __name__ == "__main__":
    sys.exit(main())

"""AlertEvent published → webhook receiver arrival, against the raw NATS round trip measured
in the same run; then a sustained rate of alerts to the webhook, checking none is lost.

Starts a private nats-server and a real ``signalfire notifier`` process on loopback with one
``webhook`` channel pointing at a small HTTP receiver inside this script (on its own event
loop, so arrival times are taken the moment a request is read). Latency: N alerts published
one at a time to ``sf.alerts.<host>`` (JetStream, with its ack), each timed until its POST
arrives. Reference: the same JetStream publish echoed back to a core subscription on the
same server — the floor any design on this bus could reach. Sustained: ``--rate`` alerts per
second for ``--seconds``, then wait (bounded) until every one has arrived; its reference is
the same schedule of JetStream publishes echoed to a core subscription (``--ref-seconds``),
which shows the load generator and the bus keep the rate on this machine. The notifier's
own CPU time per alert in the sustained run (from ``/proc``, Linux) gives the rate one
replica could carry on a core of its own, whatever else the machine is doing.

    uv run python bench/notify_latency.py [--alerts 1000] [--rate 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack import NatsServer, ServiceProcess

from bench.support import percentiles, serve_http
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
        await serve_http(reader, writer, self._request)

    def _request(self, method: bytes, path: bytes, body: bytes, arrived: float) -> bytes:
        alert_id = json.loads(body)["alert"]["id"]
        self.arrivals.setdefault(alert_id, arrived)
        self._arrived.set()
        waiter = self.waiters.pop(alert_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(arrived)
        return b""


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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def paced(rate: int, total: int, publish: Callable[[int], Awaitable[None]]) -> float:
    """Call ``publish(k)`` for k < ``total`` at ``rate`` per second, in slices of 10 ms;
    return the seconds it took."""
    slice_size = max(1, rate // 100)
    start = time.perf_counter()
    for n in range(0, total, slice_size):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        for k in range(n, min(total, n + slice_size)):
            await publish(k)
    return time.perf_counter() - start


async def measure(
    url: str, receiver: Receiver, args: argparse.Namespace, notifier_cpu: Callable[[], float | None]
) -> dict[str, object]:
    alerts, rate, seconds = args.alerts, args.rate, args.seconds
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

    # Reference for the sustained run: the same schedule of JetStream publishes, echoed.
    ref_total = int(rate * args.ref_seconds)
    ref_sent: list[float] = []
    ref_arrived: list[float] = []
    ref_done = asyncio.Event()
    if ref_total == 0:
        ref_done.set()

    async def on_ref(msg: object) -> None:
        ref_arrived.append(time.perf_counter())
        if len(ref_arrived) >= ref_total:
            ref_done.set()

    echo = await nc.subscribe("sf.notifications.bench-rate", cb=on_ref)

    async def publish_ref(k: int) -> None:
        ref_sent.append(time.perf_counter())
        await js.publish("sf.notifications.bench-rate", encode(make_alert(f"rate-{k}")))

    ref_start = time.perf_counter()
    await paced(rate, ref_total, publish_ref)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ref_done.wait(), DRAIN_LIMIT)
    await echo.unsubscribe()
    ref_last = max(ref_arrived, default=ref_start)

    # Sustained: `rate` alerts per second, in slices of 10 ms.
    published: dict[str, float] = {}
    total = int(rate * seconds)

    async def publish_alert(k: int) -> None:
        alert_id = f"load-{k}"
        published[alert_id] = time.perf_counter()
        await js.publish(subjects.alerts("bench-1"), encode(make_alert(alert_id)))

    cpu_before = notifier_cpu()
    start = time.perf_counter()
    publish_seconds = await paced(rate, total, publish_alert)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(receiver.all_of(set(published)), DRAIN_LIMIT)
    cpu_after = notifier_cpu()
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
        # arrivals while the load lasted: what a replica that keeps up delivers at that rate
        "during": sum(1 for a in received if receiver.arrivals[a] <= start + publish_seconds),
        "load_latency": load_latency,
        "ref_sent": ref_total,
        "ref_received": len(ref_arrived),
        "ref_seconds": ref_last - ref_start,
        "ref_latency": [b - a for a, b in zip(ref_sent, ref_arrived, strict=False)],
        "cpu": None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
    }


#: ``--inhibit``: the shipped example's rule (none of the timed alerts is a source): every
#: decision then also checks every replica's tracks and batches against their bucket.
INHIBIT = """\
inhibit:
  - {source: {rule: HostDown}, equal: [host]}
"""


async def run(url: str, root: Path, args: argparse.Namespace) -> dict[str, object]:
    receiver = Receiver()
    port = await receiver.start()
    concurrency = "" if args.concurrency is None else f", concurrency: {args.concurrency}"
    (root / "notify.yaml").write_text(
        f"""\
log_level: warning
max_in_flight: {args.in_flight}
channels:
  hook: {{type: webhook, url: "http://127.0.0.1:{port}/hook"{concurrency}}}
routes:
  - channels: [hook]
{INHIBIT if args.inhibit else ""}"""
    )
    env = {**os.environ, "SF_NATS_URL": url}
    notifier = ServiceProcess(
        "notifier", ["notifier", "--config", str(root / "notify.yaml")], env, root
    ).start()
    try:
        assert notifier.proc is not None
        pid = notifier.proc.pid
        return await measure(url, receiver, args, lambda: cpu_seconds(pid))
    finally:
        notifier.stop()


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--alerts", type=int, default=1000, help="alerts timed one at a time")
    parser.add_argument("--rate", type=int, default=1000, help="alerts per second in the sustained run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the sustained run")
    parser.add_argument(
        "--ref-seconds", type=float, default=5.0, help="length of the raw-bus run at the same rate"
    )
    parser.add_argument("--in-flight", type=int, default=64, help="the notifier's max_in_flight")
    parser.add_argument(
        "--inhibit", action="store_true", help="with an inhibit rule (HostDown mutes its host's alerts)"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="the webhook's concurrency")
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
    during, publish_seconds = found["during"], found["publish_seconds"]
    assert isinstance(during, int) and isinstance(publish_seconds, float)
    print(
        f"sustained: {sent} alerts at {args.rate}/s published in {found['publish_seconds']:.2f}s; "
        f"{received} arrived ({sent - received} lost), the last {delivered:.2f}s after the first "
        f"publish: {received / delivered:.0f} alerts/s delivered"
    )
    print(
        f"while publishing: {during} arrived ({during / publish_seconds:.0f}/s); "
        f"backlog at the last publish: {sent - during}, "
        f"the last arrived {max(0.0, delivered - publish_seconds):.2f}s later"
    )
    ref_sent, ref_received, ref_seconds = found["ref_sent"], found["ref_received"], found["ref_seconds"]
    assert isinstance(ref_sent, int) and isinstance(ref_received, int) and isinstance(ref_seconds, float)
    ref_rate = ref_received / ref_seconds if ref_seconds > 0 else 0.0
    print(
        f"reference: {ref_sent} raw JetStream publishes at {args.rate}/s, {ref_received} echoed: "
        f"{ref_rate:.0f}/s"
    )
    rate = received / delivered if delivered > 0 else 0.0
    if ref_rate > 0:
        print(f"ratio (delivered / raw rate):     {rate / ref_rate:.2f}")
    ref_latency = found["ref_latency"]
    assert isinstance(ref_latency, list)
    for label, values in (
        ("under load, publish→arrival      ", load),
        ("raw bus at that rate             ", ref_latency),
    ):
        if values:
            p = percentiles(values)
            print(label + "".join(f"{p[k] * 1000:>8.2f}ms" for k in p))
    cpu = found["cpu"]
    if isinstance(cpu, float) and received:
        per_alert = cpu / received
        print(
            f"notifier CPU in the sustained run: {cpu:.1f}s, {per_alert * 1000:.3f} ms per alert "
            f"→ {1 / per_alert:.0f} alerts/s on a core of its own"
        )
    return 0 if sent == received else 1


if __name__ == "__main__":
    sys.exit(main())

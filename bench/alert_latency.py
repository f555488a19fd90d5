"""Publish → alert latency, against the raw NATS round trip, and against Debian's Prometheus +
Alertmanager at their tightest settings, all measured in the same run.

Starts a private nats-server, a real ``signalfire evaluator`` and a real ``signalfire
notifier`` (one ``webhook`` channel to a receiver inside this script) on loopback, then for N
transitions publishes a MetricBatch that crosses a ``for: 0`` threshold (alternately firing
and resolving) and times until the AlertEvent arrives on ``sf.alerts.<host>`` and until the
notifier's webhook POST arrives. The reference is the same publish echoed straight back by
NATS (a core subscription on the metrics subject): the floor any design on this bus could
reach. The peer (``bench/prometheus_peer.py``): a gauge served to Prometheus (1 s scrape and
evaluation, ``for: 0s``) → Alertmanager (``group_wait: 0s``, ``group_interval: 1s``) →
webhook, timed from the gauge's change to the firing webhook's arrival.

    uv run python bench/alert_latency.py [--transitions 1000] [--peer-trials 30] [--no-peer]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack import NatsServer, ServiceProcess

from bench import prometheus_peer
from bench.support import percentiles, serve_http
from signalfire.bus import NatsConfig, connect, ensure_streams, request_json
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode

RULES = """
rules:
  - name: BenchCPU
    metric: cpu.usage_percent
    condition: "> 90"
    resolve: "< 50"
    severity: high
"""


class Webhooks:
    """A minimal HTTP/1.1 keep-alive receiver for the notifier's webhook: records when each
    (alert id, status) POST was read."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}
        self._arrived = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def arrival(self, key: tuple[str, str]) -> float:
        while key not in self.arrivals:
            self._arrived.clear()
            await self._arrived.wait()
        return self.arrivals[key]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http(reader, writer, self._request)

    def _request(self, method: bytes, path: bytes, body: bytes, arrived: float) -> bytes:
        payload = json.loads(body)
        self.arrivals.setdefault((payload["alert"]["id"], payload["status"]), arrived)
        self._arrived.set()
        return b""


async def measure(
    url: str, transitions: int, hooks: Webhooks | None
) -> tuple[list[float], list[float], list[float]]:
    config = NatsConfig(url=url)
    nc = await connect(config, "bench")
    js = nc.jetstream()
    await ensure_streams(js, config)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    events: asyncio.Queue[tuple[float, AlertEvent]] = asyncio.Queue()

    async def on_message(msg: object) -> None:
        arrived.put_nowait(time.perf_counter())

    async def on_alert(msg: object) -> None:
        received = time.perf_counter()
        events.put_nowait((received, decode(msg.data, AlertEvent)))  # type: ignore[attr-defined]

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

    alerts = await nc.subscribe("sf.alerts.>", cb=on_alert)

    async def transition(host: str, value: float) -> tuple[float, float | None]:
        batch = MetricBatch(
            host=host, time=time.time(), samples=[Sample(name="cpu.usage_percent", value=value)]
        )
        sent = time.perf_counter()
        await js.publish(f"sf.metrics.{host}", encode(batch))
        received, event = await asyncio.wait_for(events.get(), 5)
        if hooks is None:
            return received - sent, None
        hooked = await asyncio.wait_for(hooks.arrival((event.id, event.status)), 10)
        return received - sent, hooked - sent

    if hooks is not None:  # the notifier is up once a first alert goes through end to end
        await transition("bench-warm", 99.0)
        await transition("bench-warm", 10.0)
    ours: list[float] = []
    webhook: list[float] = []
    for i in range(transitions):
        bus, hooked = await transition(f"bench-{i // 2}", 99.0 if i % 2 == 0 else 10.0)
        ours.append(bus)
        if hooked is not None:
            webhook.append(hooked)
    await alerts.unsubscribe()
    await nc.close()
    return raw, ours, webhook


async def run_ours(root: Path, url: str, transitions: int, notifier: bool) -> tuple[list[float], ...]:
    env = {
        **os.environ,
        "SF_NATS_URL": url,
        "SF_RULES": str(root / "rules.yaml"),
        "SF_LOG_LEVEL": "warning",
    }
    processes = [ServiceProcess("evaluator", ["evaluator"], env, root).start()]
    hooks: Webhooks | None = None
    try:
        if notifier:
            hooks = Webhooks()
            port = await hooks.start()
            (root / "notify.yaml").write_text(
                f"""\
log_level: warning
channels:
  hook: {{type: webhook, url: "http://127.0.0.1:{port}/hook"}}
routes:
  - channels: [hook]
"""
            )
            processes.append(
                ServiceProcess(
                    "notifier", ["notifier", "--config", str(root / "notify.yaml")], env, root
                ).start()
            )
        return await measure(url, transitions, hooks)
    finally:
        for process in reversed(processes):
            process.stop()
        if hooks is not None and hooks.server is not None:
            hooks.server.close()
            with contextlib.suppress(Exception):
                await hooks.server.wait_closed()


def row(name: str, values: list[float], unit: float = 1000.0, suffix: str = "ms") -> str:
    p = percentiles(values)
    return f"{name:<40}" + "".join(f"{p[k] * unit:>9.2f}{suffix}" for k in ("p50", "p95", "p99", "mean"))


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transitions", type=int, default=1000)
    parser.add_argument("--peer-trials", type=int, default=30, help="alerts timed through Prometheus")
    parser.add_argument("--no-peer", action="store_true", help="skip Prometheus + Alertmanager")
    parser.add_argument("--no-notifier", action="store_true", help="skip publish → webhook via the notifier")
    args = parser.parse_args()
    peer_versions = ""
    if not args.no_peer:
        prometheus, alertmanager = prometheus_peer.ensure_installed()
        peer_versions = f"{prometheus_peer.version(prometheus)}; {prometheus_peer.version(alertmanager)}"
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        root = Path(tmp)
        (root / "rules.yaml").write_text(RULES)
        nats = NatsServer(root / "nats").start()
        try:
            raw, ours, webhook = asyncio.run(run_ours(root, nats.url, args.transitions, not args.no_notifier))
        finally:
            nats.stop()
        peer_firing: list[float] = []
        if not args.no_peer:
            peer_firing, _ = asyncio.run(prometheus_peer.measure(root / "peer", args.peer_trials))
    print(f"transitions: {args.transitions}   (2 cores, loopback)")
    print(f"{'':40}{'p50':>11}{'p95':>11}{'p99':>11}{'mean':>11}")
    print(row("raw NATS publish→receive (reference)", raw))
    print(row("publish→AlertEvent on the bus", ours))
    if webhook:
        print(row("publish→webhook (evaluator + notifier)", webhook))
    o, r = percentiles(ours), percentiles(raw)
    print(f"ratio AlertEvent / raw bus (p50): {o['p50'] / r['p50']:.1f}x")
    if peer_firing:
        print(f"peer: {peer_versions}")
        print(f"peer trials: {len(peer_firing)}")
        print(row("Prometheus+Alertmanager change→webhook", peer_firing))
        p = percentiles(peer_firing)
        for label, values in (("AlertEvent", ours), ("webhook", webhook)):
            if not values:
                continue
            s = percentiles(values)
            print(
                f"peer / Signalfire {label}: "
                + "  ".join(f"{k} {p[k] / s[k]:,.0f}x" for k in ("p50", "p95", "p99"))
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

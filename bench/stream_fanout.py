"""Live-stream fan-out: 2,000 WebSocket clients on one gateway, 100 hosts publishing every second.

Starts a private nats-server, PostgreSQL + TimescaleDB (devstack; run
``deploy/dev/provision-postgres.sh`` first, ``make test`` does) and a real ``signalfire
gateway`` process. 100 hosts each publish a ``MetricBatch`` of ``--samples`` samples to
JetStream every second, stamped with the publish time; the gateway stores each batch and
streams its samples. ``--clients`` WebSocket clients (the ``websockets`` library, offering
permessage-deflate as browsers do), spread over ``--workers`` load-generator processes, each
subscribe like a Host-page tab: one host (client ``i`` → host ``i % 100``), every metric,
alerts. On receipt each client computes publish → frame latency from the sample's time.

The run, all in one gateway process:

1. reference: raw NATS core publish → subscribe latency of the same payloads at the same rate
   (what the bus alone costs);
2. gateway RSS before and after connecting every client (no traffic yet): RSS per connection;
3. ``--seconds`` of traffic, in periods of ``--period`` seconds alternately without and with
   one deliberately stalled client — a raw socket with a small receive buffer that does the
   WebSocket handshake, subscribes to everything and never reads, so TCP backpressure builds
   on the gateway's side (if the gateway drops it, it connects again). Alternating periods
   compare everyone else's latency with and without it under the same background load.

    uv run python bench/stream_fanout.py [--clients 2000] [--seconds 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

import msgspec

HOSTS = 100


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Load generator (a child process) --------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    """Connect clients ``first``..``first + count - 1``, say so, read ``start end`` from stdin,
    then record each metric frame's latency by the second it arrived in; print JSON."""
    from websockets.asyncio.client import connect as ws_connect

    raise_fd_limit()
    decoder = msgspec.json.Decoder()
    seconds: dict[int, list[float]] = {}
    window = [float("inf"), float("inf")]
    connected = 0
    failed = 0
    dropped = 0
    all_in = asyncio.Event()
    gate = asyncio.Semaphore(25)
    url = f"{args.url}?token={args.token}"
    compression = None if args.compression == "none" else "deflate"

    async def client(i: int) -> None:
        nonlocal connected, failed, dropped
        try:
            async with gate:
                ws = await ws_connect(url, compression=compression, open_timeout=60, max_size=None)
                subscribe = {"hosts": [f"host-{i % HOSTS:03d}"], "metrics": [], "alerts": True}
                await ws.send(json.dumps({"subscribe": subscribe, "last_seq": None, "epoch": None}))
            connected += 1
        except Exception:
            failed += 1
            return
        finally:
            if connected + failed == args.count:
                all_in.set()
        try:
            async for message in ws:
                now = time.time()
                if not window[0] <= now < window[1]:
                    continue
                bucket = seconds.setdefault(int(now - window[0]), [])
                for frame in decoder.decode(message):
                    if frame.get("kind") == "metric":
                        bucket.append(now - frame["time"])
        except Exception:
            dropped += 1

    cpu0 = time.process_time()
    tasks = [asyncio.create_task(client(i)) for i in range(args.first, args.first + args.count)]
    await all_in.wait()
    cpu_connect = time.process_time() - cpu0
    print(json.dumps({"ready": connected, "failed": failed}), flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    window[0], window[1] = (float(x) for x in line.split())
    await asyncio.sleep(max(0.0, window[0] - time.time()))
    cpu_start = time.process_time()
    await asyncio.sleep(max(0.0, window[1] - time.time()))
    cpu_measure = time.process_time() - cpu_start
    for task in tasks:
        task.cancel()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "dropped": dropped,
                "cpu_connect": cpu_connect,
                "cpu_measure": cpu_measure,
                "length": window[1] - window[0],
            }
        ),
        flush=True,
    )


# The stalled client ----------------------------------------------------------------------


def stalled_socket(port: int, token: str) -> socket.socket:
    """A WebSocket that subscribes to everything and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/v1/stream?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("the gateway closed the stalled client's handshake")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.decode(errors="replace"))
    body = json.dumps({"subscribe": {"hosts": [], "metrics": [], "alerts": True}, "last_seq": None}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    length = struct.pack("!BH", 0x80 | 126, len(body)) if len(body) > 125 else bytes([0x80 | len(body)])
    sock.sendall(b"\x81" + length + mask + masked)
    return sock


def socket_closed_by_peer(sock: socket.socket) -> bool:
    """Whether the gateway closed the connection (without reading the pending data)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    # TCP_CLOSE_WAIT (8): the peer sent FIN; TCP_CLOSE (7).
    return state in (7, 8)


# The run ---------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample_batch(host: str, n: int, samples: int) -> Any:
    from signalfire.events import MetricBatch, Sample

    return MetricBatch(
        host=host,
        time=time.time(),
        samples=[Sample(name=f"bench.metric_{k:02d}", value=float((n + k) % 100)) for k in range(samples)],
    )


async def publish_hosts(nats_url: str, samples: int, stop: asyncio.Event, count: list[int]) -> None:
    """100 hosts, one batch each per second, spread evenly over the second."""
    from signalfire.bus import NatsConfig, connect
    from signalfire.events import encode

    config = NatsConfig(url=nats_url)
    nc = await connect(config, "bench-fanout")
    js = nc.jetstream()
    try:
        began = time.monotonic()
        tick = 0
        while not stop.is_set():
            host = tick % HOSTS
            await asyncio.sleep(max(0.0, began + tick / HOSTS - time.monotonic()))
            name = f"host-{host:03d}"
            await js.publish(config.subjects.metrics(name), encode(sample_batch(name, tick, samples)))
            count[0] += 1
            tick += 1
    finally:
        await nc.close()


async def raw_nats_reference(nats_url: str, samples: int, seconds: float) -> list[float]:
    """Core NATS publish → subscribe latency of the same payloads at the same rate."""
    from signalfire.bus import NatsConfig, connect
    from signalfire.events import encode

    config = NatsConfig(url=nats_url)
    pub = await connect(config, "bench-ref-pub")
    sub = await connect(config, "bench-ref-sub")
    latencies: list[float] = []
    decoder = msgspec.json.Decoder()

    async def on_message(msg: Any) -> None:
        now = time.time()
        latencies.append(now - decoder.decode(msg.data)["time"])

    await sub.subscribe("bench.reference.>", cb=on_message)
    await sub.flush()
    began = time.monotonic()
    tick = 0
    while time.monotonic() - began < seconds:
        await asyncio.sleep(max(0.0, began + tick / HOSTS - time.monotonic()))
        name = f"host-{tick % HOSTS:03d}"
        await pub.publish(f"bench.reference.{name}", encode(sample_batch(name, tick, samples)))
        tick += 1
    await pub.flush()
    await asyncio.sleep(0.5)
    await pub.close()
    await sub.close()
    return latencies


async def main(args: argparse.Namespace) -> None:
    from devstack import ServiceProcess, free_port, private_servers, start_gateway

    from signalfire.bus import NatsConfig, connect, ensure_streams

    limit = raise_fd_limit()
    if limit < args.clients + 200:
        raise SystemExit(f"the open-file limit is {limit}: too low for {args.clients} clients")
    with tempfile.TemporaryDirectory() as tmp, private_servers(Path(tmp)) as (nats, postgres):
        gateway: ServiceProcess | None = None
        stop = asyncio.Event()
        publisher: asyncio.Task[None] | None = None
        workers: list[subprocess.Popen[str]] = []
        try:
            db_url = postgres.create_database("signalfire")
            port = free_port()
            gateway = start_gateway(
                nats.url,
                db_url,
                port,
                log_dir=Path(tmp),
                token_file=Path(tmp) / "admin-token",
                # One token opens every connection here; real tabs each have their own.
                extra_env={"SF_LOG_LEVEL": "warning", "SF_RATE_LIMIT": "0"},
            )
            assert gateway.proc is not None
            pid = gateway.proc.pid
            token = (Path(tmp) / "admin-token").read_text().strip()
            config = NatsConfig(url=nats.url)
            nc = await connect(config, "bench-setup")
            await ensure_streams(nc.jetstream(), config)
            await nc.close()

            reference = await raw_nats_reference(nats.url, args.samples, args.reference_seconds)
            payload = len(msgspec.json.encode(sample_batch("host-000", 0, args.samples)))

            # RSS per connection: before and after connecting every client, with no traffic
            # yet (once metrics flow, the resume ring fills too, up to its frame limit).
            await asyncio.sleep(1)
            rss_idle = rss_kb(pid)
            per = -(-args.clients // args.workers)
            ws_url = f"ws://127.0.0.1:{port}/api/v1/stream"
            connect_began = time.monotonic()
            for w in range(args.workers):
                first = w * per
                worker_args = ["--worker", "--url", ws_url, "--token", token, "--first", str(first)]
                worker_args += [
                    "--count",
                    str(min(per, args.clients - first)),
                    "--compression",
                    args.compression,
                ]
                workers.append(
                    await asyncio.to_thread(
                        subprocess.Popen,
                        [sys.executable, __file__, *worker_args],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            ready = 0
            for proc in workers:
                assert proc.stdout is not None
                info = json.loads(await asyncio.to_thread(proc.stdout.readline))
                ready += info["ready"]
                if info["failed"]:
                    print(f"a load generator could not connect {info['failed']} clients")
            connect_seconds = time.monotonic() - connect_began
            await asyncio.sleep(2)
            rss_connected = rss_kb(pid)
            print(f"{ready} clients connected in {connect_seconds:.1f} s", flush=True)

            count = [0]
            publisher = asyncio.create_task(publish_hosts(nats.url, args.samples, stop, count))
            start = time.time() + args.warmup
            end = start + args.seconds
            for proc in workers:
                assert proc.stdin is not None
                proc.stdin.write(f"{start} {end}\n")
                proc.stdin.flush()
            await asyncio.sleep(max(0.0, start - time.time()))
            cpu_gateway0 = cpu_seconds(pid)

            # Periods of --period seconds, alternately without and with the stalled client.
            stalls = 0
            sock: socket.socket | None = None
            while time.time() < end:
                stalled_now = int((time.time() - start) // args.period) % 2 == 1
                if stalled_now and (sock is None or socket_closed_by_peer(sock)):
                    if sock is not None:
                        sock.close()
                    sock = await asyncio.to_thread(stalled_socket, port, token)
                    stalls += 1
                elif not stalled_now and sock is not None:
                    sock.close()
                    sock = None
                await asyncio.sleep(0.1)
            if sock is not None:
                sock.close()
            cpu_gateway = cpu_seconds(pid) - cpu_gateway0
            rss_end = rss_kb(pid)

            results = []
            for proc in workers:
                assert proc.stdout is not None
                results.append(json.loads(await asyncio.to_thread(proc.stdout.readline)))
                await asyncio.to_thread(proc.wait, 30)
            workers = []
            stop.set()
            await publisher
            publisher = None

            without: list[float] = []
            with_stall: list[float] = []
            for r in results:
                for second, values in r["seconds"].items():
                    stalled = int(second) // int(args.period) % 2 == 1
                    (with_stall if stalled else without).extend(values)
            both = without + with_stall
            periods: dict[int, list[float]] = {}
            for r in results:
                for second, values in r["seconds"].items():
                    periods.setdefault(int(second) // int(args.period), []).extend(values)
            ms = 1000.0

            def p(values: list[float], q: float) -> float:
                return percentile(values, q) * ms

            print()
            print(
                f"{args.clients} clients ({args.workers} load generators, compression {args.compression}),"
                f" {HOSTS} hosts x {args.samples} samples/s ({payload} B per batch), {args.seconds:.0f} s"
            )
            print(
                f"raw NATS core publish -> subscribe (reference, {len(reference)} msgs):"
                f" p50 {p(reference, 0.5):.2f} ms, p99 {p(reference, 0.99):.2f} ms"
            )
            for name, values in (
                ("all", both),
                ("without stalled client", without),
                ("with stalled client", with_stall),
            ):
                print(
                    f"publish -> frame, {name:22s} ({len(values):,} frames):"
                    f" p50 {p(values, 0.5):.1f} ms, p99 {p(values, 0.99):.1f} ms"
                )
            print(
                f"ratio to the raw bus: p50 {p(both, 0.5) / p(reference, 0.5):.0f}x,"
                f" p99 {p(both, 0.99) / p(reference, 0.99):.0f}x"
            )
            print(
                f"stalled client ({args.period:.0f} s periods, alternating): others' p99"
                f" {p(without, 0.99):.1f} -> {p(with_stall, 0.99):.1f} ms"
                f" ({p(with_stall, 0.99) - p(without, 0.99):+.1f} ms); it connected {stalls} times"
            )
            print(
                "p99 per period (ms; odd periods with the stalled client): "
                + " ".join(f"{p(periods[k], 0.99):.0f}" for k in sorted(periods))
            )
            expected = ready * args.samples * args.seconds
            print(
                f"frames received {len(both):,} of about {expected:,.0f};"
                f" clients dropped: {sum(r['dropped'] for r in results)}"
            )
            print(
                f"gateway RSS: {rss_idle / 1024:.1f} MB idle,"
                f" {rss_connected / 1024:.1f} MB with {ready} clients"
                f" -> {(rss_connected - rss_idle) / max(ready, 1):.1f} KB per connection;"
                f" {rss_end / 1024:.1f} MB at the end (ring of recent frames included)"
            )
            print(f"gateway CPU while measuring: {cpu_gateway / args.seconds * 100:.0f} % of a core")
            for k, r in enumerate(results):
                print(
                    f"load generator {k}: {r['cpu_connect']:.1f} s CPU to connect,"
                    f" {r['cpu_measure'] / r['length'] * 100:.0f} % of a core while measuring"
                )
        finally:
            stop.set()
            for proc in workers:
                proc.kill()
            if publisher is not None:
                publisher.cancel()
            if gateway is not None:
                gateway.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measurement")
    parser.add_argument(
        "--period", type=float, default=10.0, help="the stalled client is there every other period"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="traffic before measuring")
    parser.add_argument("--samples", type=int, default=20, help="samples per host batch")
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--reference-seconds", type=float, default=10.0)
    parser.add_argument("--compression", choices=["deflate", "none"], default="deflate")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    asyncio.run(worker(parsed) if parsed.worker else main(parsed))

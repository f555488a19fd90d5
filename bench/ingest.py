"""Gateway ingest throughput: the raw asyncpg COPY ceiling vs NATS → gateway → committed rows.

Starts a private nats-server and PostgreSQL + TimescaleDB (devstack; run
``deploy/dev/provision-postgres.sh`` first, ``make test`` does). In one run:

1. the ceiling: ``copy_records_to_table`` of pre-built ``(time, series_id, value)`` rows into
   the gateway's own ``samples`` hypertable, best of 1 and 2 connections, for
   ``--ceiling-seconds`` over 1,000 series a connection or, with ``--ceiling-rows auto``, the
   rows the full path will store over its 50,000 series: the per-row cost of the samples
   index grows with the chunk (4 µs at 1 M rows, 10 at 9 M, docs/benchmarks.md), so a short
   ceiling is a cheaper reference than the table the full path fills;
2. the full path: ``MetricBatch`` JSON (50 hosts, 1,000 samples each) published to JetStream
   at ``--rate`` samples/s, or as fast as the gateway keeps up, into a real ``signalfire
   gateway`` process; committed samples are read from its ``ingest_committed_samples_total`` counter,
   the lag between the newest published batch and the newest committed sample is sampled four
   times a second, and at the end every published sample must be in ``samples`` and counted
   in the 1-hour rollups.

It ends with the efficiency figure: CPU seconds per million samples of the whole path (gateway +
PostgreSQL + nats-server, the publisher left out) against the raw COPY's (PostgreSQL + the COPY
client, the cheaper of the two runs), and their ratio. PostgreSQL is reached over its Unix
socket, by the ceiling and the gateway alike (``--tcp``: loopback TCP for both). With
``--workers N`` the gateway ingests in N worker processes (``signalfire gateway --workers N``);
their CPU is the gateway's (they are its children) and its ``/metrics`` sums theirs.
``bench/scale.py`` runs this with 1 and 2 workers in one run (:func:`measure`).

    uv run python bench/ingest.py [--seconds 20] [--rate 100000] [--samples-per-batch 1000] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "dev"))

import asyncpg
from devstack import ServiceProcess, free_port, private_servers, start_gateway
from prometheus_client.parser import text_string_to_metric_families

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.events import MetricBatch, Sample, encode
from signalfire.gateway.api.query import HOURS
from signalfire.gateway.migrate import migrate

#: Hosts of the full path; each sends ``--samples-per-batch`` series.
HOSTS = 50


async def copy_ceiling(url: str, seconds: float, connections: int, rows: int = 0, series: int = 0) -> float:
    """Rows per second COPYed into ``samples`` by ``connections`` connections, for ``seconds``
    or, with ``rows``, until that many rows are in (shared by the connections, each over
    ``series`` series of its own: the full path's table, size and shape; else 1,000 each)."""
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    rows_per_copy = 50_000
    stop = time.monotonic() + seconds
    done = 0

    def more() -> bool:
        return done < rows if rows else time.monotonic() < stop

    async def worker(index: int, conn: asyncpg.Connection) -> None:
        nonlocal done
        base = time.time() - 86400 * (index + 1)
        n = 0  # this connection's rows so far; a row's time advances every 1,000 rows
        first_id = 1_000_000 * (index + 1)
        while more():
            records = [
                (
                    datetime.fromtimestamp(base + (n + i) // 1000 * 1e-3, UTC),
                    first_id + ((n + i) % series if series else i % 1000),
                    float(i),
                )
                for i in range(rows_per_copy)
            ]
            n += rows_per_copy
            await conn.copy_records_to_table(
                "sample_rows", records=records, columns=["time", "series_id", "value"]
            )
            done += rows_per_copy

    began = time.monotonic()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    elapsed = time.monotonic() - began
    for conn in conns:
        await conn.execute("TRUNCATE sample_rows")
        await conn.close()
    return done / elapsed


def unix_socket_url(url: str, socket_dir: Path) -> str:
    """``url`` (``postgresql://user@127.0.0.1:port/db``) over the server's Unix socket in
    ``socket_dir`` instead of loopback TCP."""
    rest = url.split("://", 1)[1]
    user, rest = rest.split("@", 1)
    address, database = rest.split("/", 1)
    port = address.rsplit(":", 1)[1]
    return f"postgresql://{user}@/{database}?host={socket_dir}&port={port}"


def batch_templates(per_batch: int, variants: int = 16) -> list[bytes]:
    """``MetricBatch`` JSON with ``%HOST%`` and ``%TIME%`` left to fill in: encoding 1,000
    samples per publish in Python would cost the gateway's cores more than the splice."""
    rng = random.Random(7)
    names = [(f"m{i % 100}.value", {"i": str(i // 100)}) for i in range(per_batch)]
    templates = []
    for _ in range(variants):
        batch = MetricBatch(
            host="%HOST%",
            time=1.0,
            samples=[
                Sample(name=n, value=round(rng.uniform(0, 100), 2), labels=labels) for n, labels in names
            ],
        )
        templates.append(encode(batch).replace(b'"time":1.0', b'"time":%TIME%'))
    return templates


_TICK = os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process alone (not the servers it started)."""
    times = os.times()
    return times.user + times.system


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        return f.read().rsplit(")", 1)[1].split()


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of process ``root`` and every process below it, ended ones
    included."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except OSError:
            continue
        # utime, stime, and cutime, cstime: the children that ended (a closed connection's
        # backend) are counted in their parent's
        stats[int(entry)] = (int(fields[1]), sum(map(int, fields[11:15])) / _TICK)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, []))
    return total


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` alone, its children not counted."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """CPU seconds used by named process trees between :meth:`start` and :meth:`stop`."""

    def __init__(self, roots: dict[str, int], alone: dict[str, int] | None = None) -> None:
        """``roots``: process trees by name; this process's pid counts this process alone.
        ``alone``: processes measured without their children (a part of a tree, reported in
        :attr:`parts`, not in :attr:`used`)."""
        self.roots = roots
        self.alone = alone or {}
        self.began: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.parts: dict[str, float] = {}

    def start(self) -> None:
        self.began = {name: self._cpu(pid) for name, pid in self.roots.items()}
        self.began.update({name: process_cpu(pid) for name, pid in self.alone.items()})

    @staticmethod
    def _cpu(pid: int) -> float:
        return own_cpu() if pid == os.getpid() else tree_cpu(pid)

    def stop(self) -> dict[str, float]:
        self.used = {name: self._cpu(pid) - self.began[name] for name, pid in self.roots.items()}
        self.parts = {name: process_cpu(pid) - self.began[name] for name, pid in self.alone.items()}
        return self.used


def cpu_line(used: dict[str, float], rows: float) -> str:
    """CPU seconds per million rows, per process tree."""
    parts = [f"{name} {seconds / rows * 1e6:.2f}" for name, seconds in used.items()]
    total = sum(used.values()) / rows * 1e6
    return f"CPU seconds per million rows: {', '.join(parts)}; total {total:.2f}"


#: The gateway's rounds (transactions) and the messages they kept, of every consumer (the run
#: publishes metrics only; with ingest workers each reads the metrics stream through a
#: consumer of its own, ``gateway-metrics-<k>of<N>``).
ROUNDS = "signalfire_gateway_ingest_rounds_total"
FETCHED = "signalfire_gateway_ingest_fetched_messages_total"

#: The gateway counts a sample once it is committed (its rollups are merged once its minute
#: ended, ``rollup_merge: minute``; the run waits for them at the end).
COMMITTED = "signalfire_gateway_ingest_committed_samples_total"


def gateway_counter(metrics_url: str, name: str, default: float = 0.0) -> float:
    """A counter of the gateway's ``/metrics`` (``name`` may end in ``{label="value",…}``),
    summed over the labels it does not name (ingest workers add ``worker``); ``default``
    when it does not answer in time (a gateway busy at full load may answer late)."""
    base, _, rest = name.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            page = response.read().decode()
    except OSError:
        return default
    total = 0.0
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == base and all(sample.labels.get(k) == v for k, v in wanted.items()):
                total += sample.value
    return total


async def full_path(
    nats_url: str,
    db_url: str,
    metrics_url: str,
    *,
    seconds: float,
    per_batch: int,
    rate: float,
    warmed: Callable[[], object] = lambda: None,
    finished: Callable[[], object] = lambda: None,
) -> dict[str, float]:
    """Publish for ``seconds`` at ``rate`` samples/s (0: as fast as the gateway keeps up).

    First one batch per host, stored before the measurement starts (``warmed`` is called
    then): it creates the 50,000 series, a cost paid once per series, not per sample.
    ``finished`` is called once everything published is stored and rolled up, before the
    run's own check of the stored rows (a scan of every sample, not the path's work)."""
    config = NatsConfig(url=nats_url)
    nc = await connect(config, "bench")
    js = nc.jetstream()
    await ensure_streams(js, config)
    conn = await asyncpg.connect(db_url)
    published = 0
    committed = 0
    newest_published = 0.0
    lags: list[float] = []
    hosts = [f"web-{h}" for h in range(HOSTS)]
    templates = batch_templates(per_batch)
    for host in hosts:
        data = templates[0].replace(b"%HOST%", host.encode(), 1)
        data = data.replace(b"%TIME%", repr(time.time()).encode(), 1)
        await js.publish(config.subjects.metrics(host), data)
    published = warm = len(hosts) * per_batch
    warm_deadline = time.monotonic() + 60
    while await asyncio.to_thread(gateway_counter, metrics_url, COMMITTED) < warm:
        if time.monotonic() > warm_deadline:
            raise RuntimeError("the gateway did not store the warm-up batches within 60 s")
        await asyncio.sleep(0.25)
    warmed()
    began = time.monotonic()
    stop = began + seconds

    async def publisher() -> None:
        nonlocal published, newest_published
        n = 0
        while time.monotonic() < stop:
            if rate > 0:  # on schedule: sleep until this batch is due
                due = began + (published - warm) / rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
            else:  # stay a few seconds ahead of the gateway (it counts at each rollup merge)
                while published - committed > max(8 * average_rate, 200 * per_batch):
                    if time.monotonic() >= stop:
                        return
                    await asyncio.sleep(0.01)
            host = hosts[n % len(hosts)]
            when = time.time()
            data = templates[n % len(templates)].replace(b"%HOST%", host.encode(), 1)
            data = data.replace(b"%TIME%", repr(when).encode(), 1)
            await js.publish(config.subjects.metrics(host), data)
            published += per_batch
            newest_published = when
            n += 1

    average_rate = 0.0

    async def watcher() -> None:
        nonlocal committed, average_rate
        while time.monotonic() < stop:
            await asyncio.sleep(0.25)
            # the tables, not the view: the newest time needs no batch's samples unfolded
            newest = await conn.fetchval(
                "SELECT extract(epoch FROM greatest("
                "(SELECT max(time) FROM sample_batches WHERE time > now() - interval '1 minute'),"
                " (SELECT max(time) FROM sample_rows WHERE time > now() - interval '1 minute')))::float8"
            )
            committed = int(await asyncio.to_thread(gateway_counter, metrics_url, COMMITTED, committed))
            now = time.monotonic()
            average_rate = (committed - warm) / (now - began)
            if newest is not None and newest_published:
                lags.append(max(0.0, newest_published - float(newest)))

    await asyncio.gather(publisher(), watcher())
    # drain: everything published must be committed (and rolled up) within a minute
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        committed = int(await asyncio.to_thread(gateway_counter, metrics_url, COMMITTED, committed))
        if committed >= published:
            break
        await asyncio.sleep(0.25)
    drained = time.monotonic() - stop
    rolled = 0
    while time.monotonic() < deadline + 120:  # a minute's rollups merge once it ended
        # as a query with 1-hour steps reads them: folded hours' rows, open hours' minutes
        rolled = int(await conn.fetchval(f"SELECT coalesce(sum(count), 0) FROM {HOURS} AS r"))
        if rolled >= published:
            break
        # seldom: this sum reads every 1-hour row, on the PostgreSQL the path is measured on
        await asyncio.sleep(2)
    finished()
    stored = int(await conn.fetchval("SELECT count(*) FROM samples"))
    await nc.close()
    await conn.close()
    lags.sort()

    def pick(q: float) -> float:
        return lags[min(len(lags) - 1, int(q * len(lags)))] if lags else float("nan")

    return {
        "published": published,
        "stored": stored,
        "rolled_up": rolled,
        # the publish time plus the drain after it (which includes up to one rollup merge
        # interval, since samples count once merged): what the gateway kept up with
        "rate": (min(published, stored) - warm) / (seconds + drained),
        "warm": warm,
        "drain": drained,
        "p50": pick(0.5),
        "p99": pick(0.99),
        "max": lags[-1] if lags else float("nan"),
    }


async def measure(args: argparse.Namespace, workers: int) -> dict[str, float]:
    """One run (the ceilings, then the full path with a gateway of ``workers`` ingest workers)
    on servers of its own; prints its lines and returns the figures: ``rate`` (samples/s),
    ``efficiency`` (full path CPU per sample / the ceiling's), ``path_cpu``, ``reference``
    (CPU s per million samples), ``p99`` and ``lost``."""
    with tempfile.TemporaryDirectory() as tmp, private_servers(Path(tmp), durable=True) as (nats, postgres):
        gateway: ServiceProcess | None = None
        if args.postgres_set:
            postgres.restart_with(args.postgres_set)
        try:
            ceiling_url = postgres.create_database("ceiling")
            conn = await asyncpg.connect(ceiling_url)
            await migrate(conn)
            await conn.close()
            assert postgres.proc is not None and nats.proc is not None
            if not args.tcp:
                ceiling_url = unix_socket_url(ceiling_url, postgres.data_dir)
            ceilings: dict[int, float] = {}
            ceiling_cpu: dict[int, float] = {}
            rows, series = ceiling_rows(args)
            for n in (1, 2):
                meter = CpuMeter({"postgres": postgres.proc.pid, "bench": os.getpid()})
                meter.start()
                began = time.monotonic()
                ceilings[n] = await copy_ceiling(
                    ceiling_url, args.ceiling_seconds or args.seconds, n, rows=rows, series=series
                )
                seconds = time.monotonic() - began
                used = meter.stop()
                ceiling_cpu[n] = sum(used.values()) / (ceilings[n] * seconds) * 1e6
                shape = f", {ceilings[n] * seconds:,.0f} rows over {series:,} series" if rows else ""
                print(f"raw COPY ceiling, {n} connection(s): {ceilings[n]:,.0f} rows/s{shape}")
                print("  " + cpu_line(used, ceilings[n] * seconds))
            ceiling = max(ceilings.values())
            db_url = postgres.create_database("signalfire")
            if not args.tcp:
                db_url = unix_socket_url(db_url, postgres.data_dir)
            port = free_port()
            gateway = start_gateway(
                nats.url,
                db_url,
                port,
                log_dir=Path(tmp),
                token_file=Path(tmp) / "admin-token",
                extra_env={
                    "SF_LOG_LEVEL": "warning",
                    "SF_INGEST_WORKERS": str(workers),
                    **dict(kv.split("=", 1) for kv in args.gateway_env),
                },
            )
            assert gateway.proc is not None
            meter = CpuMeter(
                {
                    # the gateway's tree: its ingest workers are its children
                    "gateway": gateway.proc.pid,
                    "postgres": postgres.proc.pid,
                    "nats": nats.proc.pid,
                    "publisher": os.getpid(),
                },
                # with ingest workers, what the API process itself spends of the gateway's
                alone={"API process": gateway.proc.pid} if workers else None,
            )
            result = await full_path(
                nats.url,
                db_url,
                f"http://127.0.0.1:{port}/metrics",
                seconds=args.seconds,
                per_batch=args.samples_per_batch,
                rate=args.rate,
                warmed=meter.start,
                finished=meter.stop,
            )
            used = meter.used
            measured = result["stored"] - result["warm"]
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            rounds = gateway_counter(metrics_url, ROUNDS)
            fetched = gateway_counter(metrics_url, FETCHED)
            rate = result["rate"]
            shape = f"{workers} ingest worker(s)" if workers else "ingest in the gateway process"
            print(
                f"full path NATS → gateway ({shape}) → committed: {rate:,.0f} samples/s"
                f" for {args.seconds:.0f} s"
                f" (offered {args.rate or float('nan'):,.0f}/s), publish→commit"
                f" p50 {result['p50']:.2f} s p99 {result['p99']:.2f} s max {result['max']:.2f} s,"
                f" {result['drain']:.1f} s to drain after the last publish"
            )
            print(
                f"published {result['published']:,.0f}, stored {result['stored']:,.0f},"
                f" rolled up (1 h) {result['rolled_up']:,.0f},"
                f" lost {result['published'] - result['stored']:,.0f}"
            )
            print("  " + cpu_line(used, measured))
            for part, seconds in meter.parts.items():
                print(f"    of the gateway's, its {part} alone {seconds / max(1, measured) * 1e6:.2f}")
            if rounds:
                print(f"  {rounds:,.0f} ingest rounds, {fetched / rounds:.1f} messages a round")
            print(f"ratio full path / ceiling: {rate / ceiling:.2f}")
            # The efficiency target: the whole path's CPU per sample (publisher excluded) against
            # the cheaper of the two COPY ceilings' (PostgreSQL + the COPY client).
            path_cpu = (used["gateway"] + used["postgres"] + used["nats"]) / max(1, measured) * 1e6
            reference = min(ceiling_cpu.values())
            print(
                f"efficiency: full path {path_cpu:.2f} CPU s per million samples (gateway + PostgreSQL"
                f" + nats-server), raw COPY {reference:.2f} (PostgreSQL + COPY client):"
                f" {path_cpu / reference:.2f}x"
            )
            return {
                "rate": rate,
                "efficiency": path_cpu / reference,
                "path_cpu": path_cpu,
                "reference": reference,
                "p99": result["p99"],
                "lost": result["published"] - result["stored"],
            }
        finally:
            if gateway is not None:
                gateway.stop()


def ceiling_rows(args: argparse.Namespace) -> tuple[int, int]:
    """``(rows, series)`` of the ceiling runs: ``(0, 0)`` for runs of ``--ceiling-seconds``;
    with ``--ceiling-rows auto``, the rows the full path will store and its series."""
    if args.ceiling_rows != "auto":
        return 0, 0
    if not args.rate:
        raise SystemExit("--ceiling-rows auto needs --rate (the full path's rows are rate x seconds)")
    series = HOSTS * args.samples_per_batch
    return series + int(args.rate * args.seconds), series


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options (``bench/scale.py`` takes them too, prefixed ``--gateway-``
    where they would clash)."""
    parser.add_argument("--samples-per-batch", type=int, default=1000)
    parser.add_argument(
        "--ceiling-seconds", type=float, default=0.0, help="length of the ceiling runs (default: --seconds)"
    )
    parser.add_argument(
        "--ceiling-rows",
        choices=["time", "auto"],
        default="time",
        help="time: each ceiling run lasts --ceiling-seconds; auto: each COPYs the rows the full"
        " path will store, over as many series, so both write a table of the same size (the"
        " per-row cost of the samples index grows with the chunk)",
    )
    parser.add_argument(
        "--tcp",
        action="store_true",
        help="reach PostgreSQL over loopback TCP (default: its Unix socket, for the ceiling too)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="SF_KEY=VALUE",
        help="a setting for the gateway process (e.g. SF_ROLLUP_FLUSH=10s); repeatable",
    )
    parser.add_argument(
        "--postgres-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the run (e.g. shared_buffers=256MB); repeatable",
    )


async def main(args: argparse.Namespace) -> None:
    await measure(args, args.workers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="samples/s to publish (default: as fast as it keeps up)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="ingest worker processes of the gateway (default 0: none)"
    )
    add_arguments(parser)
    asyncio.run(main(parser.parse_args()))

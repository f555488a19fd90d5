"""What the fault scenarios share: services as processes, the streams and the database, and
the one-line summary each scenario prints (``/metrics`` pages: :mod:`tests.support.metrics`).

Every scenario runs the real ``signalfire`` processes (``devstack.ServiceProcess``) against
real servers on loopback, kills or stops only the processes it started (by PID), and counts
what went in against what came out. The bus requires credentials, as under ``make up``: each
service connects as its own identity (:func:`service_env`), the test's clients as ``admin``,
and a ``permissions violation`` in a service's log fails the scenario
(:func:`permission_violations`, checked by tests/faults/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from devstack import NatsCluster, NatsServer, PostgresServer, ServiceProcess, bus_credentials, start_gateway

from signalfire.bus import NatsConfig, request_json
from signalfire.busauth import CredentialDirectory
from signalfire.evaluator.leases import Entry, read_bucket
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode
from tests.support.streams import stream_messages

#: Every summary line starts with this, so ``pytest -s tests/faults | grep '^FAULT'`` lists them.
SUMMARY_PREFIX = "FAULT"


def report(scenario: str, **numbers: object) -> str:
    """Print (and return) the scenario's accounting as one line: ``FAULT name: key=value ...``.

    Printed before the assertions, so a failing run shows its numbers too (``pytest -s`` or
    ``-rA`` shows them)."""
    line = f"{SUMMARY_PREFIX} {scenario}: " + " ".join(f"{k}={v}" for k, v in numbers.items())
    print(line, flush=True)
    return line


def credentials_of(nats: NatsConfig) -> CredentialDirectory:
    """The credential directory ``nats`` connects with: the one holding its password file
    (the admin's), where every identity's password file is."""
    if nats.password_file is None:
        raise AssertionError(f"{nats.url}: the scenario connects without the bus's credentials")
    return CredentialDirectory(Path(nats.password_file).parent)


def as_identity(nats: NatsConfig, identity: str, bus: CredentialDirectory | None = None) -> NatsConfig:
    """``nats`` connecting as ``identity`` (``admin``, ``gateway``, ``evaluator``,
    ``notifier``, an ``agent-<host>``), its password file from ``bus``: by default the
    directory of the credentials ``nats`` already connects with (:func:`credentials_of`)."""
    password_file = (bus or credentials_of(nats)).password_file(identity)
    return msgspec.structs.replace(nats, user=identity, password_file=str(password_file))


def notifier_nats_json(nats: NatsConfig) -> str:
    """The ``nats:`` block of a notify.yaml (JSON, which YAML reads) connecting as the
    ``notifier`` identity, as `make up` runs it."""
    notifier = as_identity(nats, "notifier")
    return json.dumps(
        {
            "url": nats.url,
            "prefix": nats.prefix,
            "metrics_max_bytes": nats.metrics_max_bytes,
            "user": notifier.user,
            "password_file": notifier.password_file,
        }
    )


def service_env(
    nats: NatsConfig, database_url: str | None = None, *, identity: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment of a service process on ``nats`` (its prefix and stream limits too).

    On a bus that requires credentials (``nats`` has a password file: every fault scenario's)
    the service connects as ``identity``, which must be named: its own (``gateway``,
    ``evaluator``, ``notifier``, an agent's ``agent-<host>``), as ``make up`` runs it, its
    password file from the directory of ``nats``'s credentials (:func:`credentials_of`).
    Without ``identity``, a bus that requires none (the integration tests' session server)."""
    env = {
        **os.environ,
        "SF_NATS_URL": nats.url,
        "SF_NATS_PREFIX": nats.prefix,
        "SF_NATS_METRICS_MAX_BYTES": str(nats.metrics_max_bytes),
        "SF_LOG_LEVEL": "info",
    }
    if identity is not None:
        own = as_identity(nats, identity)
        assert own.password_file is not None
        env.update(SF_NATS_USER=identity, SF_NATS_PASSWORD_FILE=own.password_file)
    elif nats.password_file is not None:
        raise AssertionError("a service on the bus's credentials connects as its own identity: name it")
    if database_url is not None:
        env["SF_DATABASE_URL"] = database_url
    env.update(extra)
    return env


async def gateway_process(env: Mapping[str, str], port: int, log_dir: Path) -> ServiceProcess:
    """``signalfire gateway`` on 127.0.0.1:``port``, ready on return, with a :func:`service_env`
    environment for the ``gateway`` identity (its NATS and database URLs come from there); its
    log and its admin token file in ``log_dir``. Waits for readiness in a thread, so the test's
    event loop goes on."""
    assert env.get("SF_NATS_USER") == "gateway", "the gateway connects as its own identity"
    return await asyncio.to_thread(
        start_gateway,
        env["SF_NATS_URL"],
        env["SF_DATABASE_URL"],
        port,
        log_dir=log_dir,
        token_file=log_dir / "admin-token",
        extra_env=env,
    )


def kill9(process: ServiceProcess | NatsServer | PostgresServer) -> None:
    """SIGKILL a process this test started (by its PID) and reap it."""
    assert process.proc is not None
    process.proc.kill()
    process.proc.wait(10)


def log_tail(*services: ServiceProcess, chars: int = 2500) -> str:
    """The end of each service's log, for a failure message."""
    parts = []
    for service in services:
        text = service.log_path.read_text(errors="replace") if service.log_path.exists() else ""
        parts.append(f"--- {service.name} ({service.log_path})\n{text[-chars:]}")
    return "\n".join(parts)


#: What nats-py reports (and a service logs, ``NATS error: ...``) when the bus refuses a publish
#: or a subscription to the identity it connected as.
REFUSED = "permissions violation"


def permission_violations(services: Sequence[ServiceProcess], limit: int = 10) -> str:
    """What the bus refused the ``services`` (each one's log read once): for each service
    whose log holds a ``permissions violation``, its name, the identity it connected as and
    its refused lines (the first ``limit`` distinct ones); empty when the bus refused none."""
    parts = []
    seen: set[Path] = set()
    for service in services:
        if service.log_path in seen or not service.log_path.exists():
            continue
        seen.add(service.log_path)
        text = service.log_path.read_text(errors="replace")
        refused = [line for line in text.splitlines() if REFUSED in line.lower()]
        if not refused:
            continue
        identity = service.env.get("SF_NATS_USER", "the identity of its config file")
        distinct = list(dict.fromkeys(refused))
        parts.append(
            f"the bus refused {service.name} (connected as {identity}) {len(refused)} time(s), "
            f"in {service.log_path}:"
        )
        parts.extend(f"    {line[:400]}" for line in distinct[:limit])
        if len(distinct) > limit:
            parts.append(f"    ... and {len(distinct) - limit} more")
    return "\n".join(parts)


def warnings_of(*services: ServiceProcess, limit: int = 8, skip: tuple[str, ...] = ()) -> str:
    """The last ``limit`` distinct warning and error lines of each service's log (timestamps
    kept, lines containing one of ``skip`` left out), for a failure message that says what
    the services went through."""
    parts = []
    for service in services:
        text = service.log_path.read_text(errors="replace") if service.log_path.exists() else ""
        lines = [
            line
            for line in text.splitlines()
            if ("level=warning" in line or "level=error" in line) and not any(s in line for s in skip)
        ]
        parts.append(f"--- {service.name}: {len(lines)} warnings")
        parts.extend(line[:300] for line in dict.fromkeys(lines[-limit:]))
    return "\n".join(parts)


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float,
    *watch: ServiceProcess,
) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` (with the services' logs) after
    ``timeout`` seconds, or at once when one of the ``watch`` processes has exited."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        dead = [s for s in watch if not s.alive()]
        if dead:
            raise AssertionError(f"{dead[0].name} exited while waiting for {what}\n{log_tail(*dead)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{log_tail(*watch)}")
        await asyncio.sleep(0.1)


async def alert_events(js: Any, nats: NatsConfig) -> list[AlertEvent]:
    """Every alert event on the alerts stream (what the evaluator published, de-duplicated)."""
    prefix = nats.subjects.all_alerts[:-1]
    return [
        decode(data, AlertEvent) for _, data in await stream_messages(js, nats.subjects.alerts_stream, prefix)
    ]


async def events_after_resolve(js: Any, nats: NatsConfig, what: str, timeout: float) -> list[AlertEvent]:
    """Every alert event, read once one of them resolved (``what``: what is awaited, for the
    failure) and a second later: room for a stray repeat to show up."""

    async def resolved() -> bool:
        return any(e.status == "resolved" for e in await alert_events(js, nats))

    await eventually(resolved, what, timeout)
    await asyncio.sleep(1)
    return await alert_events(js, nats)


async def wait_evaluator(nc: Any, nats: NatsConfig, evaluator: ServiceProcess, timeout: float = 30) -> None:
    """Until the evaluator answers its control subject (it has loaded its state and subscribed)."""

    async def answers() -> bool:
        try:
            await request_json(nc, nats.subjects.control("evaluator", "rules"), timeout=0.5)
        except (LookupError, TimeoutError):
            return False
        return True

    await eventually(answers, "the evaluator to start", timeout, evaluator)


async def rule_status(nc: Any, nats: NatsConfig, rule: str) -> list[str]:
    """The statuses (``pending``, ``firing``) of ``rule``'s alerts, as the evaluator reports them."""
    described = await request_json(nc, nats.subjects.control("evaluator", "rules"), timeout=2)
    for r in described["rules"]:
        if r["name"] == rule:
            return [str(a["status"]) for a in r["alerts"]]
    raise LookupError(rule)


async def fetch_count(database_url: str, sql: str, *args: object) -> int:
    """``sql``'s single number (0 while the table does not exist yet)."""
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql, *args) or 0)
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def consumer_numbers(js: Any, stream: str, durable: str) -> dict[str, int]:
    """A durable consumer's delivery accounting: redelivered, pending acks, unfetched."""
    info = await js.consumer_info(stream, durable)
    return {
        "redelivered": int(info.num_redelivered or 0),
        "ack_pending": int(info.num_ack_pending or 0),
        "pending": int(info.num_pending or 0),
        "delivered": int(info.delivered.stream_seq or 0),
    }


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def publish_every_quarter_second(js: Any, nats: NatsConfig, level: Mapping[str, float]) -> None:
    """Every host of ``level`` reporting ``fault.temp`` at its current level four times a second,
    like agents with a 250 ms interval; the test changes a level to make a rule fire or clear."""
    while True:
        for host in list(level):
            batch = MetricBatch(
                host=host, time=time.time(), samples=[Sample(name="fault.temp", value=level[host])]
            )
            with contextlib.suppress(Exception):  # the next one follows in 250 ms
                await js.publish(nats.subjects.metrics(host), encode(batch), timeout=2)
        await asyncio.sleep(0.25)


async def start_evaluator_replica(
    nc: Any,
    nats: NatsConfig,
    rules: Path,
    replica: str,
    into: dict[str, ServiceProcess],
    *,
    name: str,
    partitions: int,
    failover_after: float,
) -> None:
    """A partitioned ``signalfire evaluator`` replica (``replica_id`` ``replica``), kept in
    ``into`` (to be stopped or killed by the test) and answering before this returns."""
    env = service_env(
        nats,
        identity="evaluator",
        SF_RULES=str(rules),
        SF_TICK_INTERVAL="0.1s",
        SF_PARTITIONS=str(partitions),
        SF_FAILOVER_AFTER=f"{failover_after:g}s",
        SF_REPLICA_ID=replica,
    )
    process = ServiceProcess(name, ["evaluator"], env, rules.parent).start()
    into[replica] = process
    await wait_evaluator(nc, nats, process)


async def partition_holders(leases: Any) -> dict[str, str]:
    """Partition → the replica holding its lease, from the ``evaluator_leases`` bucket."""
    entries: dict[str, Entry] = await read_bucket(leases)
    prefix = "partition."
    return {k.removeprefix(prefix): e.lease.replica for k, e in entries.items() if k.startswith(prefix)}


async def partitions_shared(leases: Any, partitions: int, replicas: tuple[str, str] = ("a", "b")) -> bool:
    """Whether two replicas hold every partition (and ``fleet``) between them, balanced."""
    held = list((await partition_holders(leases)).values())
    fewer = (partitions + 1) // 2  # 8 and 9 of 16 partitions and fleet
    counts = sorted(held.count(r) for r in replicas)
    return len(held) == partitions + 1 and counts == [fewer, partitions + 1 - fewer]


def clients_on(node: NatsServer) -> set[str]:
    """The names of the client connections ``node`` serves (its monitoring ``/connz``)."""
    try:
        page = node.monitoring("/connz?limit=1000")
    except (OSError, ValueError):
        return set()
    return {str(c.get("name", "")) for c in page.get("connections") or []}


async def secured_cluster(tmp_path: Path, prefix: str, **settings: Any) -> tuple[NatsCluster, NatsConfig]:
    """A three-node cluster requiring the bus's credentials for ``prefix`` (as ``make up
    NATS_NODES=3`` runs it), started; and how the test's clients reach it, as ``admin``
    (``settings``: more :class:`NatsConfig` fields). Services connect as their own identity
    through :func:`service_env`."""
    bus = bus_credentials(tmp_path / "bus", prefix=prefix)
    cluster = NatsCluster(tmp_path / "cluster", 3, config=bus.path / "nats.conf")
    await asyncio.to_thread(cluster.start)
    return cluster, as_identity(cluster.nats_config(prefix=prefix, **settings), "admin", bus)


#: Rounds of leader step-downs :func:`move_leaders_off` asks for before it gives up.
STEPDOWN_TRIES = 10


async def move_leaders_off(
    nc: Any, node: str, streams: Sequence[str], consumers: Sequence[tuple[str, str]] = ()
) -> int:
    """Have the other nodes lead ``streams`` and ``consumers`` (stream, durable), with
    JetStream's ``LEADER.STEPDOWN`` requests, so that a kill of ``node`` takes away only what
    the scenario means it to; those without a leader are asked again. Returns the step-downs
    asked for; fails when ``node`` still leads one after :data:`STEPDOWN_TRIES` rounds."""

    async def led() -> list[str]:
        js = nc.jetstream()
        requests = []
        for stream in streams:
            placed = (await js.stream_info(stream)).cluster
            if placed is None or placed.leader in (None, node):
                requests.append(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}")
        for stream, durable in consumers:
            placed = (await js.consumer_info(stream, durable)).cluster
            if placed is None or placed.leader in (None, node):
                requests.append(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{durable}")
        return requests

    stepdowns = 0
    for _ in range(STEPDOWN_TRIES):
        requests = await led()
        if not requests:
            return stepdowns
        for subject in requests:
            with contextlib.suppress(Exception):
                await nc.request(subject, b"", timeout=5)
                stepdowns += 1
        await asyncio.sleep(1.0)
    still = await led()
    assert not still, f"{node} still leads after {STEPDOWN_TRIES} rounds of step-downs: {still}"
    return stepdowns

"""kill -9 of the JetStream leader node of a three-node cluster under the whole load: agents
publishing, the gateway storing, the evaluator judging and the notifier delivering to a
webhook, all of them connected to the node that dies.

The victim is the cluster's meta leader, and before the kill it is made the leader of every
Signalfire stream: ``SF_METRICS`` (samples; what the gateway and the evaluator read),
``SF_ALERTS`` (alert events and delivery results; what the notifier reads and the gateway
stores) and the KV buckets (the evaluator's alert states and outbox, the notifier's delivery
ledger). ``SF_ALERTS`` is the one that matters most here: a lost or doubled alert event or
ledger write is a lost or doubled notification, which the publishers' and the evaluator's
``Nats-Msg-Id`` and the notifier's ledger must prevent.

Counted: every sample acknowledged is stored once in PostgreSQL; every alert transition in
the alerts stream reached the webhook exactly once (alert id + transition) and nothing else
did, and its ``sent`` delivery result is stored once (what the dashboard lists); each of the
hosts made hot fired once and resolved once, also those whose transitions
fell into the election; the three services stayed up and reconnected, and judged and stored
samples published after the kill; the killed node, started again, is a current replica of
every stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats.errors
import pytest
from devstack import NatsCluster, ServiceProcess, free_port

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.collector.outbox import Outbox, Outgoing
from signalfire.events import AlertEvent, DeliveryResult, MetricBatch, Sample, decode, encode
from tests.faults.support import (
    alert_events,
    clients_on,
    eventually,
    fetch_count,
    gateway_process,
    kill9,
    log_tail,
    report,
    secured_cluster,
    service_env,
    wait_evaluator,
    warnings_of,
    write,
)
from tests.support.metrics import scrape
from tests.support.streams import stream_messages, stream_records
from tests.support.webhook import WebhookReceiver

#: Hosts made hot one after another around the kill (each fires once and resolves once).
HOT = [f"lead-hot-{c}" for c in "abcdefg"]
#: Hosts that never cross the threshold (no alert may name them).
COOL = [f"lead-cool-{i}" for i in range(4)]
HOSTS = HOT + COOL
INTERVAL = 0.25  # each host publishes a batch every 250 ms
METRICS = ("fault.temp", "fault.load", "fault.mem", "fault.disk")  # samples per batch
HOT_VALUE, COOL_VALUE = 60.0, 30.0
PUBLISH_TIMEOUT = 2.0  # the agent's: a publish unanswered this long is retried with the same id
DOWN_FOR = 8.0  # seconds the killed node stays away
#: Starts of a service until its random pick of the three nodes is the victim: the odds of
#: missing it 20 times are (2/3)^20, 1 in 3,300.
START_TRIES = 20
RECEIVER_DELAY = 0.3  # how long the webhook receiver takes to answer: notices are in flight
RULES = """\
rules:
  - name: LeaderLoadHot
    metric: fault.temp
    condition: "> 50"
    resolve: "< 40"
    for: 1s
    severity: high
"""
RESOLVED_ALERTS = "SELECT count(*) FROM alerts WHERE status = 'resolved'"
#: Warnings every run logs around the kill (a failure message leaves them out).
NOISE = ("NATS error", "disconnected from NATS", "reconnected to NATS", "partition lost: not renewed")
#: The ``SF_*`` timings shortened for the test, with why:
SHORT = {
    "SF_TICK_INTERVAL": "0.1s",  # `for` expiry seen promptly (1 s by default)
    # A message whose acknowledgement was lost in the election comes back within the test
    # (30/60 s by default), so a redelivery that would double something shows here.
    "SF_ACK_WAIT": "3s",
    "SF_ROLLUP_FLUSH": "0.5s",
    "SF_ROLLUP_MERGE": "flush",
}


class Publisher:
    """Agents' batches: every host's at its level every :data:`INTERVAL`, queued in one
    :class:`Outbox` with their own ``Nats-Msg-Id``, published oldest first, one that fails
    (timeout, no leader, connection gone) put back and published again with the same id."""

    def __init__(self, js: Any, nats: NatsConfig) -> None:
        self.js, self.nats = js, nats
        self.level = dict.fromkeys(HOSTS, COOL_VALUE)
        self.outbox = Outbox(capacity=100_000)
        self.produced = 0
        self.acknowledged: set[str] = set()
        self.acked_samples = 0
        self.failures: list[float] = []
        self.acked_at: list[float] = []

    async def produce(self, stop: asyncio.Event) -> None:
        tick = 0
        while not stop.is_set():
            for host in HOSTS:
                batch = MetricBatch(
                    host=host,
                    time=time.time(),
                    samples=[Sample(name=m, value=self.level[host]) for m in METRICS],
                )
                self.outbox.put(Outgoing(self.nats.subjects.metrics(host), encode(batch), f"{host}-{tick}"))
                self.produced += 1
            tick += 1
            await asyncio.sleep(INTERVAL)

    async def send(self, produced_all: asyncio.Event) -> None:
        while not (produced_all.is_set() and len(self.outbox) == 0):
            taken = self.outbox.take(1)
            if not taken:
                await asyncio.sleep(0.02)
                continue
            item = taken[0]
            try:
                await self.js.publish(
                    item.subject, item.data, headers={"Nats-Msg-Id": item.msg_id}, timeout=PUBLISH_TIMEOUT
                )
            except Exception:
                self.failures.append(time.monotonic())
                self.outbox.put_back(taken)
                await asyncio.sleep(0.2)
                continue
            self.outbox.done(item)
            assert item.msg_id not in self.acknowledged, f"{item.msg_id} acknowledged twice"
            self.acknowledged.add(item.msg_id)
            self.acked_samples += len(METRICS)
            self.acked_at.append(time.monotonic())


async def _move_leader(nc: Any, stream: str, to: str, timeout: float = 20) -> None:
    """Make ``to`` the leader of ``stream`` (a leader step-down naming its successor)."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader == to:
                return
            request = json.dumps({"placement": {"preferred": to}}).encode()
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5)
        except Exception:  # a step-down under way: its info times out meanwhile
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"{to} never became the leader of {stream}")


def _connected(cluster: NatsCluster, name: str) -> bool:
    """Whether a client connection named ``name`` is on any node of ``cluster``."""
    return any(name in clients_on(node) for node in cluster.nodes)


async def _current_everywhere(js: Any, streams: list[str], node: str) -> bool:
    """Whether every one of ``streams`` has a leader and three members, ``node`` among them,
    the followers current."""
    for stream in streams:
        try:
            cluster = (await js.stream_info(stream)).cluster
        except (TimeoutError, nats.errors.Error):  # a leader being elected: its info times out meanwhile
            return False
        if cluster is None or cluster.leader is None:
            return False
        current = {p.name for p in cluster.replicas or [] if p.current}
        if len({cluster.leader, *current}) != 3 or node not in {cluster.leader, *current}:
            return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_killing_the_leader_node_under_load_loses_and_doubles_no_sample_and_no_notification(
    database_url: str, tmp_path: Path
) -> None:
    # with the bus's credentials, as `make up` runs it: each service as its own identity, the
    # agents' publisher (one outbox for every host) and the test's other clients as the admin
    cluster, nats = await secured_cluster(tmp_path, "lload", metrics_max_bytes=16 << 20)
    receiver = WebhookReceiver(delay=RECEIVER_DELAY)
    notify = write(
        tmp_path / "notify.yaml",
        f"channels:\n  hook: {{type: webhook, url: '{receiver.url('hook')}', timeout: 5s}}\n"
        "routes:\n  - channels: [hook]\n",
    )

    def env(identity: str) -> dict[str, str]:
        return service_env(nats, database_url, identity=identity, **cluster.env(), **SHORT)

    services: dict[str, ServiceProcess] = {}
    clients: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        admin = await connect(nats, "fault-admin")
        clients.append(admin)
        js = admin.jetstream()
        await ensure_streams(js, nats)
        victim = cluster.node(cluster.nodes[0].monitoring("/jsz")["meta_cluster"]["leader"])
        gateway_port, evaluator_port, notifier_port = free_port(), free_port(), free_port()

        async def start_gateway() -> ServiceProcess:
            return await gateway_process(env("gateway"), gateway_port, tmp_path)

        async def start_evaluator() -> ServiceProcess:
            evaluator_env = {
                **env("evaluator"),
                "SF_RULES": str(write(tmp_path / "rules.yaml", RULES)),
                "SF_METRICS_LISTEN": f"127.0.0.1:{evaluator_port}",
            }
            process = ServiceProcess("evaluator", ["evaluator"], evaluator_env, tmp_path).start()
            await wait_evaluator(admin, nats, process)
            return process

        async def start_notifier() -> ServiceProcess:
            notifier_env = {**env("notifier"), "SF_METRICS_LISTEN": f"127.0.0.1:{notifier_port}"}
            args = ["notifier", "--config", str(notify)]
            process = ServiceProcess("notifier", args, notifier_env, tmp_path).start()
            url = f"http://127.0.0.1:{notifier_port}/metrics"
            await eventually(lambda: bool(scrape(url)), "the notifier", 30, process)
            return process

        # Each service connects to a node picked at random from the three it is given, as in
        # production; one not on the victim is started again until it is, so the kill takes
        # every service's connection away (what "services reconnect" is about).
        starts: dict[str, Callable[[], Awaitable[ServiceProcess]]] = {
            "signalfire-gateway": start_gateway,
            "signalfire-evaluator": start_evaluator,
            "signalfire-notifier": start_notifier,
        }
        service_starts = 0
        for connection, start in starts.items():
            for _ in range(START_TRIES):
                process = await start()
                service_starts += 1
                # ready is not yet connected for every service (the notifier serves /metrics first)
                await eventually(
                    partial(_connected, cluster, connection), f"{connection} connected", 30, process
                )
                if connection in clients_on(victim):
                    services[connection.removeprefix("signalfire-")] = process
                    break
                process.stop()
            else:
                raise AssertionError(f"{connection} never connected to {victim.name} in {START_TRIES} starts")

        streams = [
            s.config.name
            for s in await js.streams_info()
            if s.config.name is not None and "lload" in s.config.name.lower()
        ]
        assert {nats.subjects.metrics_stream, nats.subjects.alerts_stream} <= set(streams), streams
        for stream in streams:
            await _move_leader(admin, stream, victim.name)
        await eventually(lambda: _current_everywhere(js, streams, victim.name), "every replica current", 20)

        publisher_nc = await connect(nats, "fault-agents")
        clients.append(publisher_nc)
        publisher = Publisher(publisher_nc.jetstream(), nats)
        stop, produced_all = asyncio.Event(), asyncio.Event()
        tasks += [
            asyncio.create_task(publisher.produce(stop)),
            asyncio.create_task(publisher.send(produced_all)),
        ]
        watched = list(services.values())

        async def events() -> list[AlertEvent]:
            try:
                return await alert_events(js, nats)
            except Exception:  # the alerts stream's leader being elected
                return []

        async def has(host: str, status: str) -> bool:
            return any(e.host == host and e.status == status for e in await events())

        def notified(host: str, transition: str) -> bool:
            return any(
                p.body["alert"]["host"] == host and p.transition == transition for p in receiver.posted()
            )

        async def fired(host: str) -> None:
            await eventually(lambda: has(host, "firing"), f"{host} to fire", 40, *watched)

        a, b, c, d, e, f, g = HOT
        # Before the kill: four alerts firing, each notified.
        for host in (a, b, c, d):
            publisher.level[host] = HOT_VALUE
        for host in (a, b, c, d):
            await fired(host)
            await eventually(partial(notified, host, "firing"), f"{host} notified", 20, *watched)
        # The kill lands as three of them resolve at once and e goes pending: the first resolved
        # event is in the stream, the others are being decided and published, and their
        # notices (the receiver answers each in RECEIVER_DELAY) are being sent.
        for host in (a, b, c):
            publisher.level[host] = COOL_VALUE
        publisher.level[e] = HOT_VALUE

        async def a_resolve() -> bool:
            return any(ev.status == "resolved" for ev in await events())

        await eventually(a_resolve, "the first resolve before the kill", 20, *watched)
        [d_alert] = [ev for ev in await events() if ev.host == d and ev.status == "firing"]
        token = (tmp_path / "admin-token").read_text().strip()
        api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        clients.append(api)

        async def d_stored() -> bool:  # the API acts on the alerts the gateway stored
            return (await api.get(f"/api/v1/alerts/{d_alert.id}")).status_code == 200

        await eventually(d_stored, f"{d}'s alert stored", 20, *watched)
        posted_at_kill, events_at_kill = len(receiver.posted()), len(await events())
        acked_at_kill = len(publisher.acknowledged)
        kill9(victim)
        killed_at = time.monotonic()

        # During the election and while the node is away: d resolves (and a person resolves it
        # in the dashboard at once, through the gateway whose node just died), e fires, f goes hot.
        publisher.level[d] = COOL_VALUE  # cool first: resolved by hand, it must not fire again

        async def resolve_by_hand() -> tuple[int, float]:
            answer = await api.post(f"/api/v1/alerts/{d_alert.id}/resolve")
            return answer.status_code, time.monotonic() - killed_at

        by_hand = asyncio.create_task(resolve_by_hand())
        await eventually(
            lambda: len(publisher.acknowledged) > acked_at_kill, "a publish after the kill", 30, *watched
        )
        publisher.level[f] = HOT_VALUE
        await fired(e)
        await fired(f)
        alerting_after = time.monotonic() - killed_at
        resolve_status, resolve_answered_after = await by_hand
        await asyncio.sleep(max(0.0, DOWN_FOR - (time.monotonic() - killed_at)))
        await asyncio.to_thread(victim.start)
        restarted_at = time.monotonic()

        # After it returns: everything resolves, and g fires and resolves.
        for host in (e, f):
            publisher.level[host] = COOL_VALUE
        publisher.level[g] = HOT_VALUE
        await fired(g)
        publisher.level[g] = COOL_VALUE
        for host in HOT:
            await eventually(partial(has, host, "resolved"), f"{host} to resolve", 40, *watched)
        stop.set()
        await tasks[0]
        produced_all.set()
        await eventually(tasks[1].done, "the outbox to drain", 60, *watched)
        await tasks[1]  # raises if the sender failed

        await eventually(
            lambda: _current_everywhere(js, streams, victim.name), "the restarted node current again", 60
        )
        caught_up_after = time.monotonic() - restarted_at

        async def all_stored() -> bool:
            return await _stored(database_url) >= publisher.acked_samples

        def all_notified() -> bool:
            return len(receiver.posted()) >= 2 * len(HOT)

        async def alerts_stored() -> bool:  # the gateway's alerts consumer may lag after the kill
            resolved = await fetch_count(database_url, RESOLVED_ALERTS)
            return resolved >= len(HOT) and len(await _sent_results(database_url)) >= len(receiver.posted())

        try:
            await eventually(all_stored, "every acknowledged sample stored", 60, *watched)
            await eventually(all_notified, "every transition notified", 30, *watched)
            await eventually(alerts_stored, "every alert and delivery result stored", 30, *watched)
        except AssertionError as exc:
            print(exc)
        await asyncio.sleep(4)  # past ack_wait: a redelivery that doubles something shows by now
        stream_events = await alert_events(js, nats)
        stored_at = {
            (ev.id, str(ev.status)): msg.time.timestamp()
            for msg in await stream_records(js, nats.subjects.alerts_stream, nats.subjects.all_alerts[:-1])
            for ev in [decode(msg.data or b"", AlertEvent)]
        }
        posted = receiver.posted("hook")
        wall_minus_monotonic = time.time() - time.monotonic()
        stored = await _stored(database_url)
        distinct = await fetch_count(
            database_url,
            "SELECT count(*) FROM (SELECT DISTINCT s.series_id, s.time FROM samples s "
            "JOIN series ON series.id = s.series_id WHERE series.host = ANY($1)) d",
            HOSTS,
        )
        stored_alerts = await fetch_count(database_url, RESOLVED_ALERTS)
        after_kill_stored = await fetch_count(
            database_url,
            "SELECT count(*) FROM samples s JOIN series ON series.id = s.series_id "
            "WHERE series.host = ANY($1) AND s.time > to_timestamp($2)",
            HOSTS,
            time.time() - (time.monotonic() - killed_at),
        )
        survivor = next(node for node in cluster.nodes if node is not victim)
        new_meta = survivor.monitoring("/jsz")["meta_cluster"]["leader"]
        # publishing stalled until the first acknowledgement after the last failed attempt
        last_failure = max((t for t in publisher.failures if t >= killed_at), default=killed_at)
        resumed_after = min(t for t in publisher.acked_at if t >= last_failure) - killed_at
        results = await _sent_results(database_url)
        results_prefix = nats.subjects.all_notifications[:-1]
        in_stream = [
            decode(data, DeliveryResult)
            for _, data in await stream_messages(js, nats.subjects.alerts_stream, results_prefix)
        ]
        results_in_stream = Counter((r.alert_id, r.transition) for r in in_stream if r.status == "sent")
        alive = [name for name, s in services.items() if s.alive()]
        reconnected = [name for name, s in services.items() if "reconnected to NATS" in _log(s)]
        # hot batches of the seconds before the kill, held in the outbox through the election,
        # that reached the evaluator after d's resolve by hand: no new alert from them
        held_back = scrape(f"http://127.0.0.1:{evaluator_port}/metrics").get(
            ("signalfire_evaluator_before_resolve_total", frozenset())
        )
    finally:
        for task in tasks:
            task.cancel()
        for service in reversed(list(services.values())):
            service.stop()
        for client in clients:
            await (client.aclose() if isinstance(client, httpx.AsyncClient) else client.close())
        receiver.close()
        await asyncio.to_thread(cluster.stop)

    transitions: Counter[tuple[str, str]] = Counter((ev.id, str(ev.status)) for ev in stream_events)
    notices = Counter((p.alert_id, p.transition) for p in posted)
    keys = Counter(p.idempotency_key for p in posted)
    recorded = Counter(results)
    by_host = Counter((ev.host, ev.status) for ev in stream_events)
    # From an alert event decided after the kill (its time, the evaluator's clock, this
    # machine's) to its notice at the webhook: what the elections cost a page.
    killed_wall = killed_at + wall_minus_monotonic
    decided = {(ev.id, str(ev.status)): ev.time for ev in stream_events if ev.time >= killed_wall}
    notice_delays = [
        p.at + wall_minus_monotonic - decided[(p.alert_id, p.transition)]
        for p in posted
        if (p.alert_id, p.transition) in decided
    ]
    # Of that, the notifier's share: from the event's arrival in the stream to its notice.
    notifier_delays = [
        p.at + wall_minus_monotonic - stored_at[(p.alert_id, p.transition)]
        for p in posted
        if (p.alert_id, p.transition) in decided
    ]
    report(
        "nats-leader-kill-9-under-load",
        hosts=len(HOSTS),
        batches=publisher.produced,
        acknowledged=len(publisher.acknowledged),
        published_samples=publisher.acked_samples,
        stored=stored,
        distinct=distinct,
        stored_after_kill=after_kill_stored,
        alert_events=len(stream_events),
        alerts_stored_resolved=stored_alerts,
        notifications=len(posted),
        duplicate_notifications=sum(n - 1 for n in notices.values() if n > 1),
        lost_notifications=sum((transitions - notices).values()),
        unexpected_notifications=sum((notices - transitions).values()),
        results_in_stream=sum(results_in_stream.values()),
        results_stored=len(results),
        in_flight_at_kill=f"events:{events_at_kill},notified:{posted_at_kill}",
        resolve_by_hand=f"{resolve_status}@{resolve_answered_after:.1f}s",
        held_back_after_resolve="-" if held_back is None else int(held_back),
        failed_publishes=len(publisher.failures),
        resumed_after_s=f"{resumed_after:.1f}",
        alerting_after_s=f"{alerting_after:.1f}",
        notified_after_event_s=(
            f"{min(notice_delays):.2f}-{max(notice_delays):.2f}" if notice_delays else "-"
        ),
        notified_after_stored_s=(
            f"{min(notifier_delays):.2f}-{max(notifier_delays):.2f}" if notifier_delays else "-"
        ),
        caught_up_after_s=f"{caught_up_after:.1f}",
        # partitions the evaluator let lapse while the leases' bucket elected a leader (each
        # taken again with its history: alerting waits for it)
        evaluator_partitions_lost=services["evaluator"]
        .log_path.read_text(errors="replace")
        .count("partition lost:"),
        killed=victim.name,
        meta_leader_after=new_meta,
        service_starts=service_starts,
        alive=",".join(alive),
        reconnected=",".join(reconnected),
    )
    ticks = publisher.produced // len(HOSTS)
    assert publisher.acknowledged == {f"{h}-{t}" for h in HOSTS for t in range(ticks)}
    assert stored == distinct == publisher.acked_samples, "samples lost or stored twice"
    assert after_kill_stored > 0
    story = warnings_of(*services.values(), skip=NOISE)
    assert all(by_host[(h, s)] == 1 for h in HOT for s in ("firing", "resolved")), f"{by_host}\n{story}"
    assert len(stream_events) == 2 * len(HOT), (
        f"an alert for a host that never ran hot, or a transition twice\n{story}"
    )
    assert notices == transitions, f"notifications {notices} against alert events {transitions}\n{story}"
    assert all(n == 1 for n in keys.values()), "a notification sent twice with the same idempotency key"
    # each delivery result (what the dashboard's alert page lists) stored once
    assert recorded == transitions, f"stored delivery results {recorded} against alert events {transitions}"
    assert stored_alerts == len(HOT)
    assert alive == ["gateway", "evaluator", "notifier"], log_tail(*services.values())
    # The person's resolve, made as the gateway's node died: taken, not refused (503).
    assert resolve_status in (200, 202), resolve_status
    assert reconnected == ["gateway", "evaluator", "notifier"]


async def _sent_results(database_url: str) -> list[tuple[str, str]]:
    """(alert id, transition) of every ``sent`` delivery result the gateway stored for the webhook."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT alert_id, transition FROM notifications WHERE channel = 'hook' AND status = 'sent'"
        )
    finally:
        await conn.close()
    return [(str(r["alert_id"]), str(r["transition"])) for r in rows]


async def _stored(database_url: str) -> int:
    return await fetch_count(
        database_url,
        "SELECT count(*) FROM samples s JOIN series ON series.id = s.series_id WHERE series.host = ANY($1)",
        HOSTS,
    )


def _log(service: ServiceProcess) -> str:
    return service.log_path.read_text(errors="replace") if service.log_path.exists() else ""

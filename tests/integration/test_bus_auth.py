"""The authorized bus: a nats-server with the config ``signalfire.buspolicy`` generates.

Each service, connected as its own identity, does its whole job; what the policy forbids the
server refuses (the state afterwards shows it: the stream is still there, nothing was
stored, no one received the forged action). And a TLS server refuses a client that does not
trust its certificate authority.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trustme
from devstack import NatsServer, bus_credentials, free_port
from nats.errors import NoServersError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.busauth import CredentialDirectory, reload_server
from signalfire.buspolicy import GATEWAY_DURABLES, NOTIFIER_DURABLES, permissions, user_name
from signalfire.collector.agent import RECONNECT_PAUSE, Agent
from signalfire.collector.config import AgentConfig
from signalfire.config import ConfigError, Duration
from signalfire.evaluator.replay import Read, read_actions, read_history
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService
from signalfire.events import (
    AlertAction,
    AlertEvent,
    DeliveryResult,
    MetricBatch,
    Sample,
    Silence,
    decode,
    encode,
)
from signalfire.gateway.committed import CommittedFrame
from signalfire.matchers import Matcher
from signalfire.notifier import service as notifier_service
from signalfire.notifier.channels.log import LogChannelConfig
from signalfire.notifier.config import NotifyConfig, Route
from signalfire.notifier.ledger import SentMark, ledger_key
from signalfire.notifier.mirror import FRESH_FOR
from signalfire.notifier.service import NotifierService
from signalfire.notifier.tracking import alert_key
from signalfire.notifier.watch import EvaluationWatch, checks_counter, evaluation_alert
from signalfire.notifier.watch import publisher as watch_publisher
from signalfire.partitions import Lease
from signalfire.subjects import SELF_HOST, Subjects
from signalfire.telemetry import Registry
from tests.integration.gateway_support import eventually, gateway_config, running_gateway
from tests.integration.test_agent_outage import assert_every_tick_once_in_order
from tests.integration.test_agent_publish import stored_batches
from tests.support.alerts import firing_alert
from tests.support.cli import signalfire_cli
from tests.support.metrics import value
from tests.support.redelivery import die_holding_it
from tests.support.subscriptions import collect

WEB1 = "web-1.example"
WEB2 = "web-2.example"
SHIPPED_ACCOUNTS = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "accounts.conf"
#: How long a refused JetStream API request waits: the server drops it, nobody answers.
REFUSED_WAIT = 1.0


@dataclass
class Bus:
    server: NatsServer
    creds: CredentialDirectory
    subjects: Subjects

    def config(self, identity: str, **overrides: Any) -> NatsConfig:
        base = NatsConfig(
            url=self.server.url,
            prefix=self.subjects.prefix,
            user=identity,
            password_file=str(self.creds.password_file(identity)),
            metrics_max_bytes=16 << 20,
            connect_timeout=Duration(2),
        )
        return msgspec.structs.replace(base, **overrides)


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    root = tmp_path_factory.mktemp("busauth")
    prefix = f"a{secrets.token_hex(3)}"
    creds = bus_credentials(root / "bus", prefix, WEB1)  # as `make up` makes them
    creds.enroll(WEB2, creds.password_file(user_name("agent", WEB2)))
    server = NatsServer(root / "nats", config=root / "bus" / "nats.conf").start()
    try:
        yield Bus(server, creds, Subjects(prefix))
    finally:
        server.stop()


@pytest.fixture
async def admin(bus: Bus) -> AsyncIterator[Any]:
    nc = await connect(bus.config("admin"), "test-admin", max_reconnect_attempts=1)
    await ensure_streams(nc.jetstream(), bus.config("admin"))
    try:
        yield nc
    finally:
        await nc.close()


async def client(bus: Bus, identity: str) -> Any:
    return await connect(bus.config(identity), f"test-{identity}", max_reconnect_attempts=1)


def batch(host: str, cpu: float) -> bytes:
    return encode(
        MetricBatch(host=host, time=time.time(), samples=[Sample(name="cpu.usage_percent", value=cpu)])
    )


# The policy itself ---------------------------------------------------------------------------


def test_the_policy_names_the_durable_consumers_the_services_create() -> None:
    from signalfire.gateway import ingest
    from signalfire.notifier import service

    assert set(GATEWAY_DURABLES["metrics"]) == {ingest.METRICS_CONSUMER}
    assert set(GATEWAY_DURABLES["alerts"]) == {
        ingest.ALERTS_CONSUMER,
        ingest.ACTIONS_CONSUMER,
        ingest.NOTIFICATIONS_CONSUMER,
    }
    assert set(NOTIFIER_DURABLES) == {service.DURABLE, service.ACTIONS_DURABLE}


def test_no_service_may_delete_or_purge_and_only_the_gateway_publishes_actions() -> None:
    s = Subjects("sf")
    # the one removal a service may make: the gateway's, of a metrics-stream consumer (a read
    # position: its messages stay), for a number of ingest workers no gateway runs any more
    own_consumers = f"$JS.API.CONSUMER.DELETE.{s.metrics_stream}.*"
    for role in ("gateway", "evaluator", "notifier"):
        rights = [r for r in permissions(role, s).publish if not (role == "gateway" and r == own_consumers)]
        assert not [r for r in rights if ".DELETE." in r or ".PURGE." in r or r in (">", "$JS.API.>")], role
    assert own_consumers in permissions("gateway", s).publish
    assert s.actions in permissions("gateway", s).publish
    assert s.actions in permissions("admin", s).publish_deny
    for role in ("evaluator", "notifier"):
        assert not [r for r in permissions(role, s).publish if r.startswith("sf.actions")]
    assert permissions("agent", s, WEB1).publish == (
        "sf.metrics.web-1_example",
        "sf.events.web-1_example",
        "sf.agents.web-1_example",
    )


def test_only_the_gateway_may_publish_or_read_committed_frames() -> None:
    s = Subjects("sf")
    gateway = permissions("gateway", s)
    assert s.all_committed in gateway.publish
    assert s.all_committed in gateway.subscribe
    admin = permissions("admin", s)
    assert s.all_committed in admin.publish_deny
    assert s.all_committed in admin.subscribe_deny
    for role, host in (("evaluator", None), ("notifier", None), ("agent", WEB1)):
        perms = permissions(role, s, host)
        for right in (*perms.publish, *perms.subscribe):
            assert not right.startswith("sf.committed") and right not in (">", "sf.>"), (role, right)


def test_credential_files_are_private_and_the_server_config_holds_no_password(bus: Bus) -> None:
    conf = bus.creds.auth_conf.read_text()
    for identity in ("admin", "gateway", "evaluator", "notifier", user_name("agent", WEB1)):
        file = bus.creds.password_file(identity)
        assert file.stat().st_mode & 0o777 == 0o600
        assert file.read_text().strip() not in conf
        assert f'user: "{identity}"' in conf
    assert bus.creds.auth_conf.stat().st_mode & 0o777 == 0o600


# What each service may do ----------------------------------------------------------------------


RULES = """\
rules:
  - name: BusAuthHighCPU
    metric: cpu.usage_percent
    condition: "> 90"
    resolve: "< 50"
    severity: critical
"""


async def test_every_service_does_its_whole_job_as_its_own_identity(
    bus: Bus, admin: Any, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = bus.subjects
    alerts = await collect(admin, s.all_alerts, AlertEvent)
    deliveries = await collect(admin, s.all_notifications, DeliveryResult)
    actions = await collect(admin, s.actions, AlertAction)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    evaluator = EvaluatorService(
        EvaluatorConfig(nats=bus.config("evaluator"), rules=[str(rules)], tick_interval=Duration(0.05))
    )
    notifier = NotifierService(
        NotifyConfig(
            nats=bus.config("notifier"),
            channels={"ops-log": LogChannelConfig()},
            routes=[Route(channels=["ops-log"])],
            tick=Duration(0.05),
        )
    )
    agent = await client(bus, user_name("agent", WEB1))
    await evaluator.start()
    await notifier.start()
    try:
        async with running_gateway(gateway_config(bus.config("gateway"), database_url, tmp_path)) as gw:
            # The agent publishes its own host's metrics; the evaluator fires, the notifier delivers.
            await agent.jetstream().publish(s.metrics(WEB1), batch(WEB1, 99.0), timeout=5)

            async def fired() -> None:
                assert [a.status for a in alerts] == ["firing"]
                assert [d.status for d in deliveries if d.channel == "ops-log"][-1:] == ["sent"]

            await eventually(fired)
            firing = alerts[0]

            # The gateway stored the alert; an operator named alice resolves it through the API.
            async with gw.client() as api:
                created = await api.post("/api/v1/tokens", json={"name": "alice", "role": "operator"})
                assert created.status_code == 201, created.text
                alice = created.json()["token"]

                async def stored() -> None:
                    answer = await api.get(f"/api/v1/alerts/{firing.id}")
                    assert answer.status_code == 200

                await eventually(stored)
                # the gateway asks the evaluator over its control subject, which answers
                listed = await api.get("/api/v1/rules")
                assert listed.status_code == 200 and "BusAuthHighCPU" in listed.text, listed.text
                # ... and the notifier, which answers as its own identity
                notifiers = (await api.get("/api/v1/notifiers")).json()["notifiers"]
                assert [(n["replica"], n["channels"]) for n in notifiers] == [
                    (notifier.replica, {"ops-log": "log"})
                ]
                # `signalfire notify status` with the notifier's own credentials asks it too
                own = bus.config("notifier")
                assert own.password_file is not None
                code, out, err = await signalfire_cli(
                    "notify",
                    "status",
                    "--json",
                    env={
                        "SF_NATS_URL": own.url,
                        "SF_NATS_PREFIX": own.prefix,
                        "SF_NATS_USER": own.user or "",
                        "SF_NATS_PASSWORD_FILE": own.password_file,
                    },
                )
                assert code == 0, err
                assert [n["replica"] for n in msgspec.json.decode(out)["notifiers"]] == [notifier.replica]
                silence = await api.post(
                    "/api/v1/silences",
                    json={"matchers": [{"name": "host", "value": "nowhere"}], "duration": "1h"},
                )
                assert silence.status_code in (200, 201), silence.text
            async with gw.client(alice) as api:
                resolved = await api.post(f"/api/v1/alerts/{firing.id}/resolve")
                assert resolved.status_code == 200, resolved.text

            async def acted_on() -> None:
                assert [(a.action, a.actor) for a in actions] == [("resolve", "alice")]
                assert [a.status for a in alerts] == ["firing", "resolved"]

            await eventually(acted_on)

            # The action is audited with the authenticated actor.
            async with gw.client() as api:
                entries = (await api.get("/api/v1/audit")).json()["audit"]
            [entry] = [e for e in entries if e["target"] == f"/api/v1/alerts/{firing.id}/resolve"]
            assert entry["actor"].startswith("alice ")
            assert entry["details"]["action"] == "resolve"
            assert entry["details"]["alert_id"] == firing.id
    finally:
        await agent.close()
        await notifier.stop()
        await evaluator.stop()
    # Nothing any service did along the way was refused (the server would have said so).
    refusals = [r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage().lower()]
    assert refusals == []


async def test_the_notifier_records_what_jetstream_gave_up_on_as_its_own_identity(
    bus: Bus, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The advisory subscription and the read by sequence of the crash-safety path, under the
    # policy: two replicas took the event, claimed its message and died (max_deliver 2).
    s = bus.subjects
    js = admin.jetstream()
    with contextlib.suppress(NotFoundError):  # the whole-job test's notifier left its own
        await js.delete_consumer(s.alerts_stream, notifier_service.DURABLE)
    await js.add_consumer(
        s.alerts_stream,
        ConsumerConfig(
            durable_name=notifier_service.DURABLE,
            filter_subject=s.all_alerts,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=1.0,
            max_deliver=2,
            deliver_policy=DeliverPolicy.NEW,
        ),
    )
    now = time.time()
    fired = firing_alert(
        f"given-up-{secrets.token_hex(3)}",
        now=now,
        fingerprint="fp-given-up",
        rule="R",
        severity="critical",
        host=WEB1,
    )
    await js.publish(s.alerts(WEB1), encode(fired))
    await die_holding_it(js, s.alerts_stream, notifier_service.DURABLE, times=2, ack_wait=1.0)
    kv = await js.key_value(s.bucket("notify_state"))
    firing_key = ledger_key(alert_key(fired.id), "firing", "ops")
    left = SentMark(
        alert_id=fired.id, channel="ops", tag="firing", owner="dead", state="sending", time=now - 5
    )
    await kv.create(firing_key, msgspec.json.encode(left))
    notifier = NotifierService(
        NotifyConfig(
            nats=bus.config("notifier"),
            channels={"ops": LogChannelConfig()},
            routes=[Route(channels=["ops"])],
            tick=Duration(0.05),
            ack_wait=Duration(1),
            max_deliver=2,
        )
    )
    await notifier.start()
    try:

        async def recorded() -> None:
            assert (
                value(
                    notifier.registry,
                    "signalfire_notifier_events_given_up_total",
                    consumer=notifier_service.DURABLE,
                )
                == 1
            )

        await eventually(recorded)
    finally:
        await notifier.stop()
        await js.delete_consumer(s.alerts_stream, notifier_service.DURABLE)  # the admin may
    refusals = [r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage().lower()]
    assert refusals == []


async def test_the_notifier_reads_the_silences_itself_when_its_watch_is_behind_as_its_own_identity(
    bus: Bus, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Found walking `make up NATS_NODES=3`: the notifier could watch the silences but not read
    # them, and its whole read after a node's death was refused (and timed out).
    s = bus.subjects
    notifier = NotifierService(
        NotifyConfig(nats=bus.config("notifier"), channels={"ops": LogChannelConfig()}, routes=[])
    )
    await notifier.start()
    try:
        held = notifier._silences
        assert held is not None and held._watcher is not None
        await held._watcher.stop()  # behind from here on, as a watch whose node died
        kv = await admin.jetstream().key_value(s.bucket("silences"))
        window = Silence(
            id=f"maint-{secrets.token_hex(3)}",
            matchers=[Matcher(name="host", value=WEB1)],
            starts_at=time.time(),
            ends_at=time.time() + 600,
            author="ana",
        )
        await kv.put(window.id, msgspec.json.encode(window))
        await asyncio.sleep(FRESH_FOR)
        await notifier.suppressions_current()
        assert value(notifier.registry, "signalfire_notifier_silence_checks_total", result="read") == 1
        assert window.id in held.entries
    finally:
        await notifier.stop()
    refusals = [r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage().lower()]
    assert refusals == []


async def test_the_evaluator_reads_a_hosts_last_batch_for_its_restart(bus: Bus, admin: Any) -> None:
    s = bus.subjects
    agent = await client(bus, user_name("agent", WEB1))
    evaluator = await client(bus, "evaluator")
    try:
        await agent.jetstream().publish(s.metrics(WEB1), batch(WEB1, 42.0), timeout=5)
        msg = await evaluator.jetstream(timeout=5).get_last_msg(s.metrics_stream, s.metrics(WEB1))
        assert decode(msg.data or b"", MetricBatch).samples[0].value == 42.0
    finally:
        await agent.close()
        await evaluator.close()


async def test_the_evaluator_reads_the_metrics_streams_history_back_for_a_takeover(
    bus: Bus, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    s = bus.subjects
    agent = await client(bus, user_name("agent", WEB1))
    evaluator = await client(bus, "evaluator")
    try:
        since = time.time() - 1
        for level in (1.0, 2.0, 3.0):
            await agent.jetstream().publish(s.metrics(WEB1), batch(WEB1, level), timeout=5)
        read = Read()
        history = read_history(
            evaluator.jetstream(timeout=5),
            s.metrics_stream,
            since,
            keep_from=since,
            wanted=lambda subject: True,
            seconds=10,
            result=read,
        )
        values = [decode(data, MetricBatch).samples[0].value async for _, data, _ in history]
        assert values[-3:] == [1.0, 2.0, 3.0] and read.truncated is None
    finally:
        await agent.close()
        await evaluator.close()
    refusals = [r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage().lower()]
    assert refusals == []


async def test_the_evaluator_reads_peoples_actions_back_from_the_alerts_stream(
    bus: Bus, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    s = bus.subjects
    gateway = await client(bus, "gateway")
    evaluator = await client(bus, "evaluator")
    try:
        since = time.time() - 1
        for kind in ("ack", "resolve"):
            action = AlertAction(alert_id="fp:1", action=kind, actor="alice", time=time.time())
            await gateway.jetstream().publish(s.actions, encode(action), timeout=5)
        read = Read()
        actions = read_actions(
            evaluator.jetstream(timeout=5), s.alerts_stream, s.actions, since, seconds=10, result=read
        )
        kinds = [decode(data, AlertAction).action async for data, _ in actions]
        assert kinds[-2:] == ["ack", "resolve"] and read.truncated is None
    finally:
        await gateway.close()
        await evaluator.close()
    refusals = [r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage().lower()]
    assert refusals == []


async def test_the_notifier_watches_the_evaluators_and_raises_its_own_alert_alone(
    bus: Bus, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """As its own identity the notifier reads the evaluators' leases and publishes its
    ``EvaluationStopped`` on the one alerts subject it may: an alert for a host it publishes
    there is refused."""
    s = bus.subjects
    alerts = await collect(admin, s.all_alerts, AlertEvent)
    evaluator = await client(bus, "evaluator")
    notifier = await client(bus, "notifier")
    leases = await evaluator.jetstream(timeout=5).key_value(s.bucket("evaluator_leases"))
    try:
        announcement = Lease(replica="r", instance="i", time=time.time(), partitions=[], count=1)
        await leases.put("replica.r", msgspec.json.encode(announcement))
        js = notifier.jetstream(timeout=5)
        registry = Registry("test_watch")
        watch = EvaluationWatch(
            await js.key_value(s.bucket("evaluator_leases")),
            evaluation_alert(
                await js.key_value(s.bucket("notify_state")), watch_publisher(js, s.alerts(SELF_HOST))
            ),
            lambda: 0.2,
            registry=registry,
            checks=checks_counter(registry),
        )
        await watch.check(0.2)
        await asyncio.sleep(0.3)
        await watch.check(0.2)  # no lease for either partition: it fires

        async def raised() -> None:
            assert [(a.rule, a.host) for a in alerts] == [("EvaluationStopped", SELF_HOST)]

        await eventually(raised)
        refusals = [
            r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage().lower()
        ]
        assert refusals == []
        forged = firing_alert("forged-by-the-notifier", host=WEB1)
        with pytest.raises(Exception):  # noqa: B017 - the stream never hears of it
            await js.publish(s.alerts(WEB1), encode(forged), timeout=REFUSED_WAIT)
    finally:
        # The bus is the module's: a later test's evaluator must not see replica r, nor its
        # notifier resolve this alert.
        await leases.delete("replica.r")
        await (await notifier.jetstream(timeout=5).key_value(s.bucket("notify_state"))).delete(
            "watch.evaluation"
        )
        await evaluator.close()
        await notifier.close()
    assert "forged-by-the-notifier" not in [a.id for a in alerts]


async def test_the_notifier_reads_how_far_the_gateways_consumers_are_and_cannot_take_from_them(
    bus: Bus, admin: Any
) -> None:
    s = bus.subjects
    for name in ("gateway-metrics", "gateway-metrics-2of2"):
        with contextlib.suppress(Exception):  # made already by a test's gateway, or made here
            await admin.jetstream().add_consumer(
                s.metrics_stream, ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT)
            )
    with contextlib.suppress(Exception):
        await admin.jetstream().add_consumer(s.alerts_stream, ConsumerConfig(durable_name="gateway-alerts"))
    await admin.jetstream().publish(s.metrics(WEB1), batch(WEB1, 1.0))  # something to take
    notifier = await client(bus, "notifier")
    try:
        js = notifier.jetstream(timeout=REFUSED_WAIT)
        listed = {i.name: i for i in await js.consumers_info(s.metrics_stream)}
        for name in ("gateway-metrics", "gateway-metrics-2of2"):
            assert (listed[name].num_pending or 0) >= 1, name
        info = await js.consumer_info(s.alerts_stream, "gateway-alerts")
        assert info.name == "gateway-alerts"
        with pytest.raises(Exception):  # noqa: B017 - refused: nobody answers the fetch
            taker = await js.pull_subscribe_bind("gateway-metrics-2of2", s.metrics_stream)
            await taker.fetch(1, timeout=REFUSED_WAIT)
        with pytest.raises(Exception):  # noqa: B017 - refused: the request times out
            await js.delete_consumer(s.metrics_stream, "gateway-metrics-2of2")
    finally:
        await notifier.close()
    assert (await admin.jetstream().consumer_info(s.metrics_stream, "gateway-metrics-2of2")).num_pending


async def test_the_gateway_may_remove_a_metrics_consumer_and_nothing_else(bus: Bus, admin: Any) -> None:
    """Its own read positions on the metrics stream (those of a number of ingest workers no
    gateway runs any more); not another stream's consumer, nor a stream, nor a message."""
    s = bus.subjects
    ajs = admin.jetstream()
    await ajs.add_consumer(s.metrics_stream, ConsumerConfig(durable_name="gateway-metrics-1of3"))
    with contextlib.suppress(Exception):  # made already by a test's gateway, or made here
        await ajs.add_consumer(s.alerts_stream, ConsumerConfig(durable_name="gateway-alerts"))
    await ajs.publish(s.metrics(WEB1), batch(WEB1, 1.0))
    stored = (await ajs.stream_info(s.metrics_stream)).state.messages
    gateway = await client(bus, "gateway")
    try:
        js = gateway.jetstream(timeout=REFUSED_WAIT)
        assert await js.delete_consumer(s.metrics_stream, "gateway-metrics-1of3")
        for refused in (
            js.delete_consumer(s.alerts_stream, "gateway-alerts"),
            js.delete_stream(s.metrics_stream),
            js.purge_stream(s.metrics_stream),
            js.delete_msg(s.metrics_stream, 1),
        ):
            with pytest.raises(Exception):  # noqa: B017 - the server drops the request; it times out
                await refused
    finally:
        await gateway.close()
    assert "gateway-metrics-1of3" not in {i.name for i in await ajs.consumers_info(s.metrics_stream)}
    assert (await ajs.consumer_info(s.alerts_stream, "gateway-alerts")).name == "gateway-alerts"
    assert (await ajs.stream_info(s.metrics_stream)).state.messages == stored


# What the server refuses -------------------------------------------------------------------------


async def test_the_evaluator_cannot_delete_the_alerts_stream(bus: Bus, admin: Any) -> None:
    nc = await client(bus, "evaluator")
    try:
        with pytest.raises(Exception):  # noqa: B017 - the server drops the request; it times out
            await nc.jetstream(timeout=REFUSED_WAIT).delete_stream(bus.subjects.alerts_stream)
        with pytest.raises(Exception):  # noqa: B017
            await nc.jetstream(timeout=REFUSED_WAIT).delete_consumer(bus.subjects.alerts_stream, "notifier")
    finally:
        await nc.close()
    info = await admin.jetstream().stream_info(bus.subjects.alerts_stream)
    assert info.config.name == bus.subjects.alerts_stream


async def test_the_evaluator_cannot_change_the_gateways_durable_consumers(bus: Bus, admin: Any) -> None:
    """A consumer create names a consumer and carries its config: one that may make consumers
    on a stream may also update its durables (a create with their name is an update). The
    evaluator could so set the gateway's `headers_only` (empty bodies: samples lost) or an
    `inactive_threshold` (the durable gone while the gateway is down); it reads the stream's
    history with direct gets instead, and may make no consumer on it."""
    s = bus.subjects
    durable = "gateway-metrics"
    js = admin.jetstream()
    wanted = ConsumerConfig(
        durable_name=durable, name=durable, filter_subject=s.all_metrics, ack_policy=AckPolicy.EXPLICIT
    )
    await js.add_consumer(s.metrics_stream, wanted)
    changed = {
        "stream_name": s.metrics_stream,
        "config": {**wanted.as_dict(), "headers_only": True, "inactive_threshold": 5_000_000_000},
    }
    nc = await client(bus, "evaluator")
    try:
        for subject in (
            f"$JS.API.CONSUMER.CREATE.{s.metrics_stream}.{durable}.{s.all_metrics}",
            f"$JS.API.CONSUMER.CREATE.{s.metrics_stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{s.metrics_stream}",
        ):
            with pytest.raises(Exception):  # noqa: B017 - the server drops the request; it times out
                await nc.request(subject, msgspec.json.encode(changed), timeout=REFUSED_WAIT)
    finally:
        await nc.close()
    config = (await js.consumer_info(s.metrics_stream, durable)).config
    assert not config.headers_only and not config.inactive_threshold


async def test_the_notifier_cannot_purge_the_metrics_stream(bus: Bus, admin: Any) -> None:
    s = bus.subjects
    await admin.jetstream().publish(s.metrics("kept"), batch("kept", 1.0))
    before = (await admin.jetstream().stream_info(s.metrics_stream)).state.messages
    nc = await client(bus, "notifier")
    try:
        with pytest.raises(Exception):  # noqa: B017
            await nc.jetstream(timeout=REFUSED_WAIT).purge_stream(s.metrics_stream)
    finally:
        await nc.close()
    assert (await admin.jetstream().stream_info(s.metrics_stream)).state.messages >= before > 0


async def test_only_the_gateway_may_change_a_streams_settings(bus: Bus, admin: Any) -> None:
    s = bus.subjects
    nc = await client(bus, "evaluator")
    try:
        current = (await admin.jetstream().stream_info(s.metrics_stream)).config
        shrunk = msgspec.structs.replace(bus.config("evaluator"), metrics_max_age=Duration(1))
        # ensure_streams keeps the service running on the stream as it is
        await ensure_streams(nc.jetstream(timeout=REFUSED_WAIT), shrunk)
    finally:
        await nc.close()
    assert (await admin.jetstream().stream_info(s.metrics_stream)).config.max_age == current.max_age


async def test_an_agent_cannot_publish_another_hosts_metrics(bus: Bus, admin: Any) -> None:
    s = bus.subjects
    nc = await client(bus, user_name("agent", WEB1))
    try:
        await nc.jetstream().publish(s.metrics(WEB1), batch(WEB1, 1.0), timeout=5)  # its own: fine
        with pytest.raises(Exception):  # noqa: B017 - no acknowledgement comes back
            await nc.jetstream().publish(s.metrics(WEB2), batch(WEB2, 1.0), timeout=REFUSED_WAIT)
        await nc.publish(s.events(WEB2), b"{}")
        await nc.flush()
    finally:
        await nc.close()
    js = admin.jetstream()
    assert (await js.get_last_msg(s.metrics_stream, s.metrics(WEB1))).data
    for subject in (s.metrics(WEB2), s.events(WEB2)):
        with pytest.raises(NotFoundError):
            await js.get_last_msg(s.metrics_stream, subject)


async def test_an_agent_cannot_raise_alerts_for_another_host_from_its_own_subject(
    bus: Bus, admin: Any, tmp_path: Path
) -> None:
    s = bus.subjects
    alerts = await collect(admin, s.all_alerts, AlertEvent)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    evaluator = EvaluatorService(
        EvaluatorConfig(nats=bus.config("evaluator"), rules=[str(rules)], tick_interval=Duration(0.05))
    )
    await evaluator.start()
    nc = await client(bus, user_name("agent", WEB1))
    try:
        # allowed on the wire (its own subject), but the payload speaks for web-2
        await nc.publish(s.metrics(WEB1), batch(WEB2, 99.0))
        await nc.flush()
        await eventually(lambda: _counted(evaluator, 1))
        await nc.publish(s.metrics(WEB1), batch(WEB1, 99.0))  # the control: its own host fires

        async def fired() -> None:
            assert [a.host for a in alerts if a.status == "firing"] == [WEB1]

        await eventually(fired)
    finally:
        await nc.close()
        await evaluator.stop()


async def _counted(evaluator: EvaluatorService, invalid: int) -> None:
    assert value(evaluator.registry, "signalfire_evaluator_invalid_batches_total") == invalid


@pytest.mark.parametrize("identity", ["admin", "evaluator", "notifier", user_name("agent", WEB1)])
async def test_a_forged_alert_action_is_refused_from_every_identity_but_the_gateway(
    bus: Bus, admin: Any, identity: str
) -> None:
    s = bus.subjects
    received = await collect(admin, s.actions, AlertAction)
    await admin.flush()
    forged = AlertAction(
        alert_id=f"forged-{identity}", action="resolve", actor="alice (forged)", time=time.time()
    )
    nc = await client(bus, identity)
    try:
        await nc.publish(s.actions, encode(forged))
        with pytest.raises(Exception):  # noqa: B017 - the stream never hears of it
            await nc.jetstream().publish(s.actions, encode(forged), timeout=REFUSED_WAIT)
    finally:
        await nc.close()
    gateway = await client(bus, "gateway")
    try:  # the gateway's own action is the control: it arrives
        genuine = AlertAction(alert_id=f"genuine-{identity}", action="ack", actor="bob", time=time.time())
        await gateway.jetstream().publish(s.actions, encode(genuine), timeout=5)
    finally:
        await gateway.close()
    await eventually(lambda: _has(received, f"genuine-{identity}"))
    assert [a.alert_id for a in received] == [f"genuine-{identity}"]


async def _has(received: list[AlertAction], alert_id: str) -> None:
    assert alert_id in [a.alert_id for a in received]


@pytest.mark.parametrize("identity", ["admin", "evaluator", "notifier", user_name("agent", WEB1)])
async def test_a_forged_committed_frame_is_refused_from_every_identity_but_the_gateway(
    bus: Bus, identity: str
) -> None:
    s = bus.subjects
    gateway = await client(bus, "gateway")
    received: list[CommittedFrame] = []

    async def on_frame(msg: Any) -> None:
        received.append(decode(msg.data, CommittedFrame))

    try:
        await gateway.subscribe(s.all_committed, cb=on_frame)
        await gateway.flush()
        forged = CommittedFrame(origin=f"forged-{identity}", items=[msgspec.Raw(batch(WEB1, 99.0))])
        nc = await client(bus, identity)
        try:
            await nc.publish(s.committed("metrics"), msgspec.json.encode(forged))
            await nc.flush()
        finally:
            await nc.close()
        # the gateway's own frame is the control: it arrives
        genuine = CommittedFrame(origin=f"genuine-{identity}", items=[msgspec.Raw(batch(WEB1, 1.0))])
        await gateway.publish(s.committed("metrics"), msgspec.json.encode(genuine))
        await eventually(lambda: _has_frame(received, f"genuine-{identity}"))
    finally:
        await gateway.close()
    assert [f.origin for f in received] == [f"genuine-{identity}"]


async def _has_frame(received: list[CommittedFrame], origin: str) -> None:
    assert origin in [f.origin for f in received]


@pytest.mark.parametrize("identity", ["evaluator", user_name("agent", WEB1)])
async def test_no_identity_but_the_gateway_may_read_committed_frames(
    bus: Bus, admin: Any, identity: str
) -> None:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    received: list[bytes] = []

    async def on_msg(msg: Any) -> None:
        received.append(msg.data)

    nc = await client(bus, identity)
    nc._error_cb = on_error  # see the server's refusals as they arrive
    gateway = await client(bus, "gateway")
    try:
        await nc.subscribe(bus.subjects.all_committed, cb=on_msg)
        await nc.flush()
        await gateway.publish(bus.subjects.committed("alerts"), b'{"origin": "g", "items": []}')
        await gateway.flush()
        await asyncio.sleep(0.3)
    finally:
        await gateway.close()
        await nc.close()
    assert received == []
    assert any("permissions violation for subscription" in str(e).lower() for e in errors), errors


async def test_an_agent_cannot_read_alerts_or_another_identitys_replies(bus: Bus, admin: Any) -> None:
    s = bus.subjects
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await connect(bus.config(user_name("agent", WEB1)), "test-agent", max_reconnect_attempts=1)
    nc._error_cb = on_error  # see the server's refusals as they arrive
    received: list[bytes] = []

    async def on_msg(msg: Any) -> None:
        received.append(msg.data)

    try:
        await nc.subscribe(s.all_alerts, cb=on_msg)
        await nc.subscribe("_INBOX.gateway.>", cb=on_msg)
        await nc.flush()
        await admin.publish(s.alerts("x"), b"secret")
        await admin.publish("_INBOX.gateway.abc", b"secret")
        await admin.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    assert received == []
    assert any("permissions violation for subscription" in str(e).lower() for e in errors), errors


async def test_a_wrong_password_or_none_is_refused_naming_what_was_sent(bus: Bus, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    # a service's connect, which would wait forever for a server: the refusal ends it at once
    with pytest.raises(ConfigError) as refused:
        await asyncio.wait_for(connect(bus.config("gateway", password_file=str(wrong)), "test"), 10)
    assert f"user 'gateway' was refused (a wrong password in {wrong}" in str(refused.value)
    assert bus.server.url in str(refused.value) and "Authorization Violation" in str(refused.value)
    assert "not-the-password" not in str(refused.value)
    with pytest.raises(ConfigError, match="requires credentials and none were given: set SF_NATS_USER"):
        await asyncio.wait_for(connect(msgspec.structs.replace(bus.config("gateway"), user=None), "test"), 10)


async def test_a_service_started_without_credentials_exits_2_saying_so(bus: Bus) -> None:
    """An evaluator started by hand beside a secured bus, with no credentials: before, it
    tried again every half second forever, logging each refusal; now it exits with status 2
    and one line saying what to set, and logs the refusal once."""
    started = time.monotonic()
    status, _, err = await signalfire_cli(
        "evaluator",
        env={
            "SF_NATS_URL": bus.server.url,
            "SF_NATS_PREFIX": bus.subjects.prefix,
            "SF_NATS_USER": "",
            "SF_NATS_PASSWORD_FILE": "",
            "SF_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        },
    )
    assert status == 2, err
    assert time.monotonic() - started < 20
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"signalfire: NATS ({bus.server.url}) refused the connection: it requires credentials"
    )
    assert err.count("Authorization Violation'\"") <= 1  # the log line, at most once


async def test_an_agent_refused_at_start_keeps_measuring_and_sends_it_all_once_its_password_is_fixed(
    bus: Bus, admin: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent is the one process that does not stop on a refusal: it says why, keeps its
    batches (buffer and spool) and tries again every few seconds, reading the password file
    afresh, so fixing the file is enough and nothing measured meanwhile is lost."""
    identity = user_name("agent", WEB2)
    password = tmp_path / "agent.password"
    password.write_text("an old password\n")
    agent = Agent(
        AgentConfig(
            nats=bus.config(identity, password_file=str(password)), interval=Duration(1), hostname=WEB2
        )
    )
    started = time.time()
    with caplog.at_level("ERROR", logger="signalfire.collector.agent"):
        await agent.start()
        try:

            async def refused() -> None:
                reasons = [
                    getattr(r, "reason", "")
                    for r in caplog.records
                    if r.getMessage() == "cannot connect to NATS"
                ]
                assert any(
                    f"user '{identity}' was refused (a wrong password in {password}" in r for r in reasons
                )
                assert agent.batches_made >= 3

            await eventually(refused, timeout=15)
            made_while_refused = agent.batches_made
            password.write_text(bus.creds.password_file(identity).read_text())

            async def sent() -> None:
                assert len(agent.outbox) == 0 and agent.batches_made > made_while_refused + 1

            await eventually(sent, timeout=RECONNECT_PAUSE + 15)
        finally:
            await agent.stop()
    batches = await stored_batches(admin.jetstream(), bus.config("admin"), WEB2)
    ours = [b.time for b in batches if b.time >= started - 1]  # other tests publish as WEB2 too
    assert len(ours) == agent.batches_made  # the refused stretch's batches too, each once
    assert_every_tick_once_in_order(ours, 1.0)
    assert not any(
        "an old password" in r.getMessage() + str(getattr(r, "reason", "")) for r in caplog.records
    )


async def test_a_connection_whose_credentials_are_revoked_keeps_trying_and_says_so_once(
    bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused on every reconnect, an attempt fails twice (the refusal, then the connection
    reset): each is logged once per 30 s, not every half second; and the connection, which
    was up, keeps trying (the credentials may come back)."""
    host = f"gone-{secrets.token_hex(2)}"
    password = tmp_path / "agent.password"
    name = bus.creds.enroll(host, password)
    assert bus.server.proc is not None
    reload_server(bus.server.proc.pid)
    config = bus.config(name, password_file=str(password))

    async def connected() -> Any:
        try:
            return await connect(config, "test-revoked")  # reconnecting forever, as a service
        except (ConfigError, NoServersError):  # not enrolled yet, or reset by the reload
            raise AssertionError("the enrolled agent cannot connect yet") from None

    nc = await eventually(connected)
    try:
        with caplog.at_level("WARNING", logger="signalfire.bus"):
            assert bus.creds.revoke(host)
            reload_server(bus.server.proc.pid)
            await asyncio.sleep(8)  # an attempt every 1-2 s
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("NATS error")]
        assert any("Authorization Violation" in line for line in said), said
        assert len(said) == len(set(said)), said
        assert not nc.is_closed
    finally:
        await nc.close()


def test_an_unreadable_password_file_names_the_file(bus: Bus, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.password"):
        asyncio.run(connect(bus.config("gateway", password_file=str(tmp_path / "missing.password")), "t"))


async def test_enroll_then_revoke_takes_effect_on_reload(bus: Bus, admin: Any, tmp_path: Path) -> None:
    host = f"new-{secrets.token_hex(2)}"
    out = tmp_path / "agent.password"
    name = bus.creds.enroll(host, out)
    assert out.stat().st_mode & 0o777 == 0o600
    assert bus.server.proc is not None
    reload_server(int(bus.server.pid_file.read_text()))
    config = bus.config(name, password_file=str(out))

    async def can_publish() -> None:
        try:
            nc = await connect(config, "test-enrolled", max_reconnect_attempts=1)
        except (ConfigError, NoServersError):  # not enrolled yet, or reset by the reload
            raise AssertionError("the enrolled agent cannot connect yet") from None
        try:
            await nc.jetstream().publish(bus.subjects.agents(host), b"{}", timeout=5)
        finally:
            await nc.close()

    await eventually(can_publish)  # the reload is asynchronous
    assert bus.creds.revoke(host)
    reload_server(bus.server.proc.pid)

    async def refused() -> None:
        try:
            nc = await connect(config, "test-revoked", max_reconnect_attempts=1)
        except ConfigError as exc:
            assert f"user '{name}' was refused" in str(exc)
            return
        except NoServersError:  # the connection reset while the server reloads
            raise AssertionError("no answer yet") from None
        # let in just before the reload took effect, and put out by it: nats-py's close of a
        # connection the server is dropping can end in the transport's cancelled close waiter
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await nc.close()
        raise AssertionError("a revoked agent could still connect")

    await eventually(refused)


async def test_the_shipped_compose_config_lets_in_only_its_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = SHIPPED_ACCOUNTS.read_text()
    (tmp_path / "accounts.conf").write_text(text)
    for variable in re.findall(r"\$(SF_NATS_[A-Z0-9_]+)", text):
        monkeypatch.setenv(variable, f"pw-{variable}")  # as compose hands them to nats-server
    server = NatsServer(tmp_path / "data", config=tmp_path / "accounts.conf").start()
    try:
        url = server.url
        with pytest.raises(ConfigError, match="none were given"):
            await connect(NatsConfig(url=url), "anonymous", max_reconnect_attempts=1)
        agent = NatsConfig(
            url=url, user="agent-compose-agent", password="pw-SF_NATS_AGENT_COMPOSE_AGENT_PASSWORD"
        )
        gateway = NatsConfig(url=url, user="gateway", password="pw-SF_NATS_GATEWAY_PASSWORD")
        nc = await connect(gateway, "gateway", max_reconnect_attempts=1)
        try:
            await ensure_streams(nc.jetstream(), gateway)
        finally:
            await nc.close()
        nc = await connect(agent, "agent", max_reconnect_attempts=1)
        try:
            await nc.jetstream().publish("sf.metrics.compose-agent", batch("compose-agent", 1.0), timeout=5)
            with pytest.raises(Exception):  # noqa: B017 - another host's subject: no acknowledgement
                await nc.jetstream().publish("sf.metrics.other", batch("other", 1.0), timeout=REFUSED_WAIT)
        finally:
            await nc.close()
    finally:
        server.stop()


# TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Path, trustme.CA]]:
    """nats-server requiring TLS with client certificates (mutual TLS), certificates from trustme."""
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    server_cert.cert_chain_pems[0].write_to_path(str(root / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(root / "server-key.pem"))
    client_cert = ca.issue_cert("signalfire-evaluator")
    client_cert.cert_chain_pems[0].write_to_path(str(root / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(root / "client-key.pem"))
    conf = root / "nats.conf"
    conf.write_text(
        "tls {\n"
        f'  cert_file: "{root / "server.pem"}"\n'
        f'  key_file: "{root / "server-key.pem"}"\n'
        f'  ca_file: "{root / "ca.pem"}"\n'
        "  verify: true\n"
        "  timeout: 2\n"
        "}\n"
    )
    server = NatsServer(root / "data", config=conf).start()
    try:
        yield server, root, ca
    finally:
        server.stop()


async def test_a_service_connects_through_tls_with_its_certificate(
    tls_bus: tuple[NatsServer, Path, trustme.CA], tmp_path: Path
) -> None:
    server, root, _ = tls_bus
    nats = NatsConfig(
        url=f"tls://127.0.0.1:{server.port}",
        prefix=f"t{secrets.token_hex(3)}",
        tls_ca=str(root / "ca.pem"),
        tls_cert=str(root / "client.pem"),
        tls_key=str(root / "client-key.pem"),
        metrics_max_bytes=16 << 20,
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    evaluator = EvaluatorService(EvaluatorConfig(nats=nats, rules=[str(rules)]))
    await evaluator.start()  # streams, buckets, subscriptions: all over TLS
    try:
        assert evaluator._nc is not None and evaluator._nc.is_connected
        url = evaluator._nc.connected_url
        assert url is not None and url.scheme == "tls"
    finally:
        await evaluator.stop()


async def test_tls_refuses_a_client_without_the_ca_or_without_a_certificate(
    tls_bus: tuple[NatsServer, Path, trustme.CA],
) -> None:
    server, root, _ = tls_bus
    url = f"tls://127.0.0.1:{server.port}"
    # it does not trust the server's certificate
    await never_connects(
        NatsConfig(url=url, tls_cert=str(root / "client.pem"), tls_key=str(root / "client-key.pem"))
    )
    # the server wants a client certificate
    await never_connects(NatsConfig(url=url, tls_ca=str(root / "ca.pem")))
    await never_connects(NatsConfig(url=f"nats://127.0.0.1:{server.port}"))


async def never_connects(config: NatsConfig) -> None:
    # nats-py keeps retrying a failed TLS handshake on the first connect, whatever
    # max_reconnect_attempts says: a connection that has not come up in 5 s never will.
    with pytest.raises((NoServersError, TimeoutError)):
        nc = await asyncio.wait_for(connect(config, "test-tls", max_reconnect_attempts=1), 5)
        await nc.close()


async def test_partitioned_evaluators_share_the_hosts_as_their_own_identity(
    bus: Bus, admin: Any, tmp_path: Path
) -> None:
    s = bus.subjects
    alerts = await collect(admin, s.all_alerts, AlertEvent)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    replicas = [
        EvaluatorService(
            EvaluatorConfig(
                nats=bus.config("evaluator"),
                rules=[str(rules)],
                tick_interval=Duration(0.05),
                partitions=4,
                failover_after=Duration(2),
                replica_id=name,
            )
        )
        for name in ("a", "b")
    ]
    for replica in replicas:
        await replica.start()
    # web-2: an earlier test of this module left web-1's alert firing in the state bucket
    # (the bus is the module's), and a replica taking web-1's partition rightly loads it.
    nc = await client(bus, user_name("agent", WEB2))
    try:

        async def shared() -> None:
            judged = [set(r.describe()["replica"]["judged"]) for r in replicas]
            assert all(judged) and not judged[0] & judged[1] and len(judged[0] | judged[1]) == 5

        await eventually(shared)  # leases read, written and watched under the evaluator's rights

        async def fired() -> None:
            # Published again on every check, as an agent does each interval: on a loaded
            # machine a lease can change hands in between, and a sample that arrives while its
            # partition has no owner is not judged.
            await nc.publish(s.metrics(WEB2), batch(WEB2, 99.0))
            assert [a.host for a in alerts if a.status == "firing"] == [WEB2]

        await eventually(fired)
    finally:
        await nc.close()
        for replica in replicas:
            await replica.stop()


async def test_a_starting_evaluator_asks_who_has_its_replica_id_as_its_own_identity(
    bus: Bus, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    replica = f"auth-{secrets.token_hex(3)}"

    def config() -> EvaluatorConfig:
        return EvaluatorConfig(nats=bus.config("evaluator"), rules=[str(rules)], replica_id=replica)

    first = EvaluatorService(config())
    twin = EvaluatorService(config())
    await first.start()
    try:
        # The answer names the running process: the question was allowed, and so was the reply.
        with pytest.raises(ConfigError, match=rf"replica_id '{replica}' is used by .*: pid {os.getpid()} on"):
            await twin.start()
    finally:
        await twin.stop()
        await first.stop()

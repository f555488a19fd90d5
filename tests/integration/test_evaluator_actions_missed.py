"""People's actions on alerts (ack, unack, resolve) that reached no evaluator live: published
while it was stopped, while its connection was away (its NATS node died), or while the
replica that now judges the alert's partition did not yet hold it. They reach the evaluator
on a core subscription, which delivers nothing then; the alerts stream keeps them, and the
evaluator reads them back after its start, a takeover and a reconnect. A user's resolve must
end the alert, and an ack must show on its later events. Real NATS; the actions go on the
bus as the gateway's API publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from signalfire.bus import NatsConfig, connect
from signalfire.config import Duration
from signalfire.evaluator import replay
from signalfire.evaluator.engine import Engine
from signalfire.evaluator.partitions import host_partition
from signalfire.evaluator.service import PLACE_LIMIT, EvaluatorConfig, EvaluatorService
from signalfire.events import AlertAction, AlertEvent, MetricBatch, Sample, decode, encode
from tests.faults.support import alert_events, eventually
from tests.support.metrics import value
from tests.support.private_nats import private_nats
from tests.support.rules import parsed_rules
from tests.support.tcpproxy import TcpProxy

RULES = """\
rules:
  - {name: Hot, metric: temp, condition: "> 50", resolve: "< 40", severity: high}
"""


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def config(nats: NatsConfig, rules: Path, **extra: Any) -> EvaluatorConfig:
    return EvaluatorConfig(
        nats=nats, rules=[str(rules)], tick_interval=Duration(0.1), watch_interval=Duration(0), **extra
    )


async def send(js: Any, nats: NatsConfig, host: str, temp: float) -> None:
    batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=temp)])
    await js.publish(nats.subjects.metrics(host), encode(batch), timeout=2)


async def act(js: Any, nats: NatsConfig, alert: AlertEvent, action: str, actor: str) -> None:
    """What the gateway's API publishes when ``actor`` acts on ``alert`` in the dashboard."""
    done = AlertAction(
        alert_id=alert.id,
        action=action,  # type: ignore[arg-type]
        actor=actor,
        time=time.time(),
        fingerprint=alert.fingerprint,
        id=str(uuid.uuid4()),
    )
    await js.publish(nats.subjects.actions, encode(done), headers={"Nats-Msg-Id": done.id}, timeout=2)
    await asyncio.sleep(0.01)  # one after the other, as people click


async def firing(js: Any, nats: NatsConfig, hosts: list[str]) -> dict[str, AlertEvent]:
    async def all_fired() -> bool:
        fired = {e.host for e in await alert_events(js, nats) if e.status == "firing"}
        return set(hosts) <= fired

    await eventually(all_fired, f"{', '.join(hosts)} to fire", 10)
    return {e.host: e for e in await alert_events(js, nats) if e.status == "firing"}


async def resolves(js: Any, nats: NatsConfig, what: str, timeout: float = 10) -> None:
    """Until an alert event resolves (``what``: what is awaited, for the failure)."""

    async def resolved() -> bool:
        return any(e.status == "resolved" for e in await alert_events(js, nats))

    await eventually(resolved, what, timeout)


def transitions(events: list[AlertEvent]) -> list[tuple[str, str]]:
    return sorted((e.host, e.status) for e in events)


@pytest.mark.timeout(60)
async def test_actions_made_while_the_evaluator_was_stopped_apply_when_it_starts(
    nc: Any, nats_config: NatsConfig, rules: Path
) -> None:
    js = nc.jetstream()
    hosts = ["act-resolved", "act-acked", "act-unacked"]
    first = EvaluatorService(config(nats_config, rules))
    await first.start()
    try:
        for host in hosts:
            await send(js, nats_config, host, 95.0)
        alerts = await firing(js, nats_config, hosts)
    finally:
        await first.stop()

    # The evaluator is down (an upgrade, a crash); the on-call works through the dashboard.
    await act(js, nats_config, alerts["act-resolved"], "resolve", "alice")
    await act(js, nats_config, alerts["act-acked"], "ack", "bob")
    await act(js, nats_config, alerts["act-unacked"], "ack", "carol")
    await act(js, nats_config, alerts["act-unacked"], "unack", "carol")

    second = EvaluatorService(config(nats_config, rules))
    await second.start()
    try:
        await resolves(js, nats_config, "the alert resolved while the evaluator was down to resolve")
        [ended] = [e for e in await alert_events(js, nats_config) if e.status == "resolved"]
        assert (ended.host, ended.id, ended.annotations.get("resolved_by")) == (
            "act-resolved",
            alerts["act-resolved"].id,
            "alice",
        )
        states = {s.host: s for s in second.engine.states.values()}
        assert (states["act-acked"].acked_by, states["act-unacked"].acked_by) == ("bob", None)
        assert value(second.registry, "signalfire_evaluator_missed_actions_applied_total") == 3
    finally:
        await second.stop()

    # Started again: the same actions are read back and change nothing.
    third = EvaluatorService(config(nats_config, rules))
    await third.start()
    try:
        await asyncio.sleep(0.5)
        assert value(third.registry, "signalfire_evaluator_missed_actions_applied_total") == 0
        for host in ("act-acked", "act-unacked"):
            await send(js, nats_config, host, 10.0)

        async def both_resolved() -> bool:
            ended = {e.host for e in await alert_events(js, nats_config) if e.status == "resolved"}
            return {"act-acked", "act-unacked"} <= ended

        await eventually(both_resolved, "the acked and unacked alerts to resolve", 10)
        await asyncio.sleep(0.5)  # room for a stray event
    finally:
        await third.stop()
    events = await alert_events(js, nats_config)
    assert transitions(events) == sorted([(h, s) for h in hosts for s in ("firing", "resolved")])
    ends = {e.host: e.annotations for e in events if e.status == "resolved"}
    assert ends["act-acked"].get("acknowledged_by") == "bob"
    assert "acknowledged_by" not in ends["act-unacked"]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("gone", ["died", "stopped"])
async def test_a_resolve_made_while_no_replica_held_the_partition_applies_on_takeover(
    nc: Any, nats_config: NatsConfig, rules: Path, gone: str
) -> None:
    """The owner of the alert's partition dies (its lease left to lapse) or stops cleanly (its
    states written, its leases given up); the resolve is made before another replica takes the
    partition."""
    js = nc.jetstream()
    host = "act-moved"
    partitioned = {"partitions": 16, "failover_after": Duration(2)}
    a = EvaluatorService(config(nats_config, rules, replica_id="a", **partitioned))
    b = EvaluatorService(config(nats_config, rules, replica_id="b", **partitioned))
    await a.start()
    try:
        await send(js, nats_config, host, 95.0)
        alert = (await firing(js, nats_config, [host]))[host]
        if gone == "died":  # as far as the bus can tell: no renewal, no release
            assert a._nc is not None and a._lease_nc is not None
            await a._lease_nc.close()
            await a._nc.close()
        else:
            await a.stop()
        await asyncio.sleep(0.5)
        await act(js, nats_config, alert, "resolve", "alice")  # nobody judges the host now
        await asyncio.sleep(0.5)
        await b.start()

        def taken() -> bool:
            return host_partition(host, 16) in b.describe()["replica"]["judged"]

        await eventually(taken, "replica b to take the dead owner's partition", 20)

        await resolves(js, nats_config, "the alert resolved while nobody held it to resolve")
        await asyncio.sleep(0.5)
        events = await alert_events(js, nats_config)
        assert transitions(events) == [(host, "firing"), (host, "resolved")]
        assert [e.annotations.get("resolved_by") for e in events if e.status == "resolved"] == ["alice"]
        assert value(b.registry, "signalfire_evaluator_missed_actions_applied_total") == 1
    finally:
        await b.stop()
        with contextlib.suppress(Exception):
            await a.stop()


@pytest.mark.timeout(60)
async def test_a_resolve_made_while_the_evaluators_connection_was_away_applies_when_it_is_back(
    nc: Any, nats_config: NatsConfig, rules: Path
) -> None:
    js = nc.jetstream()
    host, port = nats_config.url.removeprefix("nats://").rsplit(":", 1)
    proxy = await TcpProxy(host, int(port)).start()
    through = msgspec.structs.replace(nats_config, url=proxy.url)
    evaluator = EvaluatorService(config(through, rules))
    await evaluator.start()
    try:
        await send(js, nats_config, "act-away", 95.0)
        await send(js, nats_config, "act-acked-live", 95.0)
        alerts = await firing(js, nats_config, ["act-away", "act-acked-live"])
        await act(js, nats_config, alerts["act-acked-live"], "ack", "bob")  # applied live

        def acked() -> bool:
            return any(s.acked_by == "bob" for s in evaluator.engine.states.values())

        await eventually(acked, "the live ack", 5)
        proxy.cut()
        await eventually(lambda: not evaluator._nc.is_connected, "the evaluator disconnected", 5)  # type: ignore[union-attr]
        await act(js, nats_config, alerts["act-away"], "resolve", "alice")
        await asyncio.sleep(0.3)
        proxy.restore()

        await resolves(js, nats_config, "the resolve made while disconnected to apply", 15)
        await asyncio.sleep(0.5)
        events = await alert_events(js, nats_config)
        assert transitions(events) == [
            ("act-acked-live", "firing"),
            ("act-away", "firing"),
            ("act-away", "resolved"),
        ]
        assert [e.annotations.get("resolved_by") for e in events if e.status == "resolved"] == ["alice"]
        # the live ack, read back with it, counted no change
        assert value(evaluator.registry, "signalfire_evaluator_missed_actions_applied_total") == 1
    finally:
        await evaluator.stop()
        await proxy.stop()


async def test_reading_actions_back_stops_at_its_bound_and_says_so(nc: Any, nats_config: NatsConfig) -> None:
    js = nc.jetstream()
    s = nats_config.subjects
    since = time.time() - 1
    fired = AlertEvent(
        id="fp-bound:1",
        fingerprint="fp-bound",
        rule="Hot",
        status="firing",
        severity="high",
        host="h",
        starts_at=since,
        time=since,
    )
    for actor in ("ana", "bo", "cy"):
        await act(js, nats_config, fired, "ack", actor)
        await js.publish(s.alerts("h"), b"{}", timeout=2)  # other messages between them

    async def read(bound: int) -> tuple[list[str], str | None]:
        result = replay.Read()
        reader = replay.read_actions(
            js, s.alerts_stream, s.actions, since, seconds=10, result=result, max_actions=bound
        )
        actors = [decode(data, AlertAction).actor async for data, _ in reader]
        return actors, result.truncated

    assert await read(3) == (["ana", "bo", "cy"], None)  # all of them: not cut short
    assert await read(2) == (["ana", "bo"], "batches")
    assert await read(10) == (["ana", "bo", "cy"], None)


@pytest.mark.timeout(60)
async def test_a_read_back_that_fails_is_tried_again(
    nc: Any, nats_config: NatsConfig, rules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alerts stream may be electing a leader when the evaluator reads the actions back
    (a NATS node died): the read is tried again, and the resolve still applies."""
    js = nc.jetstream()
    first = EvaluatorService(config(nats_config, rules))
    await first.start()
    try:
        await send(js, nats_config, "act-retry", 95.0)
        alerts = await firing(js, nats_config, ["act-retry"])
    finally:
        await first.stop()
    await act(js, nats_config, alerts["act-retry"], "resolve", "alice")
    real = replay.read_actions
    calls: list[float] = []

    async def failing_once(*args: Any, **kwargs: Any) -> AsyncIterator[tuple[bytes, float]]:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise TimeoutError("nats: timeout (the stream has no leader yet)")
        async for item in real(*args, **kwargs):
            yield item

    monkeypatch.setattr(replay, "read_actions", failing_once)
    second = EvaluatorService(config(nats_config, rules))
    await second.start()
    try:
        await resolves(js, nats_config, "the resolve, read back on the second try")
    finally:
        await second.stop()
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.5


HOT_FOR = 'rules:\n  - {name: Hot, metric: temp, condition: "> 50", for: 1s, severity: high}\n'


async def hot_batch(js: Any, nats: NatsConfig, host: str) -> None:
    batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=95.0)])
    await js.publish(nats.subjects.metrics(host), encode(batch), timeout=2)


async def resolved_by_hand_with_an_outbox(
    js: Any, nats: NatsConfig, host: str
) -> tuple[AlertEvent, list[MetricBatch]]:
    """``host`` runs hot (a batch every 0.1 s) until it fires; then its agent keeps its next
    four hot batches, 0.4 s apart, unacknowledged (its NATS node died), and a person resolves
    the alert. The alert, and the batches its outbox holds."""

    async def fired() -> bool:
        await hot_batch(js, nats, host)
        return any(e.status == "firing" for e in await alert_events(js, nats))

    await eventually(fired, "the alert to fire", 10)
    held = []
    for _ in range(4):
        held.append(MetricBatch(host=host, time=time.time(), samples=[Sample(name="temp", value=95.0)]))
        await asyncio.sleep(0.4)
    [alert] = [e for e in await alert_events(js, nats) if e.status == "firing"]
    await act(js, nats, alert, "resolve", "alice")
    await resolves(js, nats, "the alert resolved by hand to resolve")
    return alert, held


@pytest.mark.timeout(60)
async def test_batches_taken_before_a_resolve_and_published_after_it_page_no_second_time(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    """An agent's outbox holds what the bus did not acknowledge (a NATS node died) and sends it
    once the bus is back: the person who saw the alert may have resolved it meanwhile. Those
    hot batches, taken before the resolve, must not fire it again; fresh hot ones do, after
    `for`, as a still-hot series resolved by hand always does."""
    rules = tmp_path / "for.yaml"
    rules.write_text(HOT_FOR)
    js = nc.jetstream()
    host = "late-outbox"
    service = EvaluatorService(config(nats_config, rules))
    await service.start()
    try:
        alert, held = await resolved_by_hand_with_an_outbox(js, nats_config, host)
        for batch in held:  # the outbox, sent once the bus is back: over 1 s apart by their own times
            await js.publish(nats_config.subjects.metrics(host), encode(batch), timeout=2)
        await eventually(
            lambda: value(service.registry, "signalfire_evaluator_before_resolve_total") == len(held),
            "the held batches to be judged",
            5,
        )
        await asyncio.sleep(1.5)  # past `for`, for a second instance to show
        assert transitions(await alert_events(js, nats_config)) == [(host, "firing"), (host, "resolved")]
        assert service.engine.states[alert.fingerprint].status == "inactive"

        # Still hot, taken after the resolve: a new instance.
        async def fired_again() -> bool:
            await hot_batch(js, nats_config, host)
            return sum(e.status == "firing" for e in await alert_events(js, nats_config)) == 2

        await eventually(fired_again, "a new instance from fresh samples", 10)
    finally:
        await service.stop()
    ids = {e.id for e in await alert_events(js, nats_config) if e.status == "firing"}
    assert len(ids) == 2 and alert.id in ids


@pytest.mark.timeout(60)
@pytest.mark.parametrize("partitions", [0, 16], ids=["one-evaluator", "partitioned"])
async def test_batches_taken_before_a_resolve_page_no_second_time_after_an_evaluator_restart(
    nc: Any, nats_config: NatsConfig, tmp_path: Path, partitions: int
) -> None:
    """The same outbox, sent after the evaluator restarted: the new one has heard nothing from
    the host, so it measures the host's delay from its last batch on the stream (at its start,
    or when it takes the partition) before judging the held batches."""
    rules = tmp_path / "for.yaml"
    rules.write_text(HOT_FOR)
    js = nc.jetstream()
    host = "late-restart"
    # partitioned: the replica taking the partition reads the history of two polls (0.8 s)
    # before the last owner gave it up, which does not reach the host's last batch
    settings: dict[str, Any] = {"partitions": partitions, "failover_after": Duration(2)}
    first = EvaluatorService(config(nats_config, rules, **settings))
    await first.start()
    try:
        _, held = await resolved_by_hand_with_an_outbox(js, nats_config, host)
        await asyncio.sleep(1.5)  # its state written; the host silent (its outbox holds on)
    finally:
        await first.stop()
    second = EvaluatorService(config(nats_config, rules, **settings))
    await second.start()
    try:
        if partitions:
            await eventually(
                lambda: host_partition(host, partitions) in second.describe()["replica"]["judged"],
                "the restarted evaluator to take the host's partition",
                20,
            )
        for batch in held:  # the outbox, sent once the bus is back
            await js.publish(nats_config.subjects.metrics(host), encode(batch), timeout=2)
        await eventually(
            lambda: value(second.registry, "signalfire_evaluator_before_resolve_total") == len(held),
            "the held batches to be held back",
            5,
        )
        await asyncio.sleep(1.5)  # past `for`, for a second instance to show
    finally:
        await second.stop()
    assert transitions(await alert_events(js, nats_config)) == [(host, "firing"), (host, "resolved")]


@pytest.mark.timeout(60)
async def test_placing_hosts_resolved_by_hand_gives_up_after_its_limit_when_nats_does_not_answer(
    tmp_path: Path, rules: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The host look-ups of a start or a takeover are bounded: a NATS server that stops
    answering (frozen here with SIGSTOP) holds the evaluator up for `PLACE_LIMIT`, not for a
    request timeout per 32 hosts, and the evaluator says what it gave up."""
    server, nats = await private_nats(tmp_path / "nats", "place")
    service = EvaluatorService(config(nats, rules))
    try:
        nc = await connect(nats, "test-admin")
        service._js = nc.jetstream()
        engine = Engine(parsed_rules(RULES))
        hosts = [f"place-{i}" for i in range(100)]
        for host in hosts:
            [firing] = engine.metrics(
                MetricBatch(host=host, time=1.0, samples=[Sample(name="temp", value=95)]), 1.0
            ).events
            engine.action(
                AlertAction(alert_id=firing.id, action="resolve", actor="ana", time=2.0), time.time()
            )
        restarted = Engine(parsed_rules(RULES))
        restarted.load(list(engine.states.values()), time.time())
        assert len(restarted.unplaced(time.time() - 60)) == len(hosts)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="signalfire.evaluator"):
                await service._place(restarted)
            took = time.monotonic() - began
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert PLACE_LIMIT <= took < PLACE_LIMIT + 1.0, took
        assert "hosts resolved by hand not all placed in time" in caplog.text
        assert len(restarted.unplaced(time.time() - 60)) == len(hosts)  # none placed: counted on arrival
        await nc.close()
    finally:
        server.stop()

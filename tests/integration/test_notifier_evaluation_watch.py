"""Who watches the evaluators: when no evaluator replica judges some hosts (every one of them
down, or cut off from NATS), the notifier pages about it once, whichever of its replicas
notices, and sends the resolve once when a replica judges them again. Real NATS, a real
partitioned evaluator, two notifier replicas, a loopback webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from nats.js.kv import KeyValue

from signalfire.bus import NatsConfig, connect
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorService
from signalfire.events import AlertEvent
from signalfire.notifier.channels.webhook import WebhookChannelConfig
from signalfire.notifier.config import NotifyConfig, Route
from signalfire.notifier.watch import EvaluationWatch, Watch, checks_counter, evaluation_alert
from signalfire.partitions import PARTITION_PREFIX, Lease
from signalfire.subjects import SELF_HOST
from signalfire.telemetry import Registry
from tests.faults.support import alert_events, eventually
from tests.support.evaluator import replica
from tests.support.metrics import value
from tests.support.notifiers import notifier_services
from tests.support.tcpproxy import TcpProxy
from tests.support.webhook import WebhookReceiver

RULE = "EvaluationStopped"
KEY = "watch.evaluation"
RULES = "rules:\n  - {name: Hot, metric: temp, condition: '> 50', severity: high}\n"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def notify_config(nats: NatsConfig, receiver: WebhookReceiver, watch: float) -> NotifyConfig:
    return NotifyConfig(
        nats=nats,
        channels={"oncall": WebhookChannelConfig(url=receiver.url("oncall"), retry_backoff=Duration(0.01))},
        routes=[Route(channels=["oncall"])],
        tick=Duration(0.05),
        evaluation_watch=Duration(watch),
    )


def evaluator(nats: NatsConfig, rules: Path, replica_id: str) -> EvaluatorService:
    return replica(nats, rules, replica_id, partitions=4, failover_after=1)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_no_evaluator_judging_pages_once_and_resolves_once_with_two_notifiers(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    js = nc.jetstream()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    a = evaluator(nats_config, rules, "a")
    await a.start()
    try:
        async with notifier_services(nc) as start:
            config = notify_config(nats_config, receiver, watch=2.0)
            notifiers = [await start(config), await start(config)]

            def checks(result: str) -> float:
                return sum(
                    value(
                        n.registry,
                        "signalfire_notifier_watch_checks_total",
                        watch="evaluation",
                        result=result,
                    )
                    for n in notifiers
                )

            # Judged: the watch reads the leases and stays quiet past its 2 s.
            await eventually(lambda: checks("ok") >= 12, "the watch's checks while a judges", 10)
            assert receiver.posted() == [] and checks("trouble") == 0

            # Every evaluator gone (a's leases left to lapse, as after kill -9).
            assert a._nc is not None and a._lease_nc is not None
            await a._lease_nc.close()
            await a._nc.close()
            died = time.monotonic()
            await eventually(lambda: len(receiver.posted("oncall")) >= 1, "the page about evaluation", 10)
            paged = receiver.posted("oncall")[0]
            assert paged.at - died < 2.0 + 1.0  # evaluation_watch, and a check's interval
            assert (paged.transition, paged.body["alert"]["rule"], paged.body["alert"]["host"]) == (
                "firing",
                RULE,
                SELF_HOST,
            )
            summary = paged.body["alert"]["annotations"]["summary"]
            assert "00, 01, 02, 03, fleet" in summary, summary
            await asyncio.sleep(2.0)  # both replicas keep checking: no second page
            assert len(receiver.posted("oncall")) == 1

            # A replica judges again: the resolve, once.
            b = evaluator(nats_config, rules, "b")
            await b.start()
            try:
                await eventually(lambda: len(receiver.posted("oncall")) >= 2, "the resolve", 15)
                await asyncio.sleep(1.5)
                assert [(p.alert_id, p.transition) for p in receiver.posted("oncall")] == [
                    (paged.alert_id, "firing"),
                    (paged.alert_id, "resolved"),
                ]
            finally:
                await b.stop()
    finally:
        await a.stop()
    # On the alerts stream as every alert is (the gateway stores it, the dashboard lists it).
    ours = [(e.rule, e.host, e.status, e.seq) for e in await alert_events(js, nats_config)]
    assert ours == [(RULE, SELF_HOST, "firing", 1), (RULE, SELF_HOST, "resolved", 2)]


async def test_a_partition_gone_from_the_setting_is_not_watched_and_nothing_without_leases(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver
) -> None:
    """The newest announcement's count says which partitions there are: a lease of a partition
    the replicas no longer have (the setting lowered from 2 to 1) lapses unnoticed. And with no
    lease in the bucket nothing is watched (an evaluator without partitions writes none)."""
    js = nc.jetstream()
    leases = await js.key_value(nats_config.subjects.bucket("evaluator_leases"))

    def lease(**fields: Any) -> bytes:
        return msgspec.json.encode(Lease(replica="r", instance="i", time=time.time(), **fields))

    async with notifier_services(nc) as start:
        notifier = await start(notify_config(nats_config, receiver, watch=0.6))

        def checks(result: str) -> float:
            return value(
                notifier.registry, "signalfire_notifier_watch_checks_total", watch="evaluation", result=result
            )

        await eventually(lambda: checks("ok") >= 3, "checks of an empty bucket", 5)
        await leases.put(PARTITION_PREFIX + "01", lease())  # left by the old setting, never renewed
        for _ in range(8):  # the replica renews what it holds, and announces one partition
            await leases.put("replica.r", lease(partitions=["00", "fleet"], count=1))
            for partition in ("00", "fleet"):
                await leases.put(PARTITION_PREFIX + partition, lease())
            await asyncio.sleep(0.15)
        assert checks("trouble") == 0 and receiver.posted() == []
        with pytest.raises(Exception):  # noqa: B017 - no transition was ever decided
            await (await js.key_value(nats_config.subjects.bucket("notify_state"))).get(KEY)


async def test_an_unreadable_watch_state_is_replaced_and_the_page_still_goes_out(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver
) -> None:
    js = nc.jetstream()
    state = await js.key_value(nats_config.subjects.bucket("notify_state"))
    await state.put(KEY, b"{not json")
    leases = await js.key_value(nats_config.subjects.bucket("evaluator_leases"))
    await leases.put(
        "replica.r",
        msgspec.json.encode(Lease(replica="r", instance="i", time=time.time(), partitions=[], count=1)),
    )
    async with notifier_services(nc) as start:
        await start(notify_config(nats_config, receiver, watch=0.5))
        await eventually(lambda: len(receiver.posted("oncall")) == 1, "the page", 5)
    stored = msgspec.json.decode((await state.get(KEY)).value or b"", type=Watch)
    assert (stored.status, stored.what, stored.value) == ("firing", ["00", "fleet"], 2.0)


class ReadTogether:
    """The notify state bucket, whose reads of a watch key wait, while ``hold`` is set, until
    both replicas have read: neither has written yet when the other reads. (Left to the event
    loop, one replica's read and write could both come before the other's read, which then
    found the alert firing and published it again, as it should.)"""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self.hold = False
        self._barrier = asyncio.Barrier(2)

    async def get(self, key: str) -> Any:
        try:
            return await self.kv.get(key)
        finally:
            if self.hold:
                await self._barrier.wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


async def test_two_replicas_deciding_at_the_same_moment_raise_one_alert(
    nc: Any, nats_config: NatsConfig
) -> None:
    """Both read the leases, find the partitions unjudged and try the transition at once: the
    compare-and-set lets one decide, and both publish that one instance (the stream keeps one
    copy, by its id)."""
    js = nc.jetstream()
    subjects = nats_config.subjects
    leases = await js.key_value(subjects.bucket("evaluator_leases"))
    state = await js.key_value(subjects.bucket("notify_state"))
    announcement = Lease(replica="r", instance="i", time=time.time(), partitions=[], count=1)
    await leases.put("replica.r", msgspec.json.encode(announcement))
    published: list[AlertEvent] = []

    async def publish(alert: AlertEvent) -> None:
        published.append(alert)

    together = ReadTogether(state)
    registries = [Registry(f"watch_{i}") for i in range(2)]
    watches = [
        EvaluationWatch(
            leases,
            evaluation_alert(cast(KeyValue, together), publish),
            lambda: 0.2,
            registry=r,
            checks=checks_counter(r),
        )
        for r in registries
    ]
    await asyncio.gather(*(watch.check(0.2) for watch in watches))  # the first look
    await asyncio.sleep(0.3)
    together.hold = True  # both read the state before either writes: the same moment
    await asyncio.gather(*(watch.check(0.2) for watch in watches))  # both find them unjudged
    together.hold = False
    assert len(published) == 1  # the one that decided publishes
    await asyncio.gather(*(watch.check(0.2) for watch in watches))  # the next look: both do
    assert len(published) == 3
    assert len({alert.id for alert in published}) == 1 and {a.status for a in published} == {"firing"}


async def test_after_reads_failed_for_a_while_the_leases_are_timed_from_the_next_read(
    nc: Any, nats_config: NatsConfig
) -> None:
    """NATS away for longer than evaluation_watch (here the watch's connection cut): nothing
    renewed meanwhile, and on the first read after it the evaluators may not have renewed yet.
    That read starts the clock again instead of paging at once."""
    js = nc.jetstream()
    subjects = nats_config.subjects
    leases = await js.key_value(subjects.bucket("evaluator_leases"))
    announcement = Lease(replica="r", instance="i", time=time.time(), partitions=["00", "fleet"], count=1)
    await leases.put("replica.r", msgspec.json.encode(announcement))
    for partition in ("00", "fleet"):
        await leases.put(PARTITION_PREFIX + partition, msgspec.json.encode(announcement))
    host, port = nats_config.url.removeprefix("nats://").rsplit(":", 1)
    proxy = await TcpProxy(host, int(port)).start()
    watcher_nc = await connect(msgspec.structs.replace(nats_config, url=proxy.url), "watch-test")
    published: list[float] = []

    async def publish(alert: AlertEvent) -> None:
        published.append(time.monotonic())

    registry = Registry("signalfire_notifier")
    wjs = watcher_nc.jetstream(timeout=0.5)
    watch = EvaluationWatch(
        await wjs.key_value(subjects.bucket("evaluator_leases")),
        evaluation_alert(await wjs.key_value(subjects.bucket("notify_state")), publish),
        lambda: 1.2,
        registry=registry,
        checks=checks_counter(registry),
    )
    task = asyncio.create_task(watch.run())
    try:
        await eventually(
            lambda: (
                value(registry, "signalfire_notifier_watch_checks_total", watch="evaluation", result="ok")
                >= 1
            ),
            "a first read",
            5,
        )
        proxy.cut()
        await eventually(
            lambda: (
                value(registry, "signalfire_notifier_watch_checks_total", watch="evaluation", result="failed")
                >= 1
            ),
            "failed reads",
            10,
        )
        await asyncio.sleep(1.5)  # longer than evaluation_watch, nothing read
        proxy.restore()
        restored = time.monotonic()
        await eventually(lambda: bool(published), "the page, the leases still unrenewed", 15)
        assert published[0] - restored >= 1.2 - 0.3  # a whole evaluation_watch after reads resumed
    finally:
        watch.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watcher_nc.close()
        await proxy.stop()

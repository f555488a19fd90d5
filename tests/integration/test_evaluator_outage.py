"""A NATS outage raises no false HostDown: an agent that buffers and replays has no gap, so
its host must not fire; a host that really stopped during the outage fires, `for` after the
evaluator sees again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
import yaml
from devstack import NatsServer

from signalfire.bus import NatsConfig, connect
from signalfire.collector.agent import Agent
from signalfire.collector.config import AgentConfig
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode
from tests.integration.test_agent_publish import counters
from tests.support.metrics import value
from tests.support.polling import wait_until
from tests.support.private_nats import private_nats

REPO = Path(__file__).resolve().parents[2]
#: HostDown's `for`, shortened from the shipped 30 s (rule files take no overrides, so the
#: test writes the shipped rule with this one field changed) ...
FOR = 5.0
#: ... and an outage of twice that: the old evaluator fired for every host halfway through.
OUTAGE = 10.0


def shipped_host_down(directory: Path) -> Path:
    """rules/default.yaml's HostDown rule, with `for` shortened to :data:`FOR`."""
    pack = yaml.safe_load((REPO / "rules" / "default.yaml").read_text())
    [rule] = [r for r in pack["rules"] if r["name"] == "HostDown"]
    assert rule["kind"] == "absent" and "metric" not in rule  # per host: any batch counts
    rule["for"] = f"{FOR:g}s"
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": [rule]}))
    return path


async def publish_until(nats: NatsConfig, host: str, stop: asyncio.Event) -> None:
    """A host that publishes every 0.5 s until ``stop``, then goes silent without a word (no
    ``offline`` status: as a host that lost power)."""
    nc = await connect(nats, f"test-{host}")
    try:
        while not stop.is_set():
            batch = MetricBatch(host=host, time=time.time(), samples=[Sample(name="up", value=1.0)])
            await nc.publish(nats.subjects.metrics(host), encode(batch))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        await nc.flush()
    finally:
        await nc.close()


async def alert_events(nats: NatsConfig) -> list[AlertEvent]:
    """Every alert event the stream holds."""
    nc = await connect(nats, "test-alerts")
    try:
        sub = await nc.jetstream().subscribe(nats.subjects.all_alerts, ordered_consumer=True)
        events: list[AlertEvent] = []
        with contextlib.suppress(TimeoutError):
            while True:
                events.append(decode((await sub.next_msg(timeout=1.0)).data, AlertEvent))
        return events
    finally:
        await nc.close()


@pytest.mark.slow
async def test_an_outage_raises_host_down_only_for_the_host_that_really_stopped(tmp_path: Path) -> None:
    server, nats = await private_nats(tmp_path / "nats", "evoutage")
    evaluator = EvaluatorService(
        EvaluatorConfig(
            nats=nats,
            rules=[str(shipped_host_down(tmp_path))],
            tick_interval=Duration(0.2),
            watch_interval=Duration(0),
        )
    )
    await evaluator.start()
    # "steady" is a real agent (1 s interval): it buffers during the outage and replays.
    steady = Agent(AgentConfig(nats=nats, interval=Duration(1), hostname="steady"))
    stop_gone = asyncio.Event()
    gone = asyncio.create_task(publish_until(nats, "gone", stop_gone))
    events: list[AlertEvent] = []
    try:
        await steady.start()
        await wait_until(
            lambda: evaluator.engine.series_count("HostDown") == 2, "both hosts seen", timeout=20
        )
        await wait_until(
            lambda: counters(steady)["agent.batches_sent"] >= 2, "steady's first batches", timeout=20
        )
        stop_gone.set()  # "gone" dies as NATS goes down
        await gone
        await asyncio.to_thread(server.stop)  # by its PID
        await asyncio.sleep(OUTAGE)
        assert len(steady.outbox) >= OUTAGE - 2  # buffered, not lost
        assert evaluator.engine.blind  # absence_suspended: 1
        up_at = time.time()
        server = await asyncio.to_thread(NatsServer(tmp_path / "nats", port=server.port).start)
        await wait_until(lambda: len(steady.outbox) == 0, "steady's replay", timeout=30)
        await wait_until(lambda: not evaluator.engine.blind, "absence judged again", timeout=30)
        # "gone" fires `for` after the evaluator sees again; wait a little past that for any
        # false firing to show up too.
        await wait_until(
            lambda: (
                value(evaluator.registry, "signalfire_evaluator_alert_events_total", status="firing") >= 1
            ),
            "gone fires",
            30,
        )
        await asyncio.sleep(2 * FOR)
        assert counters(steady)["agent.batches_dropped"] == 0
    finally:
        stop_gone.set()
        with contextlib.suppress(Exception):
            await gone
        await steady.stop()
        await evaluator.stop()
        try:
            events = await alert_events(nats)
        finally:
            await asyncio.to_thread(server.stop)

    firing = [e for e in events if e.rule == "HostDown" and e.status == "firing"]
    print(
        f"\nHostDown firing after a {OUTAGE:g} s outage: {[(e.host, round(e.value or 0, 1)) for e in firing]}"
    )
    assert [e.host for e in firing] == ["gone"], "a host whose data was replayed without a gap fired"
    # Judged from when the evaluator saw again, not from the start of the outage.
    assert firing[0].starts_at >= up_at + FOR - 0.5
    assert firing[0].value is not None and firing[0].value >= OUTAGE + FOR - 1

"""An evaluator whose connection drops (the NATS node it was on died) and comes back: what the
bus stored meanwhile reached no core subscription of it, and is read back from the metrics
stream and judged; what it had judged live is not judged again. Real NATS, the evaluator's
connection through a TCP proxy the test cuts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorConfig
from signalfire.events import Event, EventBatch, MetricBatch, Sample, encode
from tests.faults.support import alert_events, eventually
from tests.support.evaluator import running_evaluator
from tests.support.metrics import value
from tests.support.tcpproxy import TcpProxy

RULES = """\
rules:
  - {name: Burst, kind: event_count, event: auth.login_failed, window: 1m, condition: "> 2",
     severity: high}
  - {name: BurstTwice, kind: event_count, event: auth.login_failed, window: 1m, condition: "> 3",
     severity: high}
  - {name: Spike, metric: spike, condition: "> 90", severity: high}
  - {name: Flip, metric: flip, condition: "> 90", resolve: "< 50", severity: high}
"""


async def test_what_the_bus_stored_while_the_evaluator_was_disconnected_is_judged_once(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    subjects = nats_config.subjects
    host, port = nats_config.url.removeprefix("nats://").rsplit(":", 1)
    proxy = await TcpProxy(host, int(port)).start()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = EvaluatorConfig(
        nats=msgspec.structs.replace(nats_config, url=proxy.url),
        rules=[str(rules)],
        tick_interval=Duration(0.1),
        watch_interval=Duration(0),
    )

    async def logins(count: int) -> None:
        events = [Event(type="auth.login_failed", time=time.time()) for _ in range(count)]
        await js.publish(
            subjects.events("cu-web"), encode(EventBatch(host="cu-web", time=time.time(), events=events))
        )

    async def sample(on: str, metric: str, level: float) -> None:
        batch = MetricBatch(host=on, time=time.time(), samples=[Sample(name=metric, value=level)])
        await js.publish(subjects.metrics(on), encode(batch))

    try:
        async with running_evaluator(config) as evaluator:
            judged = evaluator.registry

            def batches(kind: str) -> float:
                return value(judged, "signalfire_evaluator_batches_total", kind=kind)

            # Judged live, moments before the connection drops (inside the read-back's margin):
            # two failed logins, and a value that fires and one that resolves.
            await logins(2)
            await sample("cu-flip", "flip", 95.0)
            await sample("cu-flip", "flip", 10.0)
            await eventually(lambda: batches("events") == 1 and batches("metrics") == 2, "live batches", 5)

            proxy.cut()
            await eventually(lambda: not evaluator._nc.is_connected, "the evaluator disconnected", 5)  # type: ignore[union-attr]
            await logins(1)  # the third failed login: Burst's condition holds with it
            await sample("cu-spike", "spike", 99.0)  # the host's only sample: it fires or never
            await asyncio.sleep(0.3)
            proxy.restore()

            async def fired() -> bool:
                rules = {(e.rule, e.host, e.status) for e in await alert_events(js, nats_config)}
                return {("Burst", "cu-web", "firing"), ("Spike", "cu-spike", "firing")} <= rules

            await eventually(fired, "the alerts of what was stored while disconnected", 15)
            await asyncio.sleep(1.0)  # room for a repeat to show up
            events = [(e.rule, e.host, e.status) for e in await alert_events(js, nats_config)]
            assert sorted(events) == [
                ("Burst", "cu-web", "firing"),
                ("Flip", "cu-flip", "firing"),
                ("Flip", "cu-flip", "resolved"),
                ("Spike", "cu-spike", "firing"),
            ]  # BurstTwice: 3 logins, not 5 (the live ones were not counted again); Flip once
            assert value(judged, "signalfire_evaluator_replayed_batches_total", mode="missed") == 2
    finally:
        await proxy.stop()

"""What time alone decides, with a real nats-server and the real clock: a window alert
resolves once its samples stop, and an ``absent`` alert after a restart reports the whole
silence (the last-seen time comes back from the metrics stream)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorConfig, EvaluatorService
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode
from tests.support.evaluator import running_evaluator
from tests.support.polling import wait_until

HOST = "api-1"

RULES = """\
rules:
  - name: ErrorRate
    kind: ratio
    numerator: http.errors
    denominator: http.requests
    condition: "> 0.1"
    window: 1s
    severity: high
  - {name: Silent, kind: absent, for: 2s, severity: high}
"""


@contextlib.asynccontextmanager
async def running(tmp_path: Path, nats_config: NatsConfig) -> AsyncIterator[EvaluatorService]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = EvaluatorConfig(
        nats=nats_config, rules=[str(rules)], tick_interval=Duration(0.05), watch_interval=Duration(0)
    )
    async with running_evaluator(config) as service:
        yield service


async def send(nc, nats_config: NatsConfig, **values: float) -> float:
    samples = [Sample(name=name.replace("_", "."), value=value) for name, value in values.items()]
    await nc.publish(
        nats_config.subjects.metrics(HOST), encode(MetricBatch(host=HOST, time=0.0, samples=samples))
    )
    await nc.flush()
    return time.time()


async def next_event(sub, rule: str) -> AlertEvent:
    while True:
        event = decode((await sub.next_msg(timeout=15)).data, AlertEvent)
        if event.rule == rule:
            return event


async def test_an_error_rate_alert_resolves_once_its_samples_stop(nc, nats_config, tmp_path):
    sub = await nc.jetstream().subscribe(nats_config.subjects.alerts(HOST), ordered_consumer=True)
    async with running(tmp_path, nats_config):
        await send(nc, nats_config, http_errors=5.0, http_requests=10.0)
        firing = await next_event(sub, "ErrorRate")
        assert firing.status == "firing"
        before_last = time.time()
        await send(nc, nats_config, http_errors=5.0, http_requests=10.0)
        # Nothing more arrives: the 1 s window empties and the alert resolves on the timer,
        # once the last sample (which arrived after `before_last`) has left the window.
        resolved = await next_event(sub, "ErrorRate")
        assert (resolved.status, resolved.id, resolved.value) == ("resolved", firing.id, 0.5)
        assert resolved.ends_at is not None and resolved.ends_at >= before_last + 1.0


async def test_after_a_restart_an_absent_alert_reports_the_whole_silence(nc, nats_config, tmp_path):
    sub = await nc.jetstream().subscribe(nats_config.subjects.alerts(HOST), ordered_consumer=True)
    async with running(tmp_path, nats_config) as service:
        last = await send(nc, nats_config, cpu=1.0)
        await wait_until(lambda: service.engine.series_count("Silent") == 1, "the host watched", timeout=20)
        await asyncio.sleep(0.2)  # its state is stored
    await asyncio.sleep(1.5)  # the host stays silent while no evaluator runs ...
    restarted = time.time()
    async with running(tmp_path, nats_config):
        firing = await next_event(sub, "Silent")
    assert firing.status == "firing" and firing.value is not None
    # ... and the alert counts that too: the silence since its last batch, not since the
    # restart (which alone would say about 2 s).
    assert firing.value >= firing.time - last - 0.2
    assert firing.value >= (restarted - last) + 2.0 - 0.2

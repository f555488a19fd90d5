"""kill -9 of a real ``signalfire evaluator`` process while alerts are pending and firing:
the next process neither repeats nor misses an event."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from devstack import ServiceProcess

from signalfire.bus import NatsConfig, request_json
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode

RULES = """\
rules:
  - {name: Now, metric: temp, condition: "> 50", severity: high}
  - {name: Later, metric: load, condition: "> 5", for: 3s, severity: high}
"""


def evaluator(tmp_path: Path, nats_config: NatsConfig, name: str) -> ServiceProcess:
    env = {
        **os.environ,
        "SF_NATS_URL": nats_config.url,
        "SF_NATS_PREFIX": nats_config.prefix,
        "SF_RULES": str(tmp_path / "rules.yaml"),
        "SF_TICK_INTERVAL": "0.05",
    }
    return ServiceProcess(name, ["evaluator"], env, tmp_path).start()


async def wait_ready(nc, nats_config: NatsConfig, proc: ServiceProcess) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await request_json(nc, nats_config.subjects.control("evaluator", "rules"), timeout=0.5)
            return
        except (LookupError, TimeoutError):
            assert proc.alive(), proc.log_path.read_text()
            assert time.monotonic() < deadline, "the evaluator did not start"
            await asyncio.sleep(0.1)


async def send(nc, nats_config: NatsConfig, name: str, value: float) -> None:
    batch = MetricBatch(host="h1", time=1.0, samples=[Sample(name=name, value=value)])
    await nc.publish(nats_config.subjects.metrics("h1"), encode(batch))
    await nc.flush()


@pytest.mark.slow
async def test_kill_9_while_pending_and_firing_neither_repeats_nor_misses(nc, nats_config, tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES)
    sub = await nc.jetstream().subscribe(nats_config.subjects.all_alerts, ordered_consumer=True)
    first = evaluator(tmp_path, nats_config, "evaluator-1")
    try:
        await wait_ready(nc, nats_config, first)
        await send(nc, nats_config, "temp", 60)  # Now fires at once
        await send(nc, nats_config, "load", 9)  # Later is pending for 3s
        fired = decode((await sub.next_msg(timeout=10)).data, AlertEvent)
        assert (fired.rule, fired.status) == ("Now", "firing")
        described = await request_json(nc, nats_config.subjects.control("evaluator", "rules"))
        later = next(r for r in described["rules"] if r["name"] == "Later")
        assert [a["status"] for a in later["alerts"]] == ["pending"]
        await asyncio.sleep(0.2)  # the state write follows the publish
    finally:
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)

    second = evaluator(tmp_path, nats_config, "evaluator-2")
    try:
        await wait_ready(nc, nats_config, second)
        # Later's `for` kept counting across the restart: it fires without a new sample
        later_fired = decode((await sub.next_msg(timeout=10)).data, AlertEvent)
        assert (later_fired.rule, later_fired.status) == ("Later", "firing")
        await send(nc, nats_config, "temp", 70)  # still firing: no repeat
        await send(nc, nats_config, "temp", 10)
        resolved = decode((await sub.next_msg(timeout=10)).data, AlertEvent)
        assert (resolved.rule, resolved.status, resolved.id) == ("Now", "resolved", fired.id)
        await asyncio.sleep(0.3)
    finally:
        second.stop()
    info = await nc.jetstream().stream_info(nats_config.subjects.alerts_stream)
    assert info.state.messages == 3  # firing Now, firing Later, resolved Now: nothing twice

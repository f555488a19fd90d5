"""nats-server killed for 30 s under a real agent, gateway and evaluator: the agent's buffer
replays every batch once, the database has no gap and no duplicate, and nobody is told the
host was down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from devstack import REPO, NatsServer, ServiceProcess, free_port, start_gateway

from signalfire.bus import NatsConfig, connect, ensure_streams
from signalfire.events import MetricBatch, decode
from tests.faults.support import (
    alert_events,
    eventually,
    fetch_count,
    kill9,
    log_tail,
    report,
    service_env,
    stream_messages,
    wait_evaluator,
    write,
)

HOST = "fault-nats-outage"
OUTAGE = 30.0  # seconds, as in the issue: past nats-py's reconnect back-off and HostDown's `for`
INTERVAL = 1.0  # the agent's interval: 30 buffered batches instead of 6 at the default 5 s
SHIPPED_RULES = REPO / "rules" / "default.yaml"


def absence_rules() -> list[str]:
    """The shipped rules that fire on silence (HostDown): what an outage must not raise."""
    rules = yaml.safe_load(SHIPPED_RULES.read_text())["rules"]
    return [str(r["name"]) for r in rules if r.get("kind") == "absent"]


async def batches_in_stream(js: Any, nats: NatsConfig) -> list[MetricBatch]:
    subject = nats.subjects.metrics(HOST)
    messages = await stream_messages(js, nats.subjects.metrics_stream, subject)
    return [decode(data, MetricBatch) for s, data in messages if s == subject]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_nats_down_30s_agent_replays_without_gap_or_duplicate_and_no_false_alert(
    database_url: str, tmp_path: Path
) -> None:
    server = await asyncio.to_thread(NatsServer(tmp_path / "nats").start)
    # 64 MB: JetStream reserves a stream's max_bytes from the server's storage up front.
    nats = NatsConfig(url=server.url, prefix="faultnats", metrics_max_bytes=64 << 20)
    admin = await connect(nats, "fault-admin")
    await ensure_streams(admin.jetstream(), nats)
    env = service_env(nats, database_url)
    port = free_port()
    services: list[ServiceProcess] = []
    try:
        gateway = await asyncio.to_thread(
            start_gateway,
            nats.url,
            database_url,
            port,
            log_dir=tmp_path,
            token_file=tmp_path / "token",
            extra_env=env,
        )
        services.append(gateway)
        evaluator = ServiceProcess(
            "evaluator", ["evaluator"], {**env, "SF_RULES": str(SHIPPED_RULES)}, tmp_path
        )
        services.append(evaluator.start())
        await wait_evaluator(admin, nats, evaluator)
        agent_yaml = write(tmp_path / "agent.yaml", f"interval: {INTERVAL:g}s\nhostname: {HOST}\n")
        agent = ServiceProcess("agent", ["agent", "--config", str(agent_yaml)], env, tmp_path)
        services.append(agent.start())

        async def reporting() -> bool:
            return len(await batches_in_stream(admin.jetstream(), nats)) >= 3

        await eventually(reporting, "the agent's first batches", 30, *services)
        await admin.close()

        kill9_at = time.time()
        await asyncio.to_thread(kill9, server)  # a crash: no clean shutdown of JetStream
        await asyncio.sleep(OUTAGE)
        server = await asyncio.to_thread(NatsServer(tmp_path / "nats", port=server.port).start)
        up_at = time.time()
        admin = await connect(nats, "fault-admin")
        js = admin.jetstream()

        async def replayed() -> bool:
            batches = await batches_in_stream(js, nats)
            return bool(batches) and max(b.time for b in batches) > up_at + 3 * INTERVAL

        await eventually(replayed, "the agent to replay its buffer and report live again", 60, *services)
        # HostDown's decision falls while NATS is down; give the evaluator time to publish it
        # (it would be published as soon as it reconnects) before counting.
        await asyncio.sleep(8)
        batches = await batches_in_stream(js, nats)
        published = sum(len(b.samples) for b in batches)

        async def stored() -> int:
            return await fetch_count(
                database_url,
                "SELECT count(*) FROM samples s JOIN series ON series.id = s.series_id "
                "WHERE series.host = $1 AND s.time <= to_timestamp($2)",
                HOST,
                max(b.time for b in batches),
            )

        async def all_stored() -> bool:
            return await stored() >= published

        try:
            await eventually(all_stored, "every published sample to be stored", 30, gateway)
        except AssertionError as exc:
            print(exc)
        rows = await stored()
        distinct = await fetch_count(
            database_url,
            "SELECT count(DISTINCT (s.series_id, s.time)) FROM samples s "
            "JOIN series ON series.id = s.series_id WHERE series.host = $1 AND s.time <= to_timestamp($2)",
            HOST,
            max(b.time for b in batches),
        )
        events = await alert_events(js, nats)
    finally:
        for service in reversed(services):
            service.stop()
        await admin.close()
        await asyncio.to_thread(server.stop)

    times = [b.time for b in batches]
    ticks = [round(t / INTERVAL) for t in times]
    missing = sorted(set(range(ticks[0], ticks[-1] + 1)) - set(ticks))
    during = [t for t in times if kill9_at < t < up_at]
    false_alerts = [e for e in events if e.rule in absence_rules()]
    report(
        "nats-outage",
        outage_s=f"{up_at - kill9_at:.1f}",
        batches=len(batches),
        batches_during_outage=len(during),
        missing_ticks=len(missing),
        duplicate_batches=len(times) - len(set(times)),
        published_samples=published,
        stored=rows,
        distinct=distinct,
        alert_events=len(events),
        false_alerts=len(false_alerts),
    )
    assert missing == [], f"ticks with no batch: {missing[:10]}"
    assert len(set(times)) == len(times), "a batch is in the stream twice"
    assert len(during) >= OUTAGE / INTERVAL - 2, "the outage's batches were not buffered"
    assert rows == distinct == published, f"published {published}, stored {rows}\n{log_tail(gateway)}"
    assert false_alerts == [], [(e.rule, e.status, e.host, e.time) for e in false_alerts]

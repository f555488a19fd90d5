"""Two partitioned evaluator replicas; the one that judges a host is killed with SIGKILL in the
middle of a window. The survivor reads the partition's recent history back from the metrics
stream, so:

- a windowed rule (``avg`` over 20 s) fires and resolves exactly once, each at the moment one
  replica judging every sample would have (computed from what the test published), not a
  window early or late;
- a sample published while nobody holds the partition, which alone crosses its threshold,
  still fires (and the next sample resolves it), once.

Without the history the new owner's window would hold only the samples after its takeover,
all hot, and fire seconds early; and the spike would never be judged."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from devstack import ServiceProcess

from signalfire.bus import NatsConfig
from signalfire.evaluator.partitions import host_partition
from signalfire.events import MetricBatch, Sample, encode
from tests.faults.support import (
    alert_events,
    eventually,
    kill9,
    log_tail,
    partition_holders,
    partitions_shared,
    report,
    start_evaluator_replica,
    write,
)
from tests.support.tasks import cancelled

HOSTS = [f"handover-{i}" for i in range(8)]
HOST = HOSTS[0]
PARTITIONS = 16
FAILOVER_AFTER = 4.0
WINDOW = 20.0
#: How far the new owner's firing and resolve may be from a single replica's: a sample
#: (0.25 s) either side of the window's edge, and the stream's clock against the evaluator's.
TOLERANCE = 1.0
RULES = f"""\
rules:
  - name: WindowHot
    metric: fault.temp
    aggregate: avg
    window: {WINDOW:g}s
    condition: "> 50"
    resolve: "<= 50"
    severity: high
  - name: GapSpike
    metric: fault.spike
    condition: "> 90"
    severity: high
"""


def expected_times(log: list[tuple[float, float]], after: float) -> tuple[float, float]:
    """When one replica that judged every sample of ``log`` ((publish time, value), in order)
    would fire ``WindowHot`` (the first sample after ``after`` whose window average is above
    50) and resolve it (the first one after that whose average is 50 or less)."""
    fired: float | None = None
    for i, (t, _) in enumerate(log):
        window = [v for s, v in log[: i + 1] if s > t - WINDOW]
        average = sum(window) / len(window)
        if fired is None and t > after and average > 50:
            fired = t
        elif fired is not None and average <= 50:
            return fired, t
    raise AssertionError(f"the published samples never fire and resolve WindowHot (fired: {fired})")


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_new_owner_fires_and_resolves_a_window_on_time_and_judges_the_ownerless_gap(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    leases = await js.key_value(nats_config.subjects.bucket("evaluator_leases"))
    rules = write(tmp_path / "rules.yaml", RULES)
    partition = host_partition(HOST, PARTITIONS)
    replicas: dict[str, ServiceProcess] = {}
    level = {host: 30.0 for host in HOSTS}
    spike = {host: 0.0 for host in HOSTS}
    published: list[tuple[float, float]] = []  # HOST's fault.temp: (publish time, value)

    async def start(replica: str) -> None:
        await start_evaluator_replica(
            nc,
            nats_config,
            rules,
            replica,
            replicas,
            name=f"evaluator-replay-{replica}",
            partitions=PARTITIONS,
            failover_after=FAILOVER_AFTER,
        )

    async def balanced() -> bool:
        return await partitions_shared(leases, PARTITIONS)

    async def publish(host: str) -> None:
        now = time.time()
        samples = [
            Sample(name="fault.temp", value=level[host]),
            Sample(name="fault.spike", value=spike[host]),
        ]
        batch = MetricBatch(host=host, time=now, samples=samples)
        await js.publish(nats_config.subjects.metrics(host), encode(batch), timeout=2)
        if host == HOST:
            published.append((now, level[host]))

    async def publish_every_quarter_second() -> None:
        while True:
            for host in HOSTS:
                with contextlib.suppress(Exception):
                    await publish(host)
            await asyncio.sleep(0.25)

    await start("a")
    await start("b")
    publisher = asyncio.create_task(publish_every_quarter_second())
    try:
        await eventually(balanced, "both replicas to hold their share", 20, *replicas.values())
        await asyncio.sleep(12)  # 12 s of cold samples in the window
        hot_from = time.time()
        level[HOST] = 70.0  # the 20 s average crosses 50 once hot samples outnumber cold ones
        await asyncio.sleep(3)  # mid-window: 3 s hot, the average at about 40
        owner = (await partition_holders(leases))[partition]
        survivor = "b" if owner == "a" else "a"
        kill9(replicas[owner])
        killed = time.monotonic()
        await asyncio.sleep(0.5)
        # Nobody holds the partition now (the lease lapses 0.6 x failover_after after the
        # last renewal): one sample that alone crosses GapSpike's threshold, then back to 0.
        spike[HOST] = 99.0
        await publish(HOST)
        spike[HOST] = 0.0
        spike_sent = time.monotonic() - killed

        async def taken_over() -> bool:
            return (await partition_holders(leases)).get(partition) == survivor

        what = f"replica {survivor} to take partition {partition}"
        await eventually(taken_over, what, 20, replicas[survivor])
        takeover = time.monotonic() - killed
        assert spike_sent < takeover, "the spike was not sent while the partition had no owner"

        async def events_of(rule: str, status: str) -> int:
            return sum(
                1 for e in await alert_events(js, nats_config) if e.rule == rule and e.status == status
            )

        async def window_fired() -> bool:
            return await events_of("WindowHot", "firing") >= 1

        await eventually(window_fired, "WindowHot to fire on the survivor", 30, replicas[survivor])
        await asyncio.sleep(max(0.0, hot_from + WINDOW + 2 - time.time()))  # the window all hot
        level[HOST] = 30.0

        async def window_resolved() -> bool:
            return await events_of("WindowHot", "resolved") >= 1

        await eventually(window_resolved, "WindowHot to resolve", 40, replicas[survivor])
        await asyncio.sleep(2)  # room for a stray repeat to show up
        events = await alert_events(js, nats_config)
        survivor_log = log_tail(replicas[survivor], chars=4000)
    finally:
        await cancelled(publisher)
        for process in replicas.values():
            if process.alive():
                process.stop()
    fire_at, resolve_at = expected_times(published, hot_from)
    window = [e for e in events if e.rule == "WindowHot"]
    gap = [e for e in events if e.rule == "GapSpike"]
    firing = [e for e in window if e.status == "firing"]
    resolved = [e for e in window if e.status == "resolved"]
    report(
        "evaluator-handover-replay",
        takeover_s=f"{takeover:.1f}",
        window_firing=len(firing),
        window_resolved=len(resolved),
        fired_off_by_s=f"{firing[0].starts_at - fire_at:+.2f}" if firing else "-",
        resolved_off_by_s=f"{(resolved[0].ends_at or 0) - resolve_at:+.2f}" if resolved else "-",
        gap_events=",".join(e.status for e in gap),
    )
    assert [e.host for e in events] == [HOST] * len(events), "an alert for a host that never ran hot"
    assert len(firing) == 1 and len(resolved) == 1, [(e.status, e.id) for e in window]
    assert firing[0].id == resolved[0].id
    # The survivor, not the dead owner, fired it (the takeover came before the window crossed).
    assert killed + takeover < time.monotonic() and takeover < fire_at - hot_from - 3, survivor_log
    assert abs(firing[0].starts_at - fire_at) <= TOLERANCE, (firing[0].starts_at - fire_at, survivor_log)
    assert resolved[0].ends_at is not None and abs(resolved[0].ends_at - resolve_at) <= TOLERANCE
    assert [e.status for e in gap] == ["firing", "resolved"], survivor_log
    assert gap[0].value == 99.0 and gap[0].id == gap[1].id
    assert "partitions taken" in survivor_log and "judged=" in survivor_log

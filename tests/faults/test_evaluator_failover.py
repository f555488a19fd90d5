"""Two partitioned evaluator replicas: kill -9 the one that judges a host while its alert is
pending, then (after the killed replica came back and the partitions were rebalanced) the
one that judges it while it fires. The alerts stream holds exactly one firing and one
resolved event, the host's partition is judged again within ``failover_after`` each time,
and no other host alerts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from devstack import ServiceProcess

from signalfire.bus import NatsConfig
from signalfire.evaluator.partitions import host_partition
from signalfire.evaluator.service import StoredAlert
from signalfire.evaluator.state import fingerprint
from signalfire.events import decode
from tests.faults.support import (
    alert_events,
    eventually,
    kill9,
    partition_holders,
    partitions_shared,
    publish_every_quarter_second,
    report,
    start_evaluator_replica,
    write,
)

HOSTS = [f"failover-{i}" for i in range(12)]
HOST = HOSTS[0]
PARTITIONS = 16
FAILOVER_AFTER = 4.0
FOR = 3.0
RULES = f"""\
rules:
  - name: FailoverHot
    metric: fault.temp
    condition: "> 50"
    resolve: "< 40"
    for: {FOR:g}s
    severity: high
"""


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_kill_9_of_the_judging_replica_sends_one_firing_and_one_resolved(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    leases = await js.key_value(nats_config.subjects.bucket("evaluator_leases"))
    states = await js.key_value(nats_config.subjects.bucket("alert_state"))
    rules = write(tmp_path / "rules.yaml", RULES)
    partition = host_partition(HOST, PARTITIONS)
    fp = fingerprint("FailoverHot", HOST, {})
    replicas: dict[str, ServiceProcess] = {}
    generation = 0

    async def start(replica: str) -> None:
        nonlocal generation
        generation += 1
        await start_evaluator_replica(
            nc,
            nats_config,
            rules,
            replica,
            replicas,
            name=f"evaluator-{replica}-{generation}",
            partitions=PARTITIONS,
            failover_after=FAILOVER_AFTER,
        )

    async def balanced() -> bool:
        return await partitions_shared(leases, PARTITIONS)

    async def status() -> str:
        try:
            entry = await states.get(fp)
        except Exception:
            return "none"
        return decode(entry.value or b"", StoredAlert).state.status

    async def events_of(state: str) -> int:
        return sum(1 for e in await alert_events(js, nats_config) if e.status == state and e.host == HOST)

    async def kill_owner_and_time_takeover() -> float:
        # A partition handed between the replicas (a lease that lapsed on a loaded machine, then
        # rebalanced) has no holder between the release and the claim: kill its next holder.
        holders: dict[str, str] = {}

        async def held() -> bool:
            nonlocal holders
            holders = await partition_holders(leases)
            return partition in holders

        await eventually(held, f"partition {partition} to have a holder", 10, *replicas.values())
        owner = holders[partition]
        survivor = "b" if owner == "a" else "a"
        kill9(replicas[owner])
        killed = time.monotonic()

        async def taken_over() -> bool:
            return (await partition_holders(leases)).get(partition) == survivor

        what = f"replica {survivor} to take partition {partition}"
        await eventually(taken_over, what, 20, replicas[survivor])
        return time.monotonic() - killed

    level = {host: 30.0 for host in HOSTS}
    await start("a")
    await start("b")
    publisher = asyncio.create_task(publish_every_quarter_second(js, nats_config, level))
    try:
        await eventually(balanced, "both replicas to hold their share", 20, *replicas.values())
        level[HOST] = 60.0

        async def pending() -> bool:
            return await status() == "pending"

        await eventually(pending, "FailoverHot to be pending", 10, *replicas.values())
        await asyncio.sleep(1)  # a second into `for`
        first_takeover = await kill_owner_and_time_takeover()  # 1: while pending

        async def fired() -> bool:
            return await events_of("firing") >= 1

        await eventually(fired, "FailoverHot to fire on the other replica", 20)
        # The killed replica comes back (a replica added): the partitions are shared again.
        dead = next(r for r, p in replicas.items() if not p.alive())
        await start(dead)
        await eventually(balanced, "the partitions to be rebalanced", 20, *replicas.values())
        await asyncio.sleep(1)  # firing a while on its (possibly new) owner
        assert await status() == "firing"
        second_takeover = await kill_owner_and_time_takeover()  # 2: while firing
        level[HOST] = 30.0

        async def resolved() -> bool:
            return await events_of("resolved") >= 1

        await eventually(resolved, "FailoverHot to resolve after the second kill", 20)
        await asyncio.sleep(2)  # room for a stray repeat to show up
        events = await alert_events(js, nats_config)
    finally:
        publisher.cancel()
        for process in replicas.values():
            if process.alive():
                process.stop()
    firing = [e for e in events if e.status == "firing"]
    resolved_events = [e for e in events if e.status == "resolved"]
    others = [e for e in events if e.host != HOST]
    report(
        "evaluator-failover",
        kills=2,
        alert_events=len(events),
        firing=len(firing),
        resolved=len(resolved_events),
        other_hosts=len(others),
        takeover_pending_s=f"{first_takeover:.1f}",
        takeover_firing_s=f"{second_takeover:.1f}",
    )
    assert len(firing) == 1 and len(resolved_events) == 1, [(e.host, e.status, e.id) for e in events]
    assert firing[0].id == resolved_events[0].id, "the resolve names another alert than the firing"
    assert others == [], "an alert for a host that never ran hot"
    # failover_after plus the one second bench/scale.py allows the detection delay: a takeover
    # measured 4.85 s against 4 s once in a full `make test` (the lease lapses, then the new
    # owner loads the partition's states).
    assert first_takeover <= FAILOVER_AFTER + 1 and second_takeover <= FAILOVER_AFTER + 1

"""kill -9 of the evaluator while an alert is pending, then while it is firing: the alerts
stream holds exactly one firing and one resolved event. Then a third kill while it fires
again, and a person resolves it (the dashboard's resolve, as the gateway publishes it) while
no evaluator runs: the restarted one resolves it, by that person's hand."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from devstack import ServiceProcess

from signalfire.bus import NatsConfig, connect
from signalfire.events import AlertAction, encode
from tests.faults.support import (
    alert_events,
    as_identity,
    eventually,
    kill9,
    publish_every_quarter_second,
    report,
    rule_status,
    service_env,
    wait_evaluator,
    write,
)

HOST = "fault-eval"
FOR = 4.0
RULES = f"""\
rules:
  - name: FaultHot
    metric: fault.temp
    condition: "> 50"
    resolve: "< 40"
    for: {FOR:g}s
    severity: high
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_evaluator_kill_9_while_pending_and_while_firing_sends_one_firing_and_one_resolved(
    nc: Any, nats_config: NatsConfig, tmp_path: Path
) -> None:
    js = nc.jetstream()
    # A fast tick so `for` expiry is seen within 0.1 s (the default 1 s would only blur timings).
    env = service_env(
        nats_config,
        identity="evaluator",
        SF_RULES=str(write(tmp_path / "rules.yaml", RULES)),
        SF_TICK_INTERVAL="0.1s",
    )
    generation = 0

    async def start() -> ServiceProcess:
        nonlocal generation
        generation += 1
        evaluator = ServiceProcess(f"evaluator-{generation}", ["evaluator"], env, tmp_path).start()
        await wait_evaluator(nc, nats_config, evaluator)
        return evaluator

    async def status() -> list[str]:
        return await rule_status(nc, nats_config, "FaultHot")

    async def events_of(state: str) -> int:
        return sum(1 for e in await alert_events(js, nats_config) if e.status == state)

    level = {HOST: 60.0}
    # Alert actions may be published by the gateway's identity alone (signalfire.buspolicy).
    gateway = await connect(as_identity(nats_config, "gateway"), "fault-actions")
    evaluator = await start()
    publisher = asyncio.create_task(publish_every_quarter_second(js, nats_config, level))
    try:

        async def pending() -> bool:
            return await status() == ["pending"]

        await eventually(pending, "FaultHot to be pending", 10, evaluator)
        pending_since = time.time()
        await asyncio.sleep(1)  # a second into `for`, its state written to the KV bucket
        assert await status() == ["pending"]
        kill9(evaluator)  # 1: while pending
        evaluator = await start()

        async def fired() -> bool:
            return await events_of("firing") >= 1

        await eventually(fired, "FaultHot to fire after the restart", 20, evaluator)
        fired_after = time.time() - pending_since
        await asyncio.sleep(1)  # firing a while (samples still above the threshold)
        assert await status() == ["firing"]
        kill9(evaluator)  # 2: while firing
        evaluator = await start()
        level[HOST] = 30.0  # the condition clears

        async def resolved() -> bool:
            return await events_of("resolved") >= 1

        await eventually(resolved, "FaultHot to resolve after the second restart", 20, evaluator)
        await asyncio.sleep(2)  # room for a stray repeat to show up
        first = await alert_events(js, nats_config)

        level[HOST] = 60.0  # a second incident

        async def fired_again() -> bool:
            return await events_of("firing") >= 2

        await eventually(fired_again, "FaultHot to fire again", 20, evaluator)
        [again] = [e for e in await alert_events(js, nats_config) if e.status == "firing" and e not in first]
        kill9(evaluator)  # 3: while firing, and the resolve comes while nobody judges
        action = AlertAction(
            alert_id=again.id,
            action="resolve",
            actor="fault-operator",
            time=time.time(),
            fingerprint=again.fingerprint,
            id=str(uuid.uuid4()),
        )
        await gateway.jetstream().publish(
            nats_config.subjects.actions, encode(action), headers={"Nats-Msg-Id": action.id}, timeout=5
        )
        evaluator = await start()

        async def resolved_by_hand() -> bool:
            return await events_of("resolved") >= 2

        await eventually(resolved_by_hand, "the resolve made while no evaluator ran", 20, evaluator)
        level[HOST] = 30.0  # handled: no third instance
        await asyncio.sleep(2)
        events = await alert_events(js, nats_config)
    finally:
        publisher.cancel()
        evaluator.stop()
        await gateway.close()
    firing = [e for e in events if e.status == "firing"]
    resolved_events = [e for e in events if e.status == "resolved"]
    others = [e for e in events if e.rule != "FaultHot"]
    report(
        "evaluator-kill-9",
        kills=3,
        alert_events=len(events),
        firing=len(firing),
        resolved=len(resolved_events),
        resolved_by_hand=sum(1 for e in resolved_events if "resolved_by" in e.annotations),
        other_alerts=len(others),
        pending_to_firing_s=f"{fired_after:.1f}",
    )
    assert len(firing) == 2 and len(resolved_events) == 2, [(e.rule, e.status, e.id) for e in events]
    assert [e.id for e in firing] == [e.id for e in resolved_events], "a resolve names another alert"
    by_hand = [e.annotations.get("resolved_by") for e in resolved_events]
    assert by_hand == [None, "fault-operator"], "the resolve made while no evaluator ran was lost"
    assert others == [], "an alert nobody asked for"

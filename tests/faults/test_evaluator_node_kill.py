"""kill -9 of the NATS node the evaluator is connected to, in a three-node cluster, while a
host reports a burst of failed logins through another node: the batches the stream stored
while the evaluator reconnected reached none of its core subscriptions; read back after the
reconnect, every one of them is counted, once (docs/faults.md scenario 13, docs/rules.md
"Absence across a NATS outage")."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from devstack import ServiceProcess

from signalfire.bus import connect, ensure_streams
from signalfire.events import Event, EventBatch, encode
from tests.faults.support import (
    alert_events,
    clients_on,
    eventually,
    kill9,
    log_tail,
    move_leaders_off,
    report,
    secured_cluster,
    service_env,
    wait_evaluator,
    write,
)

#: Event batches of one failed login each, one every ``EVERY`` seconds; the node is killed
#: after ``KILL_AFTER`` of them: a reconnect of 0.1-0.5 s misses some tens.
BATCHES = 300
EVERY = 0.01
KILL_AFTER = 100
RULES = f"""\
rules:
  - {{name: EveryLogin, kind: event_count, event: auth.login_failed, window: 5m,
     condition: "> {BATCHES - 1}", severity: high}}
  - {{name: LoginsCountedTwice, kind: event_count, event: auth.login_failed, window: 5m,
     condition: "> {BATCHES}", severity: high}}
"""


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_batches_stored_while_the_evaluator_reconnected_after_its_node_died_are_judged_once(
    tmp_path: Path,
) -> None:
    cluster, nats = await secured_cluster(tmp_path, "evkill", metrics_max_bytes=16 << 20)
    rules = write(tmp_path / "rules.yaml", RULES)
    env = service_env(
        nats, identity="evaluator", **cluster.env(), SF_RULES=str(rules), SF_TICK_INTERVAL="0.1s"
    )
    admin = await connect(nats, "fault-admin")
    evaluator: ServiceProcess | None = None
    publisher: Any = None
    try:
        js = admin.jetstream()
        await ensure_streams(js, nats)
        evaluator = ServiceProcess("evaluator", ["evaluator"], env, tmp_path).start()
        await wait_evaluator(admin, nats, evaluator)
        [victim] = [n for n in cluster.nodes if "signalfire-evaluator" in clients_on(n)]
        # the kill takes only the evaluator's connection away: the other nodes lead the metrics
        # and alerts streams and its state and leases buckets
        s = nats.subjects
        buckets = [f"KV_{s.bucket(b)}" for b in ("alert_state", "evaluator_leases")]
        await move_leaders_off(admin, victim.name, [s.metrics_stream, s.alerts_stream, *buckets])

        spared = next(n for n in cluster.nodes if n is not victim)
        publisher = await connect(msgspec.structs.replace(nats, url=spared.url, servers=[]), "fault-agent")
        agent = publisher.jetstream()
        subject = nats.subjects.events("evkill-web")
        killed_at = 0.0
        for n in range(BATCHES):
            if n == KILL_AFTER:
                kill9(victim)
                killed_at = time.monotonic()
            event = Event(type="auth.login_failed", time=time.time())
            batch = EventBatch(host="evkill-web", time=time.time(), events=[event])
            await agent.publish(subject, encode(batch), timeout=5)
            await asyncio.sleep(EVERY)

        async def fired() -> bool:
            try:
                return any(e.rule == "EveryLogin" for e in await alert_events(js, nats))
            except Exception:  # the alerts stream electing
                return False

        try:
            await eventually(fired, f"all {BATCHES} logins to be counted", 40, evaluator)
        except AssertionError:
            alerted_after = None  # reported before the assertion below
        else:
            alerted_after = round(time.monotonic() - killed_at, 1)
        await asyncio.sleep(1.0)  # room for a double count to fire
        events = [(e.rule, e.status) for e in await alert_events(js, nats)]
    finally:
        for client in (publisher, admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        if evaluator is not None:
            evaluator.stop()
        await asyncio.to_thread(cluster.stop)
    assert evaluator is not None
    caught = re.findall(
        r"judged what the bus stored.* read=(\d+) judged=(\d+)", evaluator.log_path.read_text()
    )
    report(
        "evaluator-node-kill",
        batches=BATCHES,
        killed=victim.name,
        alert_events=",".join(f"{r}:{s}" for r, s in events),
        read_back=caught[0][0] if caught else "-",
        judged_after_reconnect=caught[0][1] if caught else "-",
        alerted_after_kill_s=alerted_after,
    )
    assert alerted_after is not None, f"not every login was counted: {events}\n{log_tail(evaluator)}"
    assert events == [("EveryLogin", "firing")], log_tail(evaluator)
    assert caught and int(caught[0][1]) > 0, "the reconnect missed nothing: the scenario proved nothing"

"""Every evaluator replica frozen (SIGSTOP: alive to a supervisor, renewing nothing): the
notifiers' watch over the evaluator leases pages once about ``EvaluationStopped``; one of the
two notifier processes is killed with SIGKILL while it fires, and the other, alone, resolves
it once when the evaluators are thawed (SIGCONT) and renew or retake their leases.

Two partitioned ``signalfire evaluator`` replicas (4 partitions, ``failover_after`` 2 s) and
two ``signalfire notifier`` processes of one config file (as the ``notifier`` identity,
``evaluation_watch`` 3 s, one webhook channel to a loopback receiver, one route for
everything). Counted: the webhook posts of the rule (one firing, one resolved, the same alert
id), the alert events on the stream (exactly the firing and the resolve), and the seconds
from the freeze to the page and from the thaw to the resolve.

Self-contained: its own receiver, processes and nats-server (the scenario's, with the bus's
credentials: tests/faults/conftest.py). Only the processes started here are stopped, frozen,
thawed or killed, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devstack import ServiceProcess

from signalfire.bus import NatsConfig
from signalfire.subjects import SELF_HOST
from tests.faults.support import (
    alert_events,
    eventually,
    log_tail,
    notifier_nats_json,
    partitions_shared,
    report,
    start_evaluator_replica,
    write,
)
from tests.support.notifiers import kill9, notifier_process
from tests.support.webhook import Posted, WebhookReceiver

PARTITIONS = 4
FAILOVER_AFTER = 2.0
#: The notifier's ``evaluation_watch`` (60 s in production): longer than ``failover_after``,
#: so a handover between live replicas never pages; checked every 0.75 s (a quarter of it).
EVALUATION_WATCH = 3.0
#: As test_notifier_kill.py: the killed notifier's unacknowledged events and claims come back
#: to the survivor within seconds, not after production's 30 s.
ACK_WAIT = "2s"
#: What the page and the resolve may take beyond ``evaluation_watch`` and the thaw: a check's
#: interval, the delivery, and a loaded 2-core machine.
SLACK = 5.0
CHANNEL = "oncall"
#: A rule nothing ever makes fire (no metrics are published): the evaluators only judge.
RULE = "EvaluationStopped"
RULES = """\
rules:
  - name: StoppedProbe
    metric: fault.temp
    condition: "> 50"
    severity: high
"""
DECIDED_FIRING = "no evaluator judges these host partitions"
DECIDED_RESOLVED = "every host partition is judged again"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def notify_config(nats_config: NatsConfig, receiver: WebhookReceiver, path: Path) -> Path:
    nats = notifier_nats_json(nats_config)  # the notifier as its own identity, as `make up` runs it
    return write(
        path,
        f"""\
nats: {nats}
log_level: info
ack_wait: {ACK_WAIT}
evaluation_watch: {EVALUATION_WATCH:g}s
channels:
  {CHANNEL}: {{type: webhook, url: "{receiver.url(CHANNEL)}", timeout: 5s}}
routes:
  - channels: [{CHANNEL}]
""",
    )


def pages(receiver: WebhookReceiver, transition: str | None = None) -> list[Posted]:
    """The webhook posts about the watch's alert (``transition`` only, when given)."""
    return [
        p
        for p in receiver.posted(CHANNEL)
        if p.body["alert"]["rule"] == RULE and (transition is None or p.transition == transition)
    ]


def log_of(process: ServiceProcess) -> str:
    return process.log_path.read_text(errors="replace") if process.log_path.exists() else ""


def signal_each(processes: list[ServiceProcess], signum: signal.Signals) -> None:
    """Send ``signum`` to each of the processes this test started, by PID."""
    for process in processes:
        assert process.proc is not None
        os.kill(process.proc.pid, signum)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_every_evaluator_frozen_pages_once_and_resolves_once_with_a_notifier_killed(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    started = time.monotonic()
    js = nc.jetstream()
    leases = await js.key_value(nats_config.subjects.bucket("evaluator_leases"))
    rules = write(tmp_path / "rules.yaml", RULES)
    config = notify_config(nats_config, receiver, tmp_path / "notify.yaml")
    replicas: dict[str, ServiceProcess] = {}
    notifiers: list[ServiceProcess] = []
    frozen: list[ServiceProcess] = []
    paged_after = resolved_after = float("nan")
    killed: ServiceProcess | None = None
    try:
        for replica in ("a", "b"):
            await start_evaluator_replica(
                nc,
                nats_config,
                rules,
                replica,
                replicas,
                name=f"evaluator-{replica}",
                partitions=PARTITIONS,
                failover_after=FAILOVER_AFTER,
            )
        evaluators = list(replicas.values())

        async def shared() -> bool:
            return await partitions_shared(leases, PARTITIONS)

        await eventually(shared, "both replicas to judge their share", 20, *evaluators)
        # The notifiers start once the leases are there: they watch them from their first read.
        for i in (1, 2):
            notifiers.append(notifier_process(f"notifier-{i}", config, tmp_path).start())
        await eventually(
            lambda: all("notifier started" in log_of(n) for n in notifiers),
            "both notifiers to start",
            30,
            *notifiers,
        )

        # Judged: longer than evaluation_watch and nobody paged.
        await asyncio.sleep(EVALUATION_WATCH + 2)
        assert await shared(), "the replicas stopped sharing the partitions before the freeze"
        assert receiver.posted() == [], [(p.alert_id, p.transition) for p in receiver.posted()]
        assert all(n.alive() for n in notifiers), log_tail(*notifiers)

        # Every evaluator frozen: alive, holding its leases, renewing none.
        frozen = evaluators  # thawed in `finally` whatever happens from here
        signal_each(evaluators, signal.SIGSTOP)
        froze = time.monotonic()
        await eventually(
            lambda: bool(pages(receiver, "firing")),
            "the page about evaluation",
            EVALUATION_WATCH + 20,
            *notifiers,
        )
        paged = pages(receiver, "firing")[0]
        paged_after = paged.at - froze
        alert = paged.body["alert"]
        assert (alert["host"], alert["severity"]) == (SELF_HOST, "critical"), alert
        assert "00, 01, 02, 03, fleet" in alert["annotations"]["summary"], alert["annotations"]

        # While it fires: kill -9 the notifier that decided it; the other watches alone.
        await asyncio.sleep(1.0)  # the delivery recorded in the ledger
        deciders = [n for n in notifiers if DECIDED_FIRING in log_of(n)]
        assert len(deciders) == 1, f"{len(deciders)} notifiers decided the page\n{log_tail(*notifiers)}"
        killed = deciders[0]
        kill9(killed)
        survivor = next(n for n in notifiers if n is not killed)
        # The killed one's unacknowledged events and claims come back (ack_wait) and the
        # survivor goes on checking the frozen leases: no second page.
        await asyncio.sleep(float(ACK_WAIT.removesuffix("s")) + 1.5)
        assert [p.transition for p in pages(receiver)] == ["firing"], [
            (p.alert_id, p.transition) for p in pages(receiver)
        ]
        assert survivor.alive(), log_tail(survivor)

        # Thawed: the evaluators renew (or retake) their leases; the resolve, once.
        signal_each(evaluators, signal.SIGCONT)
        thawed = time.monotonic()
        await eventually(
            lambda: bool(pages(receiver, "resolved")), "the resolve", SLACK + 20, survivor, *evaluators
        )
        resolved_after = pages(receiver, "resolved")[0].at - thawed
        await asyncio.sleep(3.0)  # room for a stray repeat to show up
        posted = [(p.alert_id, p.transition) for p in pages(receiver)]
        others = [
            (p.body["alert"]["rule"], p.transition)
            for p in receiver.posted()
            if p.body["alert"]["rule"] != RULE
        ]
        events = [(e.id, e.status) for e in await alert_events(js, nats_config) if e.rule == RULE]
        other_events = [e for e in await alert_events(js, nats_config) if e.rule != RULE]
        survivor_decided = DECIDED_RESOLVED in log_of(survivor)
        alive = [p.name for p in (*evaluators, survivor) if p.alive()]
    finally:
        for process in frozen:  # a stopped process cannot be terminated cleanly (SIGCONT twice: harmless)
            with contextlib.suppress(ProcessLookupError):
                signal_each([process], signal.SIGCONT)
        for process in [*replicas.values(), *notifiers]:
            if process.alive():
                process.stop()

    report(
        "evaluation-stopped",
        evaluators_frozen=len(replicas),
        paged_after_s=f"{paged_after:.2f}",
        resolved_after_s=f"{resolved_after:.2f}",
        pages=sum(t == "firing" for _, t in posted),
        resolves=sum(t == "resolved" for _, t in posted),
        notifier_killed=int(killed is not None),
        killed=killed.name if killed is not None else "-",
        resolved_by_survivor=int(survivor_decided),
        stream_events=",".join(s for _, s in events) or "-",
        other_posts=len(others),
        alive=",".join(alive),
        seconds=f"{time.monotonic() - started:.0f}",
    )
    assert posted == [(paged.alert_id, "firing"), (paged.alert_id, "resolved")], posted
    assert events == [(paged.alert_id, "firing"), (paged.alert_id, "resolved")], events
    assert others == [] and other_events == [], (others, [(e.rule, e.status) for e in other_events])
    assert survivor_decided, f"the surviving notifier did not decide the resolve\n{log_tail(survivor)}"
    assert len(alive) == 3, f"exited: {alive}"
    # Not before evaluation_watch, less what the last renewal (a poll, 0.2 s) and the first
    # check that saw it (0.75 s) may precede the freeze by; within it and SLACK.
    assert EVALUATION_WATCH - 1.0 <= paged_after <= EVALUATION_WATCH + SLACK, (
        f"paged {paged_after:.1f}s after"
    )
    assert resolved_after <= SLACK, f"resolved {resolved_after:.1f}s after the thaw"

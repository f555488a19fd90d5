"""The notifier killed with SIGKILL twice while it delivers: once in the middle of 100 firing
notices, once in the middle of their 100 resolved notices, to two webhook channels answering
each request in 0.3 s. After each kill a new notifier process starts on the same NATS; when
all is settled, every notice reached each channel exactly once (counted by the idempotency
key the receiver saw) or is a dead letter with its reason, no resolved notice reached a
channel that was not sent the firing notice (nor before it) — except where the firing event,
redelivered after the kill, came after its resolved: then the channel gets no late page but
the resolved notice, once — and no ledger key is left ``sending``.

Self-contained: its own receiver, notifier processes and nats-server (the scenario's, with
the bus's credentials: tests/faults/conftest.py). Only the processes started here are killed,
by PID.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from devstack import ServiceProcess
from nats.js.errors import NoKeysError

from signalfire.bus import NatsConfig
from signalfire.notifier.deadletter import DeadLetter
from signalfire.notifier.ledger import SentMark
from tests.faults.support import notifier_nats_json
from tests.support.alerts import firing_alert, publish_alert
from tests.support.notifiers import kill9, notifier_process
from tests.support.polling import wait_until
from tests.support.webhook import Posted, WebhookReceiver

pytestmark = pytest.mark.slow

ALERTS = 100
CHANNELS = ("hook-a", "hook-b")
#: How long the receiver takes to answer each request (the attack used 0.3 s).
ANSWER_DELAY = 0.3
#: Production's ack_wait is 30 s, so a dead notifier's events and claims come back after
#: about 30 s; with 2 s (lease = ack_wait, heartbeat = 0.67 s) the same takeovers happen
#: within seconds and the test stays well under 90 s. The timing formula is the same.
ACK_WAIT = "2s"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """Answers each request in 0.3 s, having recorded it on arrival."""
    with WebhookReceiver(delay=ANSWER_DELAY) as r:
        yield r


def got(receiver: WebhookReceiver, transition: str | None = None) -> list[Posted]:
    return [r for r in receiver.posted() if transition is None or r.transition == transition]


@pytest.fixture
def notify_config(nats_config: NatsConfig, receiver: WebhookReceiver, tmp_path: Path) -> Path:
    path = tmp_path / "notify.yaml"
    channels = ", ".join(
        f'{name}: {{type: webhook, url: "{receiver.url(name)}", timeout: 5s}}' for name in CHANNELS
    )
    nats = notifier_nats_json(nats_config)  # the notifier as its own identity, as `make up` runs it
    path.write_text(
        f"""\
nats: {nats}
log_level: info
ack_wait: {ACK_WAIT}
channels: {{{channels}}}
routes:
  - channels: [{", ".join(CHANNELS)}]
"""
    )
    return path


class Notifiers:
    """``signalfire notifier`` processes, one after the other; the last may be killed."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self._config = config
        self._log_dir = log_dir
        self.started: list[ServiceProcess] = []

    def start(self) -> ServiceProcess:
        name = f"notifier-{len(self.started) + 1}"
        process = notifier_process(name, self._config, self._log_dir)
        self.started.append(process.start())
        return process

    def logs(self) -> str:
        return "".join(p.log_path.read_text(errors="replace") for p in self.started if p.log_path.exists())

    def stop(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture
def notifiers(notify_config: Path, tmp_path: Path) -> Iterator[Notifiers]:
    n = Notifiers(notify_config, tmp_path)
    yield n
    n.stop()


async def ledger(kv: Any) -> tuple[list[SentMark], list[DeadLetter]]:
    try:
        keys = await kv.keys()
    except NoKeysError:
        return [], []
    marks: list[SentMark] = []
    letters: list[DeadLetter] = []
    for key in keys:
        entry = await kv.get(key)
        if not entry.value:
            continue
        if key.startswith("sent."):
            marks.append(msgspec.json.decode(entry.value, type=SentMark))
        elif key.startswith("deadletter."):
            letters.append(msgspec.json.decode(entry.value, type=DeadLetter))
    return marks, letters


@pytest.mark.parametrize("replicas", [1, 2], ids=["restarted", "with-a-second-replica"])
async def test_kill_9_mid_delivery_loses_nothing_and_never_resolves_unannounced(
    nc: Any, nats_config: NatsConfig, receiver: WebhookReceiver, notifiers: Notifiers, replicas: int
) -> None:
    """``restarted``: one notifier, killed and started again, twice. ``with-a-second-replica``:
    two notifiers share the work; one is killed during the firing notices (the other takes
    over while running), the other during the resolved notices, then a fresh one starts."""
    started = time.monotonic()
    js = nc.jetstream()
    kv = await js.key_value(nats_config.subjects.bucket("notify_state"))
    run = uuid.uuid4().hex[:6]
    now = time.time()
    alerts = [firing_alert(f"kill-{run}-{i:03d}", now=now, value=93.0) for i in range(ALERTS)]
    notices = ALERTS * len(CHANNELS)

    victim = notifiers.start()
    if replicas == 2:
        notifiers.start()
    for a in alerts:
        await publish_alert(nc, nats_config, a)
    # mid-flow: about a quarter of the firing notices are out, the next ones are in flight
    await wait_until(lambda: len(got(receiver, "firing")) >= notices // 4, "the first firing notices", 30)
    kill9(victim)
    at_first_kill = len(got(receiver, "firing"))

    victim = notifiers.started[1] if replicas == 2 else notifiers.start()
    for a in alerts:
        ended = time.time()
        await publish_alert(
            nc, nats_config, msgspec.structs.replace(a, status="resolved", time=ended, ends_at=ended, seq=2)
        )
    await wait_until(lambda: len(got(receiver, "resolved")) >= notices // 4, "the first resolved notices", 30)
    kill9(victim)
    at_second_kill = len(got(receiver, "resolved"))
    notifiers.start()

    marks: list[SentMark] = []
    letters: list[DeadLetter] = []

    def superseded() -> set[tuple[str, str, str]]:
        """Firing notices whose resolved event came first (the resolved notice is owed instead)."""
        return {
            (m.alert_id, "firing", m.channel) for m in marks if m.tag == "firing" and m.state == "superseded"
        }

    def accounted() -> bool:
        dead = {(d.alert.id, d.transition, d.channel) for d in letters}
        done = {(r.alert_id, r.transition, r.channel) for r in got(receiver)}
        instead = superseded()
        fired = {(a, c) for a, t, c in done | instead if t == "firing"}
        for a in alerts:
            for channel in CHANNELS:
                if (a.id, "firing", channel) not in done | dead | instead:
                    return False
                if (a.id, channel) in fired and (a.id, "resolved", channel) not in done | dead:
                    return False
        return not any(m.state == "sending" for m in marks)

    settled = False
    deadline = time.monotonic() + 45
    while not settled and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        marks, letters = await ledger(kv)
        info = await js.consumer_info(nats_config.subjects.alerts_stream, "notifier")
        settled = accounted() and info.num_pending == 0 and info.num_ack_pending == 0
    await asyncio.sleep(1.0)  # anything still to come (a duplicate) would arrive now
    marks, letters = await ledger(kv)

    numbers: dict[str, object] = {"at_first_kill": at_first_kill, "at_second_kill": at_second_kill}
    for transition in ("firing", "resolved"):
        sent = got(receiver, transition)
        keys = Counter(r.idempotency_key for r in sent)
        numbers[f"{transition}_sent"] = len(sent)
        numbers[f"{transition}_unique"] = len(keys)
        numbers[f"{transition}_duplicates"] = len(sent) - len(keys)
        numbers[f"{transition}_dead"] = sum(d.transition == transition for d in letters)
    numbers["firing_superseded"] = len(superseded())
    numbers["claims_taken_over"] = notifiers.logs().count("took over a dead replica's claim")
    numbers["sending_left"] = sum(m.state == "sending" for m in marks)
    numbers["seconds"] = round(time.monotonic() - started, 1)
    print(
        f"FAULT notifier-kill-9: replicas={replicas} " + " ".join(f"{k}={v}" for k, v in numbers.items()),
        flush=True,
    )

    assert settled, "the notifier did not settle within 45 s of the last restart"
    assert 0 < at_first_kill < notices and 0 < at_second_kill < notices, "the kills were not mid-flow"
    assert [m for m in marks if m.state == "sending"] == []
    assert all(d.reason for d in letters), "a dead letter without its reason"
    by_notice: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    first: dict[tuple[str, str, str], float] = {}
    for r in got(receiver):
        by_notice[(r.alert_id, r.transition, r.channel)].add(r.idempotency_key)
        first.setdefault((r.alert_id, r.transition, r.channel), r.at)
    dead = {(d.alert.id, d.transition, d.channel) for d in letters}
    instead = superseded()
    for a in alerts:
        for channel in CHANNELS:
            fired = (a.id, "firing", channel)
            resolved = (a.id, "resolved", channel)
            if fired in instead:  # no late page; told once that it fired and resolved
                assert fired not in by_notice and fired not in dead, fired
                assert len(by_notice[resolved]) == 1, (resolved, by_notice[resolved])
                continue
            # one idempotency key per notice: a re-send after a crash carries the first one
            assert len(by_notice[fired]) + (fired in dead) == 1, (fired, by_notice[fired])
            if fired in dead:
                assert resolved not in by_notice, f"{resolved}: resolved without its firing notice"
                continue
            assert len(by_notice[resolved]) + (resolved in dead) == 1, (resolved, by_notice[resolved])
            if resolved in first:
                assert first[fired] < first[resolved], f"{resolved}: resolved before its firing notice"
    assert "" not in {r.idempotency_key for r in got(receiver)}

"""The notifier's pipeline against real NATS JetStream and real HTTP receivers on loopback:
escalation, repeats, acknowledgements, grouping, digests, silences, inhibition, fallback
and dead letters — with time driven by an injected clock — and exactly one message per
transition with two replicas."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import msgspec
import pytest

from signalfire.bus import NatsConfig
from signalfire.config import ConfigError, Duration
from signalfire.events import AlertAction, AlertEvent, DeliveryResult, Silence, encode
from signalfire.matchers import Matcher
from signalfire.notifier.channels.pagerduty import PagerDutyChannelConfig
from signalfire.notifier.channels.webhook import WebhookChannelConfig
from signalfire.notifier.config import EscalationStep, InhibitRule, NotifyConfig, Route, load_notify_config
from signalfire.notifier.deadletter import DeadLetter
from signalfire.notifier.mirror import FRESH_FOR
from signalfire.notifier.service import NotifierService
from tests.support.alerts import firing_alert, publish_alert
from tests.support.delivery_results import results
from tests.support.metrics import value
from tests.support.notifiers import notifier_services
from tests.support.polling import wait_until
from tests.support.webhook import WebhookReceiver

__all__ = ["results"]  # the shared fixture

T0 = 1_763_794_800.0


class Clock:
    """The notifier's clock in these tests: moves only when the test says so."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now


@pytest.fixture
def receivers() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def hook(receivers: WebhookReceiver, name: str, **settings: Any) -> WebhookChannelConfig:
    return WebhookChannelConfig(url=receivers.url(name), retry_backoff=Duration(0.01), **settings)


def make_config(
    nats_config: NatsConfig, channels: dict[str, Any], routes: list[Route], **more: Any
) -> NotifyConfig:
    return NotifyConfig(nats=nats_config, channels=channels, routes=routes, tick=Duration(0.02), **more)


def alert(**overrides: Any) -> AlertEvent:
    fields: dict[str, Any] = {"severity": "critical", "annotations": {"summary": "CPU 93% on web-1"}}
    return firing_alert(overrides.pop("id", None), now=T0, **(fields | overrides))


def resolved(a: AlertEvent) -> AlertEvent:
    return msgspec.structs.replace(a, status="resolved", ends_at=a.time + 60, seq=a.seq + 1)


async def act(
    nc: Any, nats_config: NatsConfig, a: AlertEvent, action: Literal["ack", "unack", "resolve", "note"]
) -> None:
    payload = AlertAction(
        alert_id=a.id, action=action, actor="ana", time=time.time(), fingerprint=a.fingerprint
    )
    await nc.jetstream().publish(nats_config.subjects.actions, encode(payload))


async def quiet(seconds: float = 0.3) -> None:
    """Let several ticks pass (for asserting that nothing more happens)."""
    await asyncio.sleep(seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def running(nc: Any, clock: Clock) -> AsyncIterator[Callable[[NotifyConfig], Any]]:
    async with notifier_services(nc, environ={"PD_KEY": "routing-key"}, clock=clock.time) as start:
        yield start


CRITICAL = Route(
    match={"severity": "critical"},
    channels=["ops"],
    escalate=[
        EscalationStep(after=Duration(300), channels=["oncall"]),
        EscalationStep(after=Duration(900), channels=["manager"]),
    ],
)


async def test_escalation_steps_go_out_while_nobody_acknowledges(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, clock: Clock, running: Any
) -> None:
    channels = {name: hook(receivers, name) for name in ("ops", "oncall", "manager")}
    await running(make_config(nats_config, channels, [CRITICAL]))
    a = alert()
    await publish_alert(nc, nats_config, a)
    await wait_until(lambda: len(receivers.bodies("ops")) == 1, "the firing message")

    clock.now = T0 + 299
    await quiet()
    assert receivers.bodies("oncall") == []
    clock.now = T0 + 300
    await wait_until(lambda: len(receivers.bodies("oncall")) == 1, "the first escalation step")
    assert receivers.transitions("oncall") == [(a.id, "escalation")]
    assert receivers.bodies("manager") == []
    clock.now = T0 + 900
    await wait_until(lambda: len(receivers.bodies("manager")) == 1, "the second escalation step")
    clock.now = T0 + 5000
    await quiet()
    assert (
        len(receivers.bodies("ops")),
        len(receivers.bodies("oncall")),
        len(receivers.bodies("manager")),
    ) == (
        1,
        1,
        1,
    )

    # the resolved notice goes at once to everyone who was told
    await publish_alert(nc, nats_config, resolved(a))
    await wait_until(lambda: all(len(receivers.bodies(n)) == 2 for n in channels), "the resolved notices")
    assert {receivers.transitions(n)[-1] for n in channels} == {(a.id, "resolved")}


async def test_ack_stops_escalation_and_repeats_and_acknowledges_in_pagerduty(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, clock: Clock, running: Any
) -> None:
    channels: dict[str, Any] = {
        "pd": PagerDutyChannelConfig(routing_key_env="PD_KEY", url=receivers.url("pd")),
        "oncall": hook(receivers, "oncall"),
    }
    route = Route(
        channels=["pd"],
        escalate=[EscalationStep(after=Duration(300), channels=["oncall"])],
        repeat=Duration(3600),
    )
    await running(make_config(nats_config, channels, [route]))
    a = alert()
    await publish_alert(nc, nats_config, a)
    await wait_until(lambda: len(receivers.bodies("pd")) == 1, "the trigger")
    await act(nc, nats_config, a, "ack")
    await wait_until(lambda: len(receivers.bodies("pd")) == 2, "the acknowledgement")
    assert [b["event_action"] for b in receivers.bodies("pd")] == ["trigger", "acknowledge"]
    assert {b["dedup_key"] for b in receivers.bodies("pd")} == {a.fingerprint}

    clock.now = T0 + 2 * 3600
    await quiet()
    assert receivers.bodies("oncall") == []
    assert len(receivers.bodies("pd")) == 2

    # unack starts the steps over from now
    await act(nc, nats_config, a, "unack")
    await quiet(0.2)
    clock.now = T0 + 2 * 3600 + 299
    await quiet()
    assert receivers.bodies("oncall") == []
    clock.now = T0 + 2 * 3600 + 300
    await wait_until(lambda: len(receivers.bodies("oncall")) == 1, "the escalation after unack")
    clock.now = T0 + 3 * 3600
    await wait_until(lambda: len(receivers.bodies("pd")) == 3, "the repeat after unack")
    assert receivers.bodies("pd")[-1]["event_action"] == "trigger"

    # a second ack is announced again; a note changes nothing
    await act(nc, nats_config, a, "note")
    await act(nc, nats_config, a, "ack")
    await wait_until(lambda: len(receivers.bodies("pd")) == 4, "the second acknowledgement")
    await publish_alert(nc, nats_config, resolved(a))
    await wait_until(lambda: len(receivers.bodies("pd")) == 5, "the resolve")
    assert [b["event_action"] for b in receivers.bodies("pd")][-2:] == ["acknowledge", "resolve"]


async def test_repeat_reminds_every_period(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, clock: Clock, running: Any
) -> None:
    route = Route(channels=["team"], repeat=Duration(3600))
    await running(make_config(nats_config, {"team": hook(receivers, "team")}, [route]))
    a = alert(severity="high")
    await publish_alert(nc, nats_config, a)
    await wait_until(lambda: len(receivers.bodies("team")) == 1, "the firing message")
    clock.now = T0 + 3599
    await quiet()
    assert len(receivers.bodies("team")) == 1
    clock.now = T0 + 3600
    await wait_until(lambda: len(receivers.bodies("team")) == 2, "the first reminder")
    clock.now = T0 + 7300
    await wait_until(lambda: len(receivers.bodies("team")) == 3, "the second reminder")
    await quiet()
    assert receivers.transitions("team") == [(a.id, "firing"), (a.id, "repeat"), (a.id, "repeat")]


async def test_group_wait_sends_one_message_for_what_fired_meanwhile(
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    clock: Clock,
    running: Any,
    *,
    results: list[Any],
) -> None:
    route = Route(channels=["lead"], group_wait=Duration(300), group_by=["rule"])
    await running(make_config(nats_config, {"lead": hook(receivers, "lead")}, [route]))
    alerts = [alert(severity="high", host=f"web-{i}") for i in range(3)]
    other_rule = alert(severity="high", rule="DiskFull")
    for a in [*alerts, other_rule]:
        await publish_alert(nc, nats_config, a)
    await quiet()
    assert receivers.bodies("lead") == []
    clock.now = T0 + 300
    await wait_until(lambda: len(receivers.bodies("lead")) == 2, "one message per group")
    by_rule = {b["alert"]["rule"]: b for b in receivers.bodies("lead")}
    assert sorted(x["id"] for x in by_rule["HighCPU"]["alerts"]) == sorted(a.id for a in alerts)
    assert by_rule["DiskFull"]["alerts"] == []  # a group of one is an ordinary message
    await wait_until(lambda: len(results) == 4, "a result per alert")
    assert sorted(r.alert_id for r in results) == sorted(a.id for a in [*alerts, other_rule])

    # resolved goes out at once, no group delay
    await publish_alert(nc, nats_config, resolved(alerts[0]))
    await wait_until(lambda: len(receivers.bodies("lead")) == 3, "the resolved notice")
    assert receivers.transitions("lead")[-1] == (alerts[0].id, "resolved")


async def test_digest_sends_one_message_per_period(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, clock: Clock, running: Any
) -> None:
    clock.now = 3600.0 * 490_000 + 10  # just after the top of an hour
    route = Route(channels=["mail"], digest=Duration(3600))
    service = await running(make_config(nats_config, {"mail": hook(receivers, "mail")}, [route]))

    def waiting(alerts: list[AlertEvent], due: float) -> bool:
        # the clock is moved on only once the events are in their period's batch: on a busy
        # machine an event handled after the move would rightly wait for the period after
        ids = {a.id for a in alerts}
        batches = [batch for batch, _ in service.state.batches.entries.values()]
        return any(ids <= {a.id for a in b.alerts} and b.due == due for b in batches)

    first = [alert(severity="low", host=f"h{i}") for i in range(4)]
    for a in first:
        await publish_alert(nc, nats_config, a)
    await wait_until(lambda: waiting(first, 3600.0 * 490_001), "the alerts in this period's batch")
    clock.now += 3000
    await quiet()
    assert receivers.bodies("mail") == []
    clock.now = 3600.0 * 490_001
    await wait_until(lambda: len(receivers.bodies("mail")) == 1, "the digest")
    assert sorted(x["id"] for x in receivers.bodies("mail")[0]["alerts"]) == sorted(a.id for a in first)
    late = alert(severity="low")
    await publish_alert(nc, nats_config, late)
    await wait_until(lambda: waiting([late], 3600.0 * 490_002), "the late alert in the next period's batch")
    clock.now = 3600.0 * 490_002
    await wait_until(lambda: len(receivers.bodies("mail")) == 2, "the next digest")
    assert receivers.bodies("mail")[1]["alert"]["id"] == late.id


async def test_silence_suppresses_and_reports_why(
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    clock: Clock,
    running: Any,
    *,
    results: list[Any],
) -> None:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    window = Silence(
        id="maint-1",
        matchers=[Matcher(name="host", value="web-1")],
        starts_at=T0 - 60,
        ends_at=T0 + 3600,
        author="ana",
        comment="kernel upgrade",
    )
    await kv.put("maint-1", msgspec.json.encode(window))
    await kv.put("garbage", b"{not a silence")
    route = Route(channels=["ops"], repeat=Duration(7200))
    service = await running(make_config(nats_config, {"ops": hook(receivers, "ops")}, [route]))
    assert value(service.registry, "signalfire_notifier_bad_state_entries_total", bucket="silences") == 1
    muted, other = alert(), alert(host="web-2")
    await publish_alert(nc, nats_config, muted)
    await publish_alert(nc, nats_config, other)
    await wait_until(lambda: len(results) == 2, "two results")
    by_alert = {r.alert_id: r for r in results}
    assert (by_alert[muted.id].status, by_alert[muted.id].reason) == (
        "suppressed",
        "silenced by maint-1 (ana: kernel upgrade)",
    )
    assert by_alert[other.id].status == "sent"
    assert receivers.transitions("ops") == [(other.id, "firing")]

    # after the silence ends, the reminder reaches people
    clock.now = T0 + 7200
    await wait_until(lambda: (muted.id, "repeat") in receivers.transitions("ops"), "the reminder")


async def test_inhibition_suppresses_alerts_of_a_down_host(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, running: Any, results: list[Any]
) -> None:
    config = make_config(
        nats_config,
        {"ops": hook(receivers, "ops")},
        [Route(channels=["ops"])],
        inhibit=[InhibitRule(source={"rule": "HostDown"}, equal=["host"])],
    )
    await running(config)
    down = alert(rule="HostDown")
    await publish_alert(nc, nats_config, down)
    await wait_until(lambda: len(results) == 1, "the HostDown message")
    cpu, elsewhere = alert(), alert(host="web-9")
    await publish_alert(nc, nats_config, cpu)
    await publish_alert(nc, nats_config, elsewhere)
    await wait_until(lambda: len(results) == 3, "three results")
    by_alert = {r.alert_id: r for r in results}
    assert (by_alert[cpu.id].status, by_alert[cpu.id].reason) == (
        "suppressed",
        "inhibited by HostDown on web-1",
    )
    assert by_alert[elsewhere.id].status == "sent"
    assert sorted(receivers.transitions("ops")) == sorted([(down.id, "firing"), (elsewhere.id, "firing")])


async def test_an_alert_is_inhibited_while_its_source_is_still_being_sent_by_either_replica(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, running: Any, results: list[Any]
) -> None:
    """A down host pages through a slow channel (the pager answers after 1.5 s); its CPU alert
    comes 0.2 s later, to whichever of two replicas takes it. The page is still on its way, yet
    the CPU alert must be muted: the inhibiting alert is tracked as soon as it is taken, and
    each replica checks the tracks against their bucket before deciding. Before, its track was
    written once its page was answered, and the CPU alert went out."""
    with WebhookReceiver(delay=1.5) as slow:
        config = make_config(
            nats_config,
            {"ops": hook(receivers, "ops"), "pager": hook(slow, "pager")},
            [Route(match={"rule": "HostDown"}, channels=["pager"]), Route(channels=["ops"])],
            inhibit=[InhibitRule(source={"rule": "HostDown"}, equal=["host"])],
        )
        replicas = [await running(config), await running(config)]
        for round_ in range(3):
            host = f"web-{round_}"
            down = alert(rule="HostDown", host=host)
            await publish_alert(nc, nats_config, down)
            await asyncio.sleep(0.2)
            cpu = alert(host=host)
            await publish_alert(nc, nats_config, cpu)
            done = 2 * (round_ + 1)
            await wait_until(lambda: len(results) == done, "the page and the CPU alert's result")  # noqa: B023
            by_alert = {r.alert_id: r for r in results}
            assert (by_alert[cpu.id].status, by_alert[cpu.id].reason) == (
                "suppressed",
                f"inhibited by HostDown on {host}",
            ), round_
            assert by_alert[down.id].status == "sent"
        assert receivers.transitions("ops") == []
        checks = {
            result: sum(
                value(r.registry, "signalfire_notifier_inhibition_checks_total", result=result)
                for r in replicas
            )
            for result in ("current", "caught_up", "read", "failed")
        }
        assert checks["failed"] == 0 and sum(checks.values()) >= 3, checks  # one a decision at least


async def test_a_group_wait_on_the_targets_route_mutes_a_target_arriving_with_its_source(
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    clock: Clock,
    running: Any,
    *,
    results: list[Any],
) -> None:
    """A source and its target published at the same moment, to two replicas: the target may
    be decided before the source's track is written anywhere. Held by its route's group_wait,
    it is decided again when its batch is sent, by then against the source's track."""
    config = make_config(
        nats_config,
        {"ops": hook(receivers, "ops"), "pager": hook(receivers, "pager")},
        [
            Route(match={"rule": "HostDown"}, channels=["pager"]),
            Route(channels=["ops"], group_wait=Duration(1), group_by=["host"]),
        ],
        inhibit=[InhibitRule(source={"rule": "HostDown"}, equal=["host"])],
    )
    await running(config)
    await running(config)
    for round_ in range(5):
        host = f"db-{round_}"
        down, cpu = alert(rule="HostDown", host=host), alert(host=host)
        await asyncio.gather(publish_alert(nc, nats_config, cpu), publish_alert(nc, nats_config, down))
        await wait_until(lambda: len(receivers.bodies("pager")) == round_ + 1, "the page")  # noqa: B023
        for _ in range(50):  # its group_wait over, once it has joined its batch (a moment)
            clock.now += 1.5
            await quiet(0.1)
            if any(r.alert_id == cpu.id for r in results):
                break
        await wait_until(lambda: any(r.alert_id == cpu.id for r in results), "the target's result")  # noqa: B023
        decided = {(r.status, r.reason) for r in results if r.alert_id == cpu.id}
        assert decided == {("suppressed", f"inhibited by HostDown on {host}")}, round_
    assert receivers.bodies("ops") == []


async def test_failed_channel_hands_over_to_its_fallback_then_dead_letters(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, running: Any, results: list[Any]
) -> None:
    receivers.always["slack"] = 500
    channels = {
        "slack": hook(receivers, "slack", max_attempts=2, fallback="mail"),
        "mail": hook(receivers, "mail", max_attempts=1),
        "other": hook(receivers, "other"),
    }
    config = make_config(nats_config, channels, [Route(channels=["slack", "other"])])
    service = await running(config)
    a = alert()
    await publish_alert(nc, nats_config, a)
    await wait_until(lambda: len(receivers.bodies("mail")) == 1, "the fallback")
    assert len(receivers.bodies("slack")) == 2
    assert len(receivers.bodies("other")) == 1  # only the failed channel was retried
    assert value(service.registry, "signalfire_notifier_fallbacks_total", channel="slack") == 1

    receivers.always["mail"] = 503
    b = alert()
    await publish_alert(nc, nats_config, b)
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("notify_state"))

    async def dead() -> list[str]:
        try:
            return [k for k in await kv.keys() if k.startswith("deadletter.")]
        except Exception:
            return []

    found: list[str] = []

    async def poll() -> None:
        found[:] = await dead()

    deadline = time.monotonic() + 10
    while not found and time.monotonic() < deadline:
        await poll()
        await quiet(0.05)
    [key] = found
    letter = msgspec.json.decode((await kv.get(key)).value, type=DeadLetter)
    assert (letter.alert.id, letter.channel, letter.attempts, letter.fallback) == (b.id, "slack", 2, "mail")
    assert letter.error.startswith("HTTP 500")
    assert value(service.registry, "signalfire_notifier_dead_letters_total", channel="slack") == 1
    slack_b = [(r.status, r.attempt) for r in results if r.alert_id == b.id and r.channel == "slack"]
    assert slack_b == [("retrying", 1), ("failed", 2)]


async def test_two_replicas_send_exactly_one_message_per_transition(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, clock: Clock, running: Any
) -> None:
    channels = {name: hook(receivers, name) for name in ("ops", "oncall", "manager")}
    config = make_config(nats_config, channels, [CRITICAL])
    await running(config)
    await running(config)
    alerts = [alert() for _ in range(10)]
    for a in alerts:
        await publish_alert(nc, nats_config, a)
    await wait_until(lambda: len(receivers.bodies("ops")) == 10, "ten firing messages")
    clock.now = T0 + 1000  # both escalation steps due, on both replicas at once
    await wait_until(
        lambda: len(receivers.bodies("oncall")) == 10 and len(receivers.bodies("manager")) == 10,
        "the escalations",
    )
    for a in alerts[:5]:
        await publish_alert(nc, nats_config, resolved(a))
    await wait_until(lambda: len(receivers.bodies("ops")) == 15, "five resolved notices")
    await quiet(0.5)
    for name in channels:
        sent = receivers.transitions(name)
        assert len(sent) == len(set(sent)), f"{name} got a message twice"
    assert len(receivers.bodies("oncall")) == 15 and len(receivers.bodies("manager")) == 15


async def test_retries_longer_than_ack_wait_keep_the_event_from_redelivery(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, running: Any, results: list[DeliveryResult]
) -> None:
    # two failures, then 1 s + 2 s of backoff: three times JetStream's ack_wait
    receivers.statuses["ops"] = [500, 500]
    channels = {"ops": WebhookChannelConfig(url=receivers.url("ops"), retry_backoff=Duration(1))}
    service = await running(
        make_config(nats_config, channels, [Route(channels=["ops"])], ack_wait=Duration(1))
    )
    a = alert()
    await publish_alert(nc, nats_config, a)
    await wait_until(lambda: any(r.status == "sent" for r in results), "the third attempt", timeout=15)
    await quiet(1.5)
    assert [r.status for r in results] == ["retrying", "retrying", "sent"]
    assert len(receivers.bodies("ops")) == 3
    # the event was worked on the whole time: JetStream never handed it out again
    assert value(service.registry, "signalfire_notifier_alerts_received_total", status="firing") == 1
    assert value(service.registry, "signalfire_notifier_duplicates_skipped_total", channel="ops") == 0


async def test_provider_urls_never_reach_the_log(
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    running: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await running(
        make_config(
            nats_config,
            {"T0KEN-in-path": hook(receivers, "T0KEN-in-path")},
            [Route(channels=["T0KEN-in-path"])],
        )
    )
    await publish_alert(nc, nats_config, alert())
    await wait_until(lambda: len(receivers.bodies("T0KEN-in-path")) == 1, "the message")
    assert receivers.url("T0KEN-in-path") not in caplog.text


async def silence(nc: Any, nats_config: NatsConfig, host: str, starts_at: float) -> None:
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    window = Silence(
        id=f"maint-{host}",
        matchers=[Matcher(name="host", value=host)],
        starts_at=starts_at,
        ends_at=starts_at + 3600,
        author="ana",
    )
    await kv.put(window.id, msgspec.json.encode(window))


async def test_a_silence_mutes_the_resolved_notice_too(  # noqa: PLR0917
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    clock: Clock,
    running: Any,
    results: list[Any],
) -> None:
    await running(make_config(nats_config, {"ops": hook(receivers, "ops")}, [Route(channels=["ops"])]))
    # sent while no silence matched, then a silence for its host: the resolved is not sent
    told = alert(host="web-1")
    await publish_alert(nc, nats_config, told)
    await wait_until(lambda: receivers.transitions("ops") == [(told.id, "firing")], "the firing")
    await silence(nc, nats_config, "web-1", T0 - 1)
    # silenced from the start: neither its firing nor its resolved notice is sent
    muted = alert(host="web-1")
    await publish_alert(nc, nats_config, muted)
    await publish_alert(nc, nats_config, resolved(told))
    await publish_alert(nc, nats_config, resolved(muted))
    other = alert(host="web-2")
    await publish_alert(nc, nats_config, other)
    await publish_alert(nc, nats_config, resolved(other))
    await wait_until(lambda: len(receivers.bodies("ops")) == 3, "the other host's notices")
    await quiet()
    assert receivers.transitions("ops") == [(told.id, "firing"), (other.id, "firing"), (other.id, "resolved")]
    mine = [(r.alert_id, r.transition, r.status) for r in results if r.alert_id == told.id]
    assert mine == [(told.id, "firing", "sent"), (told.id, "resolved", "suppressed")]
    assert [r.reason for r in results if r.alert_id == told.id][-1] == "silenced by maint-web-1 (ana)"


async def test_a_silence_written_while_the_silence_watch_is_behind_mutes_the_next_alert(  # noqa: PLR0917
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    clock: Clock,
    running: Any,
    results: list[Any],
) -> None:
    """The watch of the silences stalls for seconds when the NATS node serving it dies
    (docs/faults.md scenario 11): a silence created then must still mute the next alert."""
    service = await running(
        make_config(nats_config, {"ops": hook(receivers, "ops")}, [Route(channels=["ops"])])
    )
    held = service._silences
    assert held is not None and held._watcher is not None
    await held._watcher.stop()  # the watch hears nothing more, as one whose node died
    await silence(nc, nats_config, "web-1", T0 - 1)
    await asyncio.sleep(FRESH_FOR)  # what the check promises: written at least that long before
    muted, other = alert(host="web-1"), alert(host="web-2")
    await publish_alert(nc, nats_config, muted)
    await publish_alert(nc, nats_config, other)
    await wait_until(lambda: len(results) == 2, "both alerts' results")
    by_alert = {r.alert_id: r for r in results}
    assert (by_alert[muted.id].status, by_alert[muted.id].reason) == (
        "suppressed",
        "silenced by maint-web-1 (ana)",
    )
    assert receivers.transitions("ops") == [(other.id, "firing")]
    reads = value(service.registry, "signalfire_notifier_silence_checks_total", result="read")
    assert reads >= 1
    # ended behind the watch's back too: the next alert of the host is sent
    kv = await nc.jetstream().key_value(nats_config.subjects.bucket("silences"))
    await kv.delete("maint-web-1")
    await asyncio.sleep(FRESH_FOR)
    again = alert(host="web-1")
    await publish_alert(nc, nats_config, again)
    await wait_until(
        lambda: (again.id, "firing") in receivers.transitions("ops"), "the alert after the silence"
    )
    assert value(service.registry, "signalfire_notifier_silence_checks_total", result="read") > reads


async def test_when_the_silences_cannot_be_checked_the_alert_is_decided_on_the_silences_held(  # noqa: PLR0917
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    clock: Clock,
    running: Any,
    results: list[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A page is not held back because the silences' bucket cannot answer: the copy held
    decides, and the operator is told once."""
    await silence(nc, nats_config, "web-1", T0 - 1)
    service = await running(
        make_config(nats_config, {"ops": hook(receivers, "ops")}, [Route(channels=["ops"])])
    )
    await nc.jetstream().delete_stream(f"KV_{nats_config.subjects.bucket('silences')}")  # no bucket to ask
    alerts = [alert(host="web-1"), alert(host="web-2"), alert(host="web-1")]
    for a in alerts:
        await publish_alert(nc, nats_config, a)
    await wait_until(lambda: len(results) == 3, "the alerts' results")
    status = {r.alert_id: r.status for r in results}
    assert [status[a.id] for a in alerts] == ["suppressed", "sent", "suppressed"]
    assert value(service.registry, "signalfire_notifier_silence_checks_total", result="failed") == 3
    warnings = [r for r in caplog.records if "silences not checked against their bucket" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


async def test_a_digest_lists_an_alert_that_fired_and_resolved_within_its_period(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, clock: Clock, running: Any
) -> None:
    clock.now = 3600.0 * 490_000 + 10
    route = Route(channels=["mail"], digest=Duration(3600))
    await running(make_config(nats_config, {"mail": hook(receivers, "mail")}, [route]))
    brief, lasting = alert(severity="low", host="h1"), alert(severity="low", host="h2")
    await publish_alert(nc, nats_config, brief)
    await publish_alert(nc, nats_config, resolved(brief))
    await quiet(0.1)
    await publish_alert(nc, nats_config, lasting)
    await quiet()
    clock.now = 3600.0 * 490_001
    await wait_until(lambda: len(receivers.bodies("mail")) == 1, "the digest")
    [digest] = receivers.bodies("mail")
    assert (digest["alert"]["id"], digest["transition"]) == (lasting.id, "firing")
    assert {(a["id"], a["status"]) for a in digest["alerts"]} == {
        (brief.id, "resolved"),
        (lasting.id, "firing"),
    }
    # a digest route's only record is the digest: no separate resolved notice
    await quiet()
    assert len(receivers.bodies("mail")) == 1


async def test_reload_switches_channels_and_lets_deliveries_under_way_finish_on_the_old_ones(
    nc: Any, nats_config: NatsConfig, receivers: WebhookReceiver, running: Any, results: list[Any]
) -> None:
    slow_retry = Duration(0.5)
    old = make_config(
        nats_config,
        {"ops": WebhookChannelConfig(url=receivers.url("old"), retry_backoff=slow_retry)},
        [Route(channels=["ops"])],
    )
    service = await running(old)
    receivers.statuses["old"] = [503]  # the first attempt fails; its retry comes 0.5 s later
    first = alert()
    await publish_alert(nc, nats_config, first)
    await wait_until(lambda: len(receivers.bodies("old")) == 1, "the first attempt")

    new = make_config(
        nats_config,
        {
            "ops": WebhookChannelConfig(url=receivers.url("new"), retry_backoff=slow_retry),
            "team": hook(receivers, "team"),
        },
        [Route(channels=["ops", "team"])],
    )
    await service.reload(new)
    # the retry under way still goes to the channel it started on
    await wait_until(lambda: len(receivers.bodies("old")) == 2, "the retry on the old channel")
    assert receivers.bodies("new") == [] and receivers.bodies("team") == []

    second = alert()
    await publish_alert(nc, nats_config, second)
    await wait_until(lambda: bool(receivers.bodies("new") and receivers.bodies("team")), "the new channels")
    assert receivers.transitions("new") == receivers.transitions("team") == [(second.id, "firing")]
    assert len(receivers.bodies("old")) == 2


async def test_a_reload_whose_channels_cannot_be_built_keeps_the_running_config(
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    running: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await running(
        make_config(nats_config, {"ops": hook(receivers, "ops")}, [Route(channels=["ops"])])
    )
    broken = make_config(
        nats_config,
        {"ops": hook(receivers, "new"), "pd": PagerDutyChannelConfig(routing_key_env="NOT_SET")},
        [Route(channels=["ops", "pd"])],
    )
    with pytest.raises(ConfigError, match="NOT_SET is not set"):
        await service.reload(broken)
    a = alert()
    await publish_alert(nc, nats_config, a)
    await wait_until(lambda: receivers.transitions("ops") == [(a.id, "firing")], "the old channel")
    assert receivers.bodies("new") == []
    assert list(service.config.channels) == ["ops"]


async def test_the_config_file_is_watched_and_a_bad_change_is_logged_and_ignored(  # noqa: PLR0917
    nc: Any,
    nats_config: NatsConfig,
    receivers: WebhookReceiver,
    clock: Clock,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "notify.yaml"

    def write(channel: str) -> None:
        path.write_text(
            f"watch_interval: 50ms\nchannels:\n  ops:\n    type: webhook\n    url: {receivers.url(channel)}\n"
            "routes:\n  - channels: [ops]\n"
        )

    write("before")
    config = msgspec.structs.replace(load_notify_config(path, environ={}), nats=nats_config)
    service = NotifierService(config, nc, environ={}, clock=clock.time, config_path=str(path))
    await service.start()
    try:
        write("after")
        await wait_until(
            lambda: value(service.registry, "signalfire_notifier_reloads_total", result="ok") == 1,
            "the reload",
        )
        path.write_text(path.read_text().replace("channels: [ops]", "channels: [nope]"))
        await wait_until(
            lambda: value(service.registry, "signalfire_notifier_reloads_total", result="failed") == 1,
            "the refused reload",
        )
        [refused] = [r for r in caplog.records if r.getMessage().startswith("config not reloaded")]
        assert f"{path}:7: routes[0].channels[0]: unknown channel 'nope'" in refused.__dict__["reason"]
        a = alert()
        await publish_alert(nc, nats_config, a)
        await wait_until(lambda: receivers.transitions("after") == [(a.id, "firing")], "the reloaded channel")
        assert receivers.bodies("before") == []
    finally:
        await service.stop()

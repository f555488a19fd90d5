"""Attempts, backoff and results for one channel."""

from __future__ import annotations

import logging

import msgspec
import pytest

from signalfire.events import AlertEvent, DeliveryResult
from signalfire.notifier.channels import DeliveryError, Notification
from signalfire.notifier.channels.base import ChannelContext
from signalfire.notifier.channels.log import LogChannel, LogChannelConfig
from signalfire.notifier.delivery import MAX_RETRY_AFTER, RetryPolicy, deliver
from signalfire.ratelimit import TokenBucket

ALERT = msgspec.convert(
    {
        "id": "a1",
        "fingerprint": "f1",
        "rule": "DiskFull",
        "status": "firing",
        "severity": "critical",
        "host": "db-1",
        "starts_at": 1.0,
        "time": 2.0,
        "annotations": {"summary": "disk 95% full"},
    },
    AlertEvent,
)


class Scripted:
    """A channel whose attempts succeed or fail as scripted."""

    acknowledges = False

    def __init__(self, outcomes: list[DeliveryError | None]) -> None:
        self.name = "scripted"
        self.outcomes = outcomes
        self.calls = 0

    async def send(self, notification: Notification) -> None:
        outcome = self.outcomes[self.calls]
        self.calls += 1
        if outcome is not None:
            raise outcome


async def run(
    channel: Scripted, policy: RetryPolicy
) -> tuple[DeliveryResult, list[DeliveryResult], list[float]]:
    seen: list[DeliveryResult] = []
    waits: list[float] = []

    async def record(result: DeliveryResult) -> None:
        seen.append(result)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    final, _ = await deliver(channel, Notification(alert=ALERT), policy, record, sleep=sleep)
    return final, seen, waits


async def test_retryable_failures_are_retried_with_growing_waits_then_sent() -> None:
    channel = Scripted([DeliveryError("HTTP 500", retryable=True)] * 2 + [None])
    final, seen, waits = await run(channel, RetryPolicy(max_attempts=5, backoff=1, max_delay=60))
    assert [(r.status, r.attempt, r.error) for r in seen] == [
        ("retrying", 1, "HTTP 500"),
        ("retrying", 2, "HTTP 500"),
        ("sent", 3, None),
    ]
    assert final.status == "sent"
    assert waits == [1, 2]
    assert {(r.alert_id, r.channel, r.rule, r.host, r.transition) for r in seen} == {
        ("a1", "scripted", "DiskFull", "db-1", "firing")
    }


async def test_permanent_failure_is_not_retried() -> None:
    channel = Scripted([DeliveryError("HTTP 400: bad request", retryable=False)])
    final, seen, waits = await run(channel, RetryPolicy(max_attempts=5))
    assert [(r.status, r.attempt) for r in seen] == [("failed", 1)]
    assert final.error == "HTTP 400: bad request"
    assert waits == []


async def test_last_attempt_is_failed() -> None:
    channel = Scripted([DeliveryError("timed out", retryable=True)] * 3)
    final, seen, _ = await run(channel, RetryPolicy(max_attempts=3, backoff=0.1))
    assert [r.status for r in seen] == ["retrying", "retrying", "failed"]
    assert final.attempt == 3


async def test_retry_after_is_honoured() -> None:
    channel = Scripted([DeliveryError("HTTP 429", retryable=True, retry_after=30), None])
    _, _, waits = await run(channel, RetryPolicy(max_attempts=2, backoff=1, max_delay=10))
    assert waits == [30]


async def test_a_bug_in_a_channel_is_a_failure_not_a_crash() -> None:
    class Broken:
        name = "broken"
        acknowledges = False

        async def send(self, notification: Notification) -> None:
            raise KeyError("oops")

    final, _ = await deliver(Broken(), Notification(alert=ALERT), RetryPolicy(), record=_ignore)
    assert (final.status, final.error) == ("failed", "internal error: KeyError")


async def _ignore(result: DeliveryResult) -> None:
    pass


def test_backoff_doubles_up_to_the_cap_and_retry_after_has_a_ceiling() -> None:
    policy = RetryPolicy(max_attempts=10, backoff=2, max_delay=10)
    assert [policy.delay(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]
    assert policy.delay(1, retry_after=0.5) == 2
    assert policy.delay(1, retry_after=86400) == MAX_RETRY_AFTER


async def test_log_channel_writes_one_line_with_the_alert_fields(caplog: pytest.LogCaptureFixture) -> None:
    channel = LogChannel("dev", LogChannelConfig(level="error"), ChannelContext(http=None, environ={}))  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="signalfire.notifications"):
        await channel.send(Notification(alert=ALERT))
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "alert firing: DiskFull on db-1"
    assert (record.channel, record.alert_id, record.severity, record.summary) == (  # type: ignore[attr-defined]
        "dev",
        "a1",
        "critical",
        "disk 95% full",
    )


async def test_log_channel_names_the_labels_and_how_many_alerts_a_grouped_message_covers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = LogChannel("dev", LogChannelConfig(), ChannelContext(http=None, environ={}))  # type: ignore[arg-type]
    labelled = msgspec.structs.replace(ALERT, labels={"mount": "/var", "env": "prod"})
    other = msgspec.structs.replace(ALERT, id="a2", host="db-2")
    with caplog.at_level(logging.DEBUG, logger="signalfire.notifications"):
        await channel.send(Notification(alert=labelled, alerts=(labelled, other)))
    [record] = caplog.records
    assert record.labels == "env=prod,mount=/var"  # type: ignore[attr-defined]
    assert record.alerts == 2  # type: ignore[attr-defined]


async def test_a_429_pauses_the_whole_channel_for_its_retry_after() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = TokenBucket(0.0, clock=lambda: now[0], sleep=sleep)
    channel = Scripted([DeliveryError("HTTP 429", retryable=True, retry_after=30), None, None])
    final, _ = await deliver(
        channel, Notification(alert=ALERT), RetryPolicy(backoff=1), _ignore, sleep=sleep, limiter=limiter
    )
    assert final.status == "sent"
    assert waits == [30]  # the backoff waited the 30 s; the channel was free again afterwards
    limiter.hold(5)
    final, _ = await deliver(
        channel, Notification(alert=ALERT), RetryPolicy(), _ignore, sleep=sleep, limiter=limiter
    )
    assert waits == [30, 5]  # the next message waited for the hold too


async def test_rate_limit_spaces_attempts() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = TokenBucket(1.0, burst=1, clock=lambda: now[0], sleep=sleep)
    channel = Scripted([None, None, None])
    for _ in range(3):
        await deliver(
            channel, Notification(alert=ALERT), RetryPolicy(), _ignore, sleep=sleep, limiter=limiter
        )
    assert waits == [1.0, 1.0]

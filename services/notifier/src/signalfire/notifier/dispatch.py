"""The last stages of the pipeline, for one message to a list of channels: suppression
(silence, inhibition), the ledger claim, delivery with retries under the channel's rate
limit, the fallback channel, and the dead-letter record. Every outcome is reported as a
:class:`DeliveryResult` — one per alert the message covers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec
from nats.js.kv import KeyValue

from signalfire.events import AlertEvent, DeliveryResult
from signalfire.notifier.channels import Channel, ChannelSettings, Notification
from signalfire.notifier.deadletter import (
    ATTEMPTS_FAILED,
    RESOLVED_FIRST,
    SUPERSEDED,
    DeadLetter,
    dead_letter_key,
    record_dead_letter,
)
from signalfire.notifier.delivery import RetryPolicy, deliver, result_for
from signalfire.notifier.ledger import DeliveryLedger, SentMark, ledger_key
from signalfire.ratelimit import TokenBucket
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.notifier.dispatch")


def sent_result_id(key: str, alert_id: str) -> str:
    """The ``Nats-Msg-Id`` of the ``sent`` result of the message ``key`` (a ledger key) for
    ``alert_id`` (one of the alerts the message covers)."""
    return f"result.{key}.{alert_id}"


class Busy(Exception):
    """Another replica is sending this message right now: look again later. ``wait`` is
    the seconds until its claim expires should that replica have died (0: look again soon)."""

    def __init__(self, what: str, wait: float = 0.0) -> None:
        super().__init__(what)
        self.wait = wait


@dataclass(frozen=True)
class Outcome:
    channel: str
    #: ``duplicate``: sent before (by us or another replica); ``superseded``: a firing
    #: notice not sent because the alert's resolved event came first.
    status: Literal["sent", "failed", "suppressed", "duplicate", "superseded"]
    reference: str | None = None
    #: Of a ``superseded`` firing notice: the resolved event that came first, whose notice
    #: the channel is owed instead (None for a mark that does not keep it).
    resolved: AlertEvent | None = None


class Dispatcher:
    """Sends messages through configured channels on behalf of the service and its timers."""

    def __init__(
        self,
        *,
        channels: Mapping[str, Channel],
        settings: Mapping[str, ChannelSettings],
        ledger: DeliveryLedger,
        kv: KeyValue,
        publish: Callable[[DeliveryResult, str | None], Awaitable[None]],
        registry: Registry,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._channels = channels
        self._settings = settings
        self._policies = {name: RetryPolicy.of(config) for name, config in settings.items()}
        self._limiters = {
            name: TokenBucket(float(config.rate_limit), config.burst, sleep=sleep)
            for name, config in settings.items()
        }
        # channels a reload removed since start-up: a resolved notice still owed to one of
        # them is reported ``suppressed`` rather than dropped without a trace
        self._removed: set[str] = set()
        self._ledger = ledger
        self._kv = kv
        self._publish = publish
        # ledger key → the ``sent`` result (and its notification) we could not publish yet
        self._unreported: dict[str, tuple[DeliveryResult, Notification]] = {}
        self._clock = clock
        self._sleep = sleep
        self.deliveries = registry.counter(
            "deliveries",
            "Delivery attempts by channel and outcome (sent/retrying/failed/suppressed)",
            ["channel", "status"],
        )
        self.duplicates = registry.counter(
            "duplicates_skipped", "Deliveries skipped because the ledger shows them sent", ["channel"]
        )
        self.dead_letters = registry.counter(
            "dead_letters",
            "Notifications that will never be delivered (recorded as dead letters)",
            ["channel"],
        )
        self.delivery_seconds = registry.histogram(
            "delivery_duration_seconds",
            "Time a notification took through a channel, from its first attempt to the channel's "
            "last answer (sent or failed), rate-limit waits and retries included",
            ["channel"],
            # a webhook answers in milliseconds, SMTP and chat APIs in up to seconds, and
            # retries with back-off take tens of seconds
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
        )
        self.fallbacks = registry.counter(
            "fallbacks", "Notifications handed to a channel's fallback", ["channel"]
        )

    @property
    def ledger(self) -> DeliveryLedger:
        return self._ledger

    @property
    def channels(self) -> Mapping[str, Channel]:
        """The channels messages go through now (replaced by :meth:`reconfigure`)."""
        return self._channels

    @property
    def removed(self) -> frozenset[str]:
        """Channels a reload removed (and none added back) since start-up."""
        return frozenset(self._removed)

    def reconfigure(self, channels: Mapping[str, Channel], settings: Mapping[str, ChannelSettings]) -> None:
        """Send through ``channels`` from now on (a reload). Deliveries already under way
        finish on the channel objects they started with; a channel whose rate settings did
        not change keeps its token bucket (and a provider's ``Retry-After`` pause). A message
        for a channel no longer in ``channels`` is reported ``suppressed``."""
        self._removed = (self._removed | set(self._channels)) - set(channels)
        limiters = {}
        for name, config in settings.items():
            old = self._settings.get(name)
            same = old is not None and (old.rate_limit, old.burst) == (config.rate_limit, config.burst)
            limiters[name] = (
                self._limiters[name]
                if same and name in self._limiters
                else TokenBucket(float(config.rate_limit), config.burst, sleep=self._sleep)
            )
        self._channels = channels
        self._settings = settings
        self._policies = {name: RetryPolicy.of(config) for name, config in settings.items()}
        self._limiters = limiters

    async def send(
        self,
        notification: Notification,
        channels: list[str],
        alert_key: str,
        tag: str,
        *,
        suppressed: str | None = None,
        references: Mapping[str, str] | None = None,
    ) -> dict[str, Outcome]:
        """Send ``notification`` through each of ``channels`` (at the same time; only the
        failed ones are retried). ``suppressed`` is the reason it must not go out;
        ``references`` are what each channel returned for the alert's firing message. A
        channel a reload removed is reported ``suppressed``, not sent.

        Raises :class:`Busy` when another replica holds the claim of any channel (after the
        others are done).
        """
        sends = [
            self._one(
                msgspec.structs.replace(notification, reference=(references or {}).get(name)),
                name,
                alert_key,
                tag,
                suppressed,
                fallback=True,
            )
            for name in channels
        ]
        outcomes: list[Outcome | BaseException]
        if len(sends) == 1:  # the common case, without gather's task per channel
            try:
                outcomes = [await sends[0]]
            except Busy as exc:
                outcomes = [exc]
        else:
            outcomes = await asyncio.gather(*sends, return_exceptions=True)
        found: dict[str, Outcome] = {}
        waits: list[float] = []
        for outcome in outcomes:
            if isinstance(outcome, Busy):
                waits.append(outcome.wait)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                found[outcome.channel] = outcome
        if waits:
            raise Busy(f"{tag}: another replica is sending", min(waits))
        return found

    async def _report(
        self,
        result: DeliveryResult,
        notification: Notification,
        sent: str | None = None,
        *,
        count: bool = True,
    ) -> None:
        """Publish ``result`` for every alert ``notification`` covers. ``sent``: the ledger key
        of a ``sent`` result, which then goes out with a ``Nats-Msg-Id`` made of it
        (:func:`sent_result_id`), so that publishing it again is stored once."""
        if count:
            self.deliveries.labels(channel=result.channel, status=result.status).inc()
        for alert in notification.covered:
            msg_id = None if sent is None else sent_result_id(sent, alert.id)
            if alert.id == result.alert_id:
                await self._publish(result, msg_id)
            else:
                await self._publish(
                    msgspec.structs.replace(
                        result,
                        alert_id=alert.id,
                        fingerprint=alert.fingerprint,
                        rule=alert.rule,
                        host=alert.host,
                    ),
                    msg_id,
                )

    async def _one(
        self,
        notification: Notification,
        name: str,
        alert_key: str,
        tag: str,
        suppressed: str | None,
        *,
        fallback: bool,
    ) -> Outcome:
        # Taken once: a reload swapping the channels does not touch a delivery under way.
        channel, policy, limiter = (
            self._channels.get(name),
            self._policies.get(name),
            self._limiters.get(name),
        )
        if channel is None or policy is None or limiter is None:
            suppressed = suppressed or "the channel was removed by a config reload"
        if suppressed is not None:
            await self._report(
                result_for(notification, name, "suppressed", 1, reason=suppressed), notification
            )
            return Outcome(name, "suppressed")
        assert channel is not None and policy is not None and limiter is not None
        key = ledger_key(alert_key, tag, name)
        alert = notification.alert
        # a firing claim keeps the alert, for a resolved event that must send it first (:meth:`told`)
        keep = alert if tag == "firing" and not notification.alerts else None
        covered = [a.id for a in notification.alerts]
        claim = await self._ledger.claim(key, alert.id, name, tag, alert=keep, covered=covered)
        if claim.outcome == "busy":
            raise Busy(key, claim.wait)
        if claim.outcome == "done":
            return await self._done(notification, name, alert_key, tag, claim.mark, key=key)
        assert claim.mark is not None
        mark = claim.mark
        notification = msgspec.structs.replace(notification, delivery_id=key)

        async def record(result: DeliveryResult) -> None:
            if result.status == "retrying":
                log.warning(
                    "delivery attempt failed",
                    extra={
                        "channel": name,
                        "alert_id": alert.id,
                        "attempt": result.attempt,
                        "reason": result.error,
                    },
                )
                await self._report(result, notification)
            # ``sent`` is reported with the ledger mark; ``failed`` once we know what follows

        started = time.monotonic()
        result, reference = await deliver(
            channel, notification, policy, record, sleep=self._sleep, limiter=limiter
        )
        self.delivery_seconds.labels(channel=name).observe(time.monotonic() - started)
        if result.status == "sent":
            # The mark first and alone: a crash between the provider's answer and this write
            # makes a takeover send the message again (with the same delivery id).
            # Owed until published: when the bus fails the mark or the result, the event is
            # tried again, finds the message sent (:meth:`_done`) and publishes it then.
            self._unreported[key] = (result, notification)
            await self._ledger.finish(key, mark, "sent", result.attempt, reference)
            await self._report(result, notification, key)
            del self._unreported[key]
            return Outcome(name, "sent", reference)
        await self._ledger.finish(key, mark, "failed", result.attempt, None)
        log.warning(
            "delivery failed after the last attempt",
            extra={"channel": name, "alert_id": alert.id, "attempt": result.attempt, "reason": result.error},
        )
        if not fallback:
            await self._report(result, notification)
            return Outcome(name, "failed")  # a fallback: the channel it stands in for records the loss
        settings = self._settings.get(name)
        target = settings.fallback if settings is not None else None
        if target is not None and target in self._channels:
            self.fallbacks.labels(channel=name).inc()
            handed = await self._one(notification, target, alert_key, tag, None, fallback=False)
            if handed.status in ("sent", "duplicate"):
                await self._report(
                    msgspec.structs.replace(
                        result, reason=f"delivered through the fallback channel {target}"
                    ),
                    notification,
                )
                return Outcome(name, "failed")
        await self.dead_letter(
            notification,
            name,
            alert_key,
            tag,
            reason=ATTEMPTS_FAILED,
            error=result.error or "",
            attempts=result.attempt,
            fallback=target,
            result=result,
        )
        return Outcome(name, "failed")

    async def _done(
        self,
        notification: Notification,
        name: str,
        alert_key: str,
        tag: str,
        mark: SentMark | None,
        *,
        key: str,
    ) -> Outcome:
        """The outcome of a message the ledger already has an answer for. A ``sent`` result
        this replica could not publish (the bus away between the ``sent`` mark and the result,
        so the event is tried again) is published now, under the same ``Nats-Msg-Id``: the
        stream keeps one copy also when the first publish was stored but not acknowledged."""
        alert = notification.alert
        if mark is not None and mark.state == "failed":
            return Outcome(name, "failed")  # recorded (and dead-lettered) when it failed
        if mark is not None and mark.state == "superseded":
            resolved = mark.alert if mark.alert is not None and mark.alert.status == "resolved" else None
            if resolved is None:  # a mark from before the resolved event was kept in it
                await self.dead_letter(notification, name, alert_key, tag, reason=SUPERSEDED)
            else:
                await self._report(
                    result_for(notification, name, "suppressed", 1, reason=RESOLVED_FIRST), notification
                )
            return Outcome(name, "superseded", resolved=resolved)
        self.duplicates.labels(channel=name).inc()
        log.info("already sent; not sending again", extra={"alert_id": alert.id, "tag": tag, "channel": name})
        owed = self._unreported.get(key)
        if owed is not None:
            await self._report(*owed, key, count=False)
            self._unreported.pop(key, None)
        return Outcome(name, "duplicate", mark.reference if mark else None)

    async def dead_letter(
        self,
        notification: Notification,
        channel: str,
        alert_key: str,
        tag: str,
        *,
        reason: str,
        error: str = "",
        attempts: int = 0,
        fallback: str | None = None,
        result: DeliveryResult | None = None,
    ) -> None:
        """Record that ``notification`` will never reach ``channel``: the dead letter in KV,
        an error log line, ``dead_letters_total`` and a ``failed`` DeliveryResult whose
        reason starts with ``dead letter:`` (``result``, the last attempt's, when there is one)."""
        alert = notification.alert
        self.dead_letters.labels(channel=channel).inc()
        log.error(
            "dead letter: notification will not be delivered",
            extra={
                "channel": channel,
                "alert_id": alert.id,
                "transition": notification.kind,
                "reason": reason,
                "error": error,
            },
        )
        letter = DeadLetter(
            alert=alert,
            transition=notification.kind,
            channel=channel,
            attempts=attempts,
            error=error,
            time=self._clock(),
            fallback=fallback,
            reason=reason,
        )
        await record_dead_letter(self._kv, dead_letter_key(alert_key, tag, channel), letter)
        if result is None:
            result = result_for(notification, channel, "failed", max(attempts, 1), error=error or None)
        await self._report(msgspec.structs.replace(result, reason=f"dead letter: {reason}"), notification)

    async def told(self, alert: AlertEvent, alert_key: str, asked: list[tuple[str, str]]) -> list[str]:
        """Which channels of ``asked`` (``(tag, channel)`` pairs: ``firing`` or an escalation
        step ``esc<epoch>-<i>``) were sent that message about ``alert``, whose resolved event
        is being handled: only those get the resolved notice. A resolved notice never
        overtakes a message in flight.

        - ``sent``: told. ``failed``, ``superseded``: not told.
        - in flight (another replica's fresh claim): :class:`Busy`, so the resolved waits;
        - a dead replica's firing claim: taken over and the firing notice sent now, from the
          alert kept in the claim, before the resolved notice; a dead replica's escalation
          claim: marked ``superseded`` (the alert resolved; the step is not sent any more);
        - no firing record at all: not told, and the firing notice is marked ``superseded``
          (keeping ``alert``) so a firing event redelivered later (after a crash) is not sent
          after its resolved: the channel is sent this resolved notice then, which says when
          the alert fired (:meth:`_done`). No escalation record: the step was not sent (and
          will not be: the resolved deletes the track).
        - a channel a reload removed (:attr:`removed`) is only read: told when its message
          was sent; nothing is written or sent for it.
        """

        async def one(tag: str, name: str) -> bool:
            key = ledger_key(alert_key, tag, name)
            firing = tag == "firing"
            for _ in range(10):
                found = await self._ledger.read(key)
                if name not in self._channels:
                    # removed: a delivery under way on the old channel is waited for, the rest is history
                    mark = found[0] if found is not None else None
                    if mark is not None and mark.state == "sending" and not self._ledger.abandoned(key, mark):
                        raise Busy(key, max(0.0, self._ledger.lease - (self._clock() - mark.time)))
                    return mark is not None and mark.state == "sent"
                if found is None:
                    if not firing or await self._ledger.close(
                        key, alert.id, name, tag, "superseded", alert=alert
                    ):
                        return False
                    continue
                mark, revision = found
                if mark.state != "sending":
                    return mark.state == "sent"
                if not self._ledger.abandoned(key, mark):
                    raise Busy(key, max(0.0, self._ledger.lease - (self._clock() - mark.time)))
                if not firing or mark.alert is None:
                    if await self._ledger.close(
                        key, alert.id, name, tag, "superseded", last=revision, alert=alert if firing else None
                    ):
                        return False
                    continue
                outcome = await self._one(
                    Notification(alert=mark.alert), name, alert_key, "firing", None, fallback=True
                )
                return outcome.status in ("sent", "duplicate")
            raise Busy(key)  # the key keeps changing under us: look again later

        pairs = [(tag, name) for tag, name in asked if name in self._channels or name in self._removed]
        answers = await asyncio.gather(*(one(tag, name) for tag, name in pairs), return_exceptions=True)
        waits: list[float] = []
        told: list[str] = []
        for (_, name), answer in zip(pairs, answers, strict=True):
            if isinstance(answer, Busy):
                waits.append(answer.wait)
            elif isinstance(answer, BaseException):
                raise answer
            elif answer and name not in told:
                told.append(name)
        if waits:
            raise Busy(f"{alert.id}: a message before its resolved notice is being sent", min(waits))
        return told

    async def covered(self, group: str, tag: str, channels: list[str]) -> set[str] | None:
        """The alerts an earlier try of the group or digest message ``tag`` covered, from the
        ledger marks of ``channels`` (None when no channel's message was claimed yet): a
        flush tried again sends every channel that same message, and takes only those alerts
        out of its batch."""
        earlier = [
            set(mark.covered) for mark in await self._marks(group, tag, channels) if mark and mark.covered
        ]
        return set().union(*earlier) if earlier else None

    async def resolved_first(self, alert_key: str, channels: list[str]) -> bool:
        """Whether the alert's resolved event was handled before this firing event: the
        ``firing`` mark of one of ``channels`` is ``superseded`` (:meth:`told`,
        :meth:`supersede`). A grouped route checks it before it batches a firing alert."""
        marks = await self._marks(alert_key, "firing", channels)
        return any(mark is not None and mark.state == "superseded" for mark in marks)

    async def _marks(self, key: str, tag: str, channels: list[str]) -> list[SentMark | None]:
        """The ledger's marks of message ``tag`` of ``key`` (an alert's or a group's) for
        each of ``channels``, read at once."""
        return list(await asyncio.gather(*(self._ledger.mark(ledger_key(key, tag, n)) for n in channels)))

    async def supersede(self, alert: AlertEvent, alert_key: str, channels: list[str]) -> None:
        """Record that ``alert`` (a resolved event) came: a ``superseded`` ``firing`` mark for
        each of ``channels`` that has none, so a firing event redelivered after it is not
        batched and sent late (:meth:`resolved_first`). A grouped route's messages are marked
        by their batch, not by alert, so its alerts' ``firing`` keys are free for this."""
        await asyncio.gather(
            *(
                self._ledger.close(
                    ledger_key(alert_key, "firing", n), alert.id, n, "firing", "superseded", alert=alert
                )
                for n in channels
            )
        )

    async def give_up(self, alert: AlertEvent, channels: list[str], alert_key: str, reason: str) -> None:
        """JetStream stopped redelivering ``alert``'s event: dead-letter its message for every
        one of ``channels`` that has none recorded (or only a dead replica's claim), and mark
        it ``failed`` so nothing is left ``sending``. A resolved notice only counts for
        channels that were sent the firing notice; a live replica's claim is left to it."""
        tag = alert.status
        notification = Notification(alert=alert)
        for name in dict.fromkeys(channels):
            if name not in self._channels:
                continue
            if tag == "resolved":
                firing = await self._ledger.mark(ledger_key(alert_key, "firing", name))
                if firing is None or firing.state != "sent":
                    continue
            key = ledger_key(alert_key, tag, name)
            for _ in range(10):
                found = await self._ledger.read(key)
                if found is None:
                    closed = await self._ledger.close(key, alert.id, name, tag, "failed")
                elif self._ledger.abandoned(key, found[0]):
                    closed = await self._ledger.close(key, alert.id, name, tag, "failed", last=found[1])
                else:
                    break  # sent, failed, superseded, or a live replica is on it
                if closed:
                    await self.dead_letter(notification, name, alert_key, tag, reason=reason)
                    break

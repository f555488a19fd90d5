"""The last stages of the pipeline, for one message to a list of channels: suppression
(silence, inhibition), the ledger claim, delivery with retries under the channel's rate
limit, the fallback channel, and the dead-letter record. Every outcome is reported as a
:class:`DeliveryResult` — one per alert the message covers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec
from nats.js.kv import KeyValue

from signalfire.events import DeliveryResult
from signalfire.notifier.channels import Channel, ChannelSettings, Notification
from signalfire.notifier.deadletter import DeadLetter, record_dead_letter
from signalfire.notifier.delivery import RetryPolicy, deliver, result_for
from signalfire.notifier.ledger import DeliveryLedger, SentMark, ledger_key
from signalfire.notifier.ratelimit import TokenBucket
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.notifier.dispatch")


class Busy(Exception):
    """Another replica is sending this message right now: look again later."""


@dataclass(frozen=True)
class Outcome:
    channel: str
    status: Literal["sent", "failed", "suppressed", "duplicate"]
    reference: str | None = None


class Dispatcher:
    """Sends messages through configured channels on behalf of the service and its timers."""

    def __init__(
        self,
        *,
        channels: Mapping[str, Channel],
        settings: Mapping[str, ChannelSettings],
        ledger: DeliveryLedger,
        kv: KeyValue,
        publish: Callable[[DeliveryResult], Awaitable[None]],
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
        self._ledger = ledger
        self._kv = kv
        self._publish = publish
        self._clock = clock
        self._sleep = sleep
        self.deliveries = registry.counter(
            "deliveries_total",
            "Delivery attempts by channel and outcome (sent/retrying/failed/suppressed)",
            ["channel", "status"],
        )
        self.duplicates = registry.counter(
            "duplicates_skipped_total", "Deliveries skipped because the ledger shows them sent", ["channel"]
        )
        self.dead_letters = registry.counter(
            "dead_letters_total", "Notifications no channel accepted after the last attempt", ["channel"]
        )
        self.fallbacks = registry.counter(
            "fallbacks_total", "Notifications handed to a channel's fallback", ["channel"]
        )

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
        ``references`` are what each channel returned for the alert's firing message.

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
            if name in self._channels
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
        busy = False
        for outcome in outcomes:
            if isinstance(outcome, Busy):
                busy = True
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                found[outcome.channel] = outcome
        if busy:
            raise Busy(f"{tag}: another replica is sending")
        return found

    async def _report(self, result: DeliveryResult, notification: Notification) -> None:
        self.deliveries.inc(channel=result.channel, status=result.status)
        for alert in notification.covered:
            if alert.id == result.alert_id:
                await self._publish(result)
            else:
                await self._publish(
                    msgspec.structs.replace(
                        result,
                        alert_id=alert.id,
                        fingerprint=alert.fingerprint,
                        rule=alert.rule,
                        host=alert.host,
                    )
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
        if suppressed is not None:
            await self._report(
                result_for(notification, name, "suppressed", 1, reason=suppressed), notification
            )
            return Outcome(name, "suppressed")
        key = ledger_key(alert_key, tag, name)
        alert = notification.alert
        claimed = await self._ledger.claim(key, alert.id, name, tag)
        if claimed == "done":
            self.duplicates.inc(channel=name)
            mark = await self._ledger.mark(key)
            log.info(
                "already sent; not sending again", extra={"alert_id": alert.id, "tag": tag, "channel": name}
            )
            return Outcome(name, "duplicate", mark.reference if mark else None)
        if claimed == "busy":
            raise Busy(key)
        mark = SentMark(
            alert_id=alert.id,
            channel=name,
            tag=tag,
            owner=self._ledger.owner,
            state="sending",
            time=self._clock(),
        )

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
                await self._ledger.refresh(key, mark)
            if result.status != "sent":
                await self._report(result, notification)

        result, reference = await deliver(
            self._channels[name],
            notification,
            self._policies[name],
            record,
            sleep=self._sleep,
            limiter=self._limiters[name],
        )
        if result.status == "sent":
            # the mark and the result are independent writes: make them at the same time
            await asyncio.gather(
                self._ledger.finish(key, mark, "sent", result.attempt, reference),
                self._report(result, notification),
            )
            return Outcome(name, "sent", reference)
        await self._ledger.finish(key, mark, "failed", result.attempt, None)
        log.warning(
            "delivery failed after the last attempt",
            extra={"channel": name, "alert_id": alert.id, "attempt": result.attempt, "reason": result.error},
        )
        if not fallback:
            return Outcome(name, "failed")  # a fallback: the channel it stands in for records the loss
        target = self._settings[name].fallback
        if target is not None and target in self._channels:
            self.fallbacks.inc(channel=name)
            handed = await self._one(notification, target, alert_key, tag, None, fallback=False)
            if handed.status in ("sent", "duplicate"):
                return Outcome(name, "failed")
        self.dead_letters.inc(channel=name)
        letter = DeadLetter(
            alert=alert,
            transition=notification.kind,
            channel=name,
            attempts=result.attempt,
            error=result.error or "",
            time=self._clock(),
            fallback=target,
        )
        await record_dead_letter(self._kv, f"deadletter.{alert_key}.{tag}.{name}", letter)
        return Outcome(name, "failed")

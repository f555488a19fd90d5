"""Delivering one notification through one channel: attempts, backoff, results.

Only the channel that failed is retried; every attempt is reported as a
:class:`~signalfire.events.DeliveryResult` (``retrying`` between attempts, then ``sent``
or ``failed``) to a ``record`` callback, which the service publishes and the CLI prints.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from signalfire.events import DeliveryResult
from signalfire.notifier.channels import Channel, ChannelSettings, DeliveryError, Notification
from signalfire.ratelimit import TokenBucket

log = logging.getLogger("signalfire.notifier.delivery")

#: The longest ``Retry-After`` honoured; a receiver asking for more is retried after this.
MAX_RETRY_AFTER = 600.0

Record = Callable[[DeliveryResult], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one channel is retried."""

    max_attempts: int = 3
    backoff: float = 1.0
    max_delay: float = 60.0

    @classmethod
    def of(cls, config: ChannelSettings) -> RetryPolicy:
        return cls(config.max_attempts, float(config.retry_backoff), float(config.retry_max_delay))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential
        backoff capped at ``max_delay``, but never sooner than the receiver asked."""
        wait: float = min(self.backoff * 2.0 ** (attempt - 1), self.max_delay)
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
        return wait


def result_for(
    notification: Notification,
    channel: str,
    status: str,
    attempt: int,
    *,
    error: str | None = None,
    reason: str | None = None,
) -> DeliveryResult:
    """The :class:`DeliveryResult` of one attempt (or of a suppressed delivery)."""
    alert = notification.alert
    return DeliveryResult(
        alert_id=alert.id,
        channel=channel,
        status=status,  # type: ignore[arg-type]
        attempt=attempt,
        time=time.time(),
        transition=notification.kind,
        fingerprint=alert.fingerprint,
        rule=alert.rule,
        host=alert.host,
        error=error,
        reason=reason,
    )


async def deliver(
    channel: Channel,
    notification: Notification,
    policy: RetryPolicy,
    record: Record,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    limiter: TokenBucket | None = None,
) -> tuple[DeliveryResult, str | None]:
    """Send until the channel accepts, fails permanently, or ``policy.max_attempts`` is spent.

    Every attempt first waits for ``limiter`` (the channel's rate limit); a receiver's
    ``Retry-After`` pauses the whole channel, not only this message. Returns the last result
    (``sent`` or ``failed``), after ``record`` has seen every attempt, and the reference the
    channel returned.
    """
    attempt = 1
    while True:
        try:
            if limiter is not None:
                await limiter.acquire()
            reference = await channel.send(notification)
        except DeliveryError as exc:
            if exc.retry_after is not None and limiter is not None:
                limiter.hold(min(exc.retry_after, MAX_RETRY_AFTER))
            final = not exc.retryable or attempt >= policy.max_attempts
            result = result_for(
                notification, channel.name, "failed" if final else "retrying", attempt, error=str(exc)
            )
            await record(result)
            if final:
                return result, None
            await sleep(policy.delay(attempt, exc.retry_after))
            attempt += 1
        except Exception as exc:
            # A bug in a channel must not take the other channels or the service down.
            log.exception("channel raised an unexpected error", extra={"channel": channel.name})
            result = result_for(
                notification, channel.name, "failed", attempt, error=f"internal error: {type(exc).__name__}"
            )
            await record(result)
            return result, None
        else:
            result = result_for(notification, channel.name, "sent", attempt)
            await record(result)
            return result, reference

"""What every channel shares: the notification it is given, the protocol it implements,
the one error it raises, and the settings every channel's config carries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
import msgspec

from signalfire.config import Duration
from signalfire.events import AlertEvent


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """One alert transition to tell people about. ``test`` marks ``signalfire notify test``."""

    alert: AlertEvent
    test: bool = False


class DeliveryError(Exception):
    """A delivery that did not succeed.

    ``retryable`` says whether the same message may succeed later (timeouts, 429, 5xx);
    ``retry_after`` is the wait in seconds the receiver asked for, if it asked.
    ``str()`` is safe to log and to publish: it never contains secrets or URLs.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Channel(Protocol):
    """A configured destination. ``send`` returns when the receiver has accepted the
    notification and raises :class:`DeliveryError` otherwise; it makes one attempt,
    retries are the caller's business."""

    name: str

    async def send(self, notification: Notification) -> None: ...


@dataclass(frozen=True)
class ChannelContext:
    """Resources channels share, owned by whoever builds them (the service or the CLI)."""

    http: httpx.AsyncClient
    environ: Mapping[str, str]


class ChannelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """Settings every channel type has; each type's config subclasses this with its ``tag``."""

    #: Attempts per notification, the first one included.
    max_attempts: int = 3
    #: Wait before the second attempt; doubles with every further attempt.
    retry_backoff: Duration = Duration(1)
    #: Longest wait between attempts (a receiver's ``Retry-After`` may ask for more, up to 10 min).
    retry_max_delay: Duration = Duration(60)

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ValueError(f"max_attempts: expected 1 to 100, got {self.max_attempts}")

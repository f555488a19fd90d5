"""What every channel shares: the notification it is given, the protocol it implements,
the one error it raises, and the settings every channel's config carries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import aiohttp
import msgspec

from signalfire.config import ConfigError, Duration
from signalfire.events import AlertEvent

#: What a notification tells people: the alert's own transition, a reminder (``repeat``),
#: the next escalation step, a person's acknowledgement, or ``signalfire notify test``.
Transition = Literal["firing", "resolved", "acknowledged", "repeat", "escalation", "test"]


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """One message to send through one channel.

    ``alert`` is the alert it is about; a grouped or digest message covers every alert in
    ``alerts`` (``alert`` is then the first of them). ``reference`` is what the channel
    returned when it sent this alert's ``firing`` message (a Slack message ``ts``), so a
    later message can thread under it. ``delivery_id`` is the message's idempotency key
    (None for ``signalfire notify test``).
    """

    alert: AlertEvent
    test: bool = False
    transition: Transition | None = None
    alerts: tuple[AlertEvent, ...] = ()
    reference: str | None = None
    digest: bool = False
    #: The ledger key of this message (``sent.<alert>.<tag>.<channel>``): the same for every
    #: attempt and for a re-send after a crash, so a receiver can drop what it already has.
    delivery_id: str | None = None

    @property
    def kind(self) -> Transition:
        """The transition this message announces (``test`` for ``notify test``)."""
        if self.transition is not None:
            return self.transition
        return "test" if self.test else self.alert.status

    @property
    def covered(self) -> tuple[AlertEvent, ...]:
        """Every alert the message is about (one, unless grouped or a digest)."""
        return self.alerts or (self.alert,)


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
    retries are the caller's business. It may return a reference to the message it
    created (kept with the sent mark and handed back as ``Notification.reference``).

    ``acknowledges`` says whether the channel is told about acknowledgements (PagerDuty);
    other channels only hear about firing, resolved, repeat and escalation messages.
    """

    name: str
    acknowledges: bool

    async def send(self, notification: Notification) -> str | None: ...


@dataclass(frozen=True)
class ChannelContext:
    """Resources channels share, owned by whoever builds them (the service or the CLI)."""

    http: aiohttp.ClientSession
    environ: Mapping[str, str]

    def secret(self, channel: str, what: str, env: str | None, file: str | None) -> str | None:
        """A secret named by a channel's ``<what>_env`` or ``<what>_file`` setting
        (:func:`read_secret`)."""
        return read_secret(self.environ, f"channels.{channel}", what, env, file)


def read_secret(
    environ: Mapping[str, str], owner: str, what: str, env: str | None, file: str | None
) -> str | None:
    """A secret named by the ``<what>_env`` or ``<what>_file`` setting of ``owner`` (a field
    path: ``channels.pager``, ``heartbeat``).

    Secrets never live in ``notify.yaml``: the YAML names an environment variable or a
    file. Raises ``ConfigError`` naming the setting when it is set but empty or
    unreadable; returns None when neither is set.
    """
    if env is not None:
        value = environ.get(env, "").strip()
        if not value:
            raise ConfigError(
                f"environment variable {env} is not set (it must hold the {what.replace('_', ' ')})",
                field=f"{owner}.{what}_env",
            )
        return value
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {file}: {exc.strerror or exc}", field=f"{owner}.{what}_file"
            ) from None
        if not value:
            raise ConfigError(f"{file} is empty", field=f"{owner}.{what}_file")
        return value
    return None


class ChannelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """Settings every channel type has; each type's config subclasses this with its ``tag``."""

    #: Attempts per notification, the first one included.
    max_attempts: int = 3
    #: Wait before the second attempt; doubles with every further attempt.
    retry_backoff: Duration = Duration(1)
    #: Longest wait between attempts (a receiver's ``Retry-After`` may ask for more, up to 10 min).
    retry_max_delay: Duration = Duration(60)
    #: Messages per second this channel sends at most (a token bucket); 0 means no limit.
    rate_limit: float = 0.0
    #: Messages sent back to back before ``rate_limit`` applies.
    burst: int = 1
    #: Channel that gets the notification when this one failed for good.
    fallback: str | None = None
    #: Requests to the provider in flight at once (each on its own keep-alive connection).
    #: 16 lets the sends that finish together record their results in one write to NATS:
    #: with 4, one notifier spent a third more CPU per alert at 1,000 alerts/s.
    concurrency: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ValueError(f"max_attempts: expected 1 to 100, got {self.max_attempts}")
        if self.rate_limit < 0:
            raise ValueError("rate_limit: must be 0 (no limit) or more")
        if not 1 <= self.concurrency <= 100:
            raise ValueError(f"concurrency: expected 1 to 100, got {self.concurrency}")
        if not 1 <= self.burst <= 10_000:
            raise ValueError(f"burst: expected 1 to 10000, got {self.burst}")

"""The generic ``webhook`` channel: a signed JSON POST per notification.

Body (``WebhookBody``)::

    {"version": 1, "status": "firing", "alert": {...AlertEvent...}, "channel": "ops-hook",
     "sent_at": 1763794800.123, "test": false}

With ``secret_env`` set, ``X-Signalfire-Signature: sha256=<hex HMAC-SHA256 of the body>``
lets the receiver check the sender; ``sent_at`` is inside the signed body, so a receiver can
also refuse old (replayed) deliveries. ``X-Signalfire-Timestamp`` repeats it in whole seconds.

``X-Signalfire-Delivery-Id`` (and the same value as ``Idempotency-Key``) names the message:
every attempt of it, and a re-send by another notifier after a crash, carry the same id, so a
receiver that remembers the ids it processed sees each message once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Literal

import msgspec

from signalfire.config import Duration
from signalfire.events import AlertEvent
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, Notification, Transition
from signalfire.notifier.channels.http import parse_retry_after, post

__all__ = [
    "WebhookBody",
    "WebhookChannel",
    "WebhookChannelConfig",
    "parse_retry_after",
    "signature",
    "verify",
]

SIGNATURE_HEADER = "X-Signalfire-Signature"
TIMESTAMP_HEADER = "X-Signalfire-Timestamp"
DELIVERY_ID_HEADER = "X-Signalfire-Delivery-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "signalfire-notifier/1"
#: Headers the channel sets itself; a configured header of the same name is ignored.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in ("Content-Type", SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_ID_HEADER, IDEMPOTENCY_HEADER)
)


class WebhookChannelConfig(ChannelSettings, tag="webhook"):
    """``type: webhook``. The HMAC secret is read from the variable named by ``secret_env``
    (or the file ``secret_file``), never written in the YAML."""

    url: str
    headers: dict[str, str] = {}
    secret_env: str | None = None
    secret_file: str | None = None
    timeout: Duration = Duration(10)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url: expected an http:// or https:// URL")
        if self.timeout <= 0:
            raise ValueError("timeout: must be more than 0")


class WebhookBody(msgspec.Struct, kw_only=True):
    """The JSON document POSTed to the receiver (version 1)."""

    version: Literal[1]
    status: Literal["firing", "resolved"]
    alert: AlertEvent
    channel: str
    sent_at: float
    test: bool = False
    transition: Transition = "firing"
    #: Every alert of a grouped or digest message (``alert`` is the first); else empty.
    alerts: list[AlertEvent] = []


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Signalfire-Signature`` value for ``body``: ``sha256=<hex digest>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` (constant-time; for receivers and tests)."""
    return hmac.compare_digest(signature(secret, body), header)


class WebhookChannel:
    """POSTs :class:`WebhookBody`; 2xx is sent, 408/429/5xx and network errors are retryable
    (honouring ``Retry-After``), any other status is a permanent failure."""

    acknowledges = False

    def __init__(self, name: str, config: WebhookChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._config = config
        self._headers = {
            "User-Agent": USER_AGENT,
            **{k: v for k, v in config.headers.items() if k.lower() not in RESERVED_HEADERS},
        }
        self._http = context.http
        self._slots = asyncio.Semaphore(config.concurrency)
        secret = context.secret(name, "secret", config.secret_env, config.secret_file)
        self._secret = secret.encode() if secret is not None else None

    async def send(self, notification: Notification) -> None:
        sent_at = round(time.time(), 3)
        body = msgspec.json.encode(
            WebhookBody(
                version=1,
                status=notification.alert.status,
                alert=notification.alert,
                channel=self.name,
                sent_at=sent_at,
                test=notification.test,
                transition=notification.kind,
                alerts=list(notification.alerts) if len(notification.alerts) > 1 else [],
            )
        )
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(int(sent_at)),
        }
        if notification.delivery_id is not None:
            headers[DELIVERY_ID_HEADER] = headers[IDEMPOTENCY_HEADER] = notification.delivery_id
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        await post(
            self._http,
            self._config.url,
            timeout=float(self._config.timeout),
            slots=self._slots,
            body=body,
            headers=headers,
        )

"""The generic ``webhook`` channel: a signed JSON POST per notification.

Body (``WebhookBody``)::

    {"version": 1, "status": "firing", "alert": {...AlertEvent...}, "channel": "ops-hook",
     "sent_at": 1763794800.123, "test": false}

With ``secret_env`` set, ``X-Signalfire-Signature: sha256=<hex HMAC-SHA256 of the body>``
lets the receiver check the sender; ``sent_at`` is inside the signed body, so a receiver can
also refuse old (replayed) deliveries. ``X-Signalfire-Timestamp`` repeats it in whole seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
import msgspec

from signalfire.config import ConfigError, Duration
from signalfire.events import AlertEvent
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, DeliveryError, Notification

SIGNATURE_HEADER = "X-Signalfire-Signature"
TIMESTAMP_HEADER = "X-Signalfire-Timestamp"
USER_AGENT = "signalfire-notifier/1"
#: Headers the channel sets itself; a configured header of the same name is ignored.
RESERVED_HEADERS = frozenset({"content-type", SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower()})


class WebhookChannelConfig(ChannelSettings, tag="webhook"):
    """``type: webhook``. The HMAC secret is read from the variable named by ``secret_env``,
    never written in the YAML."""

    url: str
    headers: dict[str, str] = {}
    secret_env: str | None = None
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


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Signalfire-Signature`` value for ``body``: ``sha256=<hex digest>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` (constant-time; for receivers and tests)."""
    return hmac.compare_digest(signature(secret, body), header)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


class WebhookChannel:
    """POSTs :class:`WebhookBody`; 2xx is sent, 408/429/5xx and network errors are retryable
    (honouring ``Retry-After``), any other status is a permanent failure."""

    def __init__(self, name: str, config: WebhookChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._config = config
        self._headers = {
            "User-Agent": USER_AGENT,
            **{k: v for k, v in config.headers.items() if k.lower() not in RESERVED_HEADERS},
        }
        self._http = context.http
        self._secret: bytes | None = None
        if config.secret_env is not None:
            secret = context.environ.get(config.secret_env)
            if not secret:
                raise ConfigError(
                    f"environment variable {config.secret_env} is not set (it must hold the HMAC secret)",
                    field=f"channels.{name}.secret_env",
                )
            self._secret = secret.encode()

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
            )
        )
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(int(sent_at)),
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        try:
            response = await self._http.post(
                self._config.url, content=body, headers=headers, timeout=float(self._config.timeout)
            )
        except httpx.TimeoutException:
            raise DeliveryError(
                f"no answer within {float(self._config.timeout):g}s", retryable=True
            ) from None
        except httpx.TransportError as exc:
            raise DeliveryError(f"request failed: {type(exc).__name__}: {exc}", retryable=True) from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"request failed: {type(exc).__name__}: {exc}", retryable=False) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = " ".join(response.text[:200].split())
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            raise DeliveryError(message, retryable=True, retry_after=retry_after)
        raise DeliveryError(message, retryable=False)

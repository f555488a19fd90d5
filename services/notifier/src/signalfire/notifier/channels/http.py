"""One HTTP request to a provider, and what its answer means for retries.

Every HTTP channel (webhook, Discord, PagerDuty, Twilio) posts through :func:`post`, so they
agree on what is retryable: timeouts, connection errors, 408, 429 and 5xx are; any other
non-2xx answer is a permanent failure. Error texts carry the status and the start of the
response body, never the URL (provider URLs often hold secrets).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from signalfire.notifier.channels.base import DeliveryError

#: Libraries that log request URLs (httpx at INFO, slack-sdk and httpcore at DEBUG): provider
#: URLs hold secrets (Slack and Discord webhook tokens), so they log warnings only.
URL_LOGGERS = ("httpx", "httpcore", "slack_sdk", "aiosmtplib")


def quiet_url_loggers() -> None:
    """Keep secrets out of the log: raise the URL-logging libraries' loggers to WARNING."""
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


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


async def post(
    http: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,
    retry_after: Callable[[httpx.Response], float | None] | None = None,
    slots: asyncio.Semaphore | None = None,
    **request: Any,
) -> httpx.Response:
    """POST and return a 2xx response; raise :class:`DeliveryError` for anything else.

    ``retry_after`` reads a provider's own back-off hint from a 429 body (Discord's
    ``retry_after``); the ``Retry-After`` header is always honoured.
    """
    try:
        if slots is None:
            response = await http.post(url, timeout=timeout, **request)
        else:
            async with slots:
                response = await http.post(url, timeout=timeout, **request)
    except httpx.TimeoutException:
        raise DeliveryError(f"no answer within {timeout:g}s", retryable=True) from None
    except httpx.TransportError as exc:
        raise DeliveryError(f"request failed: {type(exc).__name__}: {exc}", retryable=True) from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"request failed: {type(exc).__name__}: {exc}", retryable=False) from None
    status = response.status_code
    if 200 <= status < 300:
        return response
    detail = " ".join(response.text[:200].split())
    message = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in (408, 429) or status >= 500:
        wait = parse_retry_after(response.headers.get("Retry-After"), time.time())
        if status == 429 and retry_after is not None:
            hinted = retry_after(response)
            if hinted is not None:
                wait = max(wait or 0.0, hinted)
        raise DeliveryError(message, retryable=True, retry_after=wait)
    raise DeliveryError(message, retryable=False)

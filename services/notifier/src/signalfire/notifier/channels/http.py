"""One HTTP request to a provider, and what its answer means for retries.

Every HTTP channel (webhook, Discord, PagerDuty, Twilio) posts through :func:`post`, and the
heartbeat requests with :func:`get`, so they agree on what is retryable: timeouts, connection
errors, 408, 429 and 5xx are; any other non-2xx answer is a permanent failure. Error texts
carry the status and the start of the response body, never the URL (provider URLs often hold
secrets).

The client is aiohttp: one :func:`new_session` (a keep-alive connection pool) shared by
every channel of a process. It costs about a sixth of the CPU per request that httpx did,
which is what lets one notifier carry 1,000 webhook deliveries a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import msgspec

from signalfire.notifier.channels.base import DeliveryError

#: Libraries that log request URLs (aiohttp's client, slack-sdk at DEBUG): provider URLs
#: hold secrets (Slack and Discord webhook tokens), so they log warnings only.
URL_LOGGERS = ("aiohttp.client", "slack_sdk", "aiosmtplib")
#: Connections kept to providers in all (each channel also limits its own, ``concurrency``).
MAX_CONNECTIONS = 64


def new_session() -> aiohttp.ClientSession:
    """The HTTP client the channels share (call it inside the running event loop; close it
    with ``await session.close()``). It connects straight to each channel's URL: a proxy is
    configured as the channel's base URL, not read from ``HTTPS_PROXY`` or ``~/.netrc``
    (aiohttp would read both again, in a thread, for every request)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS), trust_env=False, raise_for_status=False
    )


@dataclass(frozen=True)
class Reply:
    """A provider's 2xx answer, read in full."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; raises ``ValueError`` when it is not."""
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as exc:
            raise ValueError(str(exc)) from None


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
    http: aiohttp.ClientSession,
    url: str,
    *,
    timeout: float,
    body: bytes | None = None,
    json: Any = None,
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    retry_after: Callable[[Reply], float | None] | None = None,
    slots: asyncio.Semaphore | None = None,
) -> Reply:
    """POST ``body`` (bytes), ``json`` (encoded here) or ``form`` (URL-encoded) and return a
    2xx reply; raise :class:`DeliveryError` for anything else. Redirects are not followed.

    ``retry_after`` reads a provider's own back-off hint from a 429 body (Discord's
    ``retry_after``); the ``Retry-After`` header is always honoured.
    """
    sent_headers = dict(headers or {})
    data: Any = body
    if json is not None:
        data = msgspec.json.encode(json)
        sent_headers.setdefault("Content-Type", "application/json")
    elif form is not None:
        data = dict(form)
    return await _request(
        http,
        "POST",
        url,
        timeout=timeout,
        data=data,
        headers=sent_headers,
        retry_after=retry_after,
        slots=slots,
    )


async def get(
    http: aiohttp.ClientSession, url: str, *, timeout: float, headers: Mapping[str, str] | None = None
) -> Reply:
    """GET ``url`` and return a 2xx reply; raise :class:`DeliveryError` for anything else,
    as :func:`post` does."""
    return await _request(http, "GET", url, timeout=timeout, data=None, headers=dict(headers or {}))


async def _request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeout: float,
    data: Any,
    headers: dict[str, str],
    retry_after: Callable[[Reply], float | None] | None = None,
    slots: asyncio.Semaphore | None = None,
) -> Reply:
    try:
        if slots is None:
            reply = await _send(http, method, url, timeout=timeout, data=data, headers=headers)
        else:
            async with slots:
                reply = await _send(http, method, url, timeout=timeout, data=data, headers=headers)
    except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
        raise DeliveryError(f"no answer within {timeout:g}s", retryable=True) from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        # refused, reset, TLS failure, a broken or malformed answer: worth another try
        raise DeliveryError(f"request failed: {type(exc).__name__}: {exc}", retryable=True) from None
    except aiohttp.InvalidURL:  # its text is the URL, which may hold a secret
        raise DeliveryError("request failed: the URL is not valid", retryable=False) from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"request failed: {type(exc).__name__}: {exc}", retryable=False) from None
    status = reply.status
    if 200 <= status < 300:
        return reply
    detail = " ".join(reply.text[:200].split())
    message = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in (408, 429) or status >= 500:
        wait = parse_retry_after(reply.headers.get("Retry-After"), time.time())
        if status == 429 and retry_after is not None:
            hinted = retry_after(reply)
            if hinted is not None:
                wait = max(wait or 0.0, hinted)
        raise DeliveryError(message, retryable=True, retry_after=wait)
    raise DeliveryError(message, retryable=False)


async def _send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeout: float,
    data: Any,
    headers: dict[str, str],
) -> Reply:
    async with http.request(
        method,
        url,
        data=data,
        headers=headers,
        allow_redirects=False,
        timeout=_timeout(timeout),
    ) as response:
        return Reply(response.status, response.headers, await response.read())


_TIMEOUTS: dict[float, aiohttp.ClientTimeout] = {}


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """One ``ClientTimeout`` per distinct value (each channel has one), not one per request."""
    found = _TIMEOUTS.get(seconds)
    if found is None:
        found = _TIMEOUTS[seconds] = aiohttp.ClientTimeout(total=seconds)
    return found

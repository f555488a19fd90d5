"""The ``slack`` channel (slack-sdk): an incoming webhook, or a bot token posting with
``chat.postMessage``. Messages carry a colour bar by severity (green once resolved); with a
bot token, later messages about an alert (resolved, repeat, escalation) are threaded under
its first message, whose ``ts`` the notifier keeps in its sent record."""

from __future__ import annotations

import asyncio
import time
import urllib.error
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from signalfire.config import Duration
from signalfire.notifier.channels import message
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, DeliveryError, Notification
from signalfire.notifier.channels.http import parse_retry_after

#: Slack shows at most this many characters of an attachment's text without "show more".
TEXT_LIMIT = 3000


class SlackChannelConfig(ChannelSettings, tag="slack"):
    """``type: slack``. Either ``webhook_url_env``/``webhook_url_file`` (the incoming
    webhook URL is a secret) or ``token_env``/``token_file`` with ``channel``."""

    webhook_url_env: str | None = None
    webhook_url_file: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    #: Slack channel id or name for the bot token (``#ops`` or ``C0123456``).
    channel: str | None = None
    #: Web API base URL (a proxy, or a test server).
    api_url: str = "https://slack.com/api/"
    timeout: Duration = Duration(10)
    #: Slack accepts about one message per second per channel.
    rate_limit: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        webhook = self.webhook_url_env is not None or self.webhook_url_file is not None
        bot = self.token_env is not None or self.token_file is not None
        if webhook == bot:
            raise ValueError("webhook_url_env: set either a webhook URL or a bot token (token_env)")
        if bot and not self.channel:
            raise ValueError("channel: required with a bot token")


def payload(notification: Notification) -> dict[str, Any]:
    """The message body (``text`` for notifications, one coloured attachment per alert)."""
    title = message.title(notification)
    attachments = []
    for alert in notification.covered[:20]:
        text = message.summary(alert)
        if description := alert.annotations.get("description"):
            text += "\n" + description
        attachment: dict[str, Any] = {
            "color": message.colour(notification)
            if len(notification.covered) == 1
            else message.alert_colour(alert),
            "title": message.shorten(message.heading(alert, notification), 150),
            "text": message.shorten(text, TEXT_LIMIT),
            "fields": [
                {"title": k, "value": message.shorten(v, 200), "short": True}
                for k, v in message.facts(alert)[:10]
            ],
            "footer": "Signalfire",
            "ts": int(alert.time),
        }
        if runbook := alert.annotations.get("runbook_url"):
            attachment["title_link"] = runbook
        attachments.append(attachment)
    text = title if len(notification.covered) > 1 else f"{title}: {message.summary(notification.alert)}"
    return {"text": message.shorten(text, TEXT_LIMIT), "attachments": attachments}


class SlackChannel:
    """Posts through slack-sdk's (blocking) clients in a worker thread, one attempt each:
    slack-sdk's own retries are turned off, the notifier's retry policy applies."""

    acknowledges = False

    def __init__(self, name: str, config: SlackChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._config = config
        timeout = max(1, round(float(config.timeout)))
        url = context.secret(name, "webhook_url", config.webhook_url_env, config.webhook_url_file)
        self._webhook = WebhookClient(url, timeout=timeout, retry_handlers=[]) if url else None
        token = context.secret(name, "token", config.token_env, config.token_file)
        self._web = (
            WebClient(token=token, base_url=config.api_url, timeout=timeout, retry_handlers=[])
            if token
            else None
        )

    async def send(self, notification: Notification) -> str | None:
        body = payload(notification)
        try:
            if self._web is not None:
                return await asyncio.to_thread(self._post_message, body, notification)
            await asyncio.to_thread(self._post_webhook, body)
        except TimeoutError:
            wait = float(self._config.timeout)
            raise DeliveryError(f"no answer within {wait:g}s", retryable=True) from None
        except urllib.error.URLError as exc:
            raise DeliveryError(f"request failed: {exc.reason}", retryable=True) from None
        except OSError as exc:
            raise DeliveryError(f"request failed: {type(exc).__name__}: {exc}", retryable=True) from None
        return None

    def _post_webhook(self, body: dict[str, Any]) -> None:
        assert self._webhook is not None
        response = self._webhook.send_dict(body)
        check(response.status_code, response.body, response.headers)

    def _post_message(self, body: dict[str, Any], notification: Notification) -> str | None:
        assert self._web is not None and self._config.channel is not None
        thread = notification.reference if notification.kind != "firing" else None
        try:
            response = self._web.chat_postMessage(channel=self._config.channel, thread_ts=thread, **body)
        except SlackApiError as exc:
            reply = exc.response
            error = reply.data.get("error", "") if isinstance(reply.data, dict) else str(reply.data)
            check(reply.status_code, str(error) or "not ok", reply.headers, always=True)
            raise  # pragma: no cover - check always raises
        ts = response.get("ts")
        return str(ts) if ts else None


def check(status: int, body: str, headers: Any, *, always: bool = False) -> None:
    """Raise the :class:`DeliveryError` a Slack answer means (nothing for a plain 200)."""
    if status == 200 and not always:
        return
    detail = " ".join(str(body)[:200].split())
    text = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429 or status >= 500:
        value = headers.get("Retry-After") or headers.get("retry-after") if headers else None
        if isinstance(value, list):
            value = value[0] if value else None
        raise DeliveryError(text, retryable=True, retry_after=parse_retry_after(value, time.time()))
    raise DeliveryError(text, retryable=False)

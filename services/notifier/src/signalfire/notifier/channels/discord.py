"""The ``discord`` channel: a webhook message with one embed per alert, coloured by severity,
cut to Discord's limits (title 256, description 4096, 25 fields of 256/1024, footer 2048,
10 embeds and 6000 characters per message)."""

from __future__ import annotations

import asyncio
from typing import Any

from signalfire.config import Duration
from signalfire.notifier.channels import message
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, DeliveryError, Notification
from signalfire.notifier.channels.http import Reply, post

TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELDS_LIMIT = 25
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048
EMBEDS_LIMIT = 10
MESSAGE_LIMIT = 6000
CONTENT_LIMIT = 2000


class DiscordChannelConfig(ChannelSettings, tag="discord"):
    """``type: discord``. The webhook URL (a secret) comes from ``webhook_url_env`` or
    ``webhook_url_file``."""

    webhook_url_env: str | None = None
    webhook_url_file: str | None = None
    username: str = "Signalfire"
    timeout: Duration = Duration(10)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.webhook_url_env is None) == (self.webhook_url_file is None):
            raise ValueError("webhook_url_env: set exactly one of webhook_url_env and webhook_url_file")


def embed_size(embed: dict[str, Any]) -> int:
    """Characters Discord counts towards the 6000 per message."""
    size = len(embed.get("title", "")) + len(embed.get("description", ""))
    size += len(embed.get("footer", {}).get("text", ""))
    return size + sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))


def payload(notification: Notification, username: str) -> dict[str, Any]:
    """The webhook body: ``content`` names the transition, one embed per alert."""
    embeds: list[dict[str, Any]] = []
    total = 0
    single = len(notification.covered) == 1
    for alert in notification.covered[:EMBEDS_LIMIT]:
        description = message.summary(alert)
        if extra := alert.annotations.get("description"):
            description += "\n\n" + extra
        colour = message.colour(notification) if single else message.alert_colour(alert)
        embed: dict[str, Any] = {
            "title": message.shorten(message.heading(alert, notification), TITLE_LIMIT),
            "description": message.shorten(description, DESCRIPTION_LIMIT),
            "color": int(colour.lstrip("#"), 16),
            "fields": [
                {
                    "name": message.shorten(name, FIELD_NAME_LIMIT),
                    "value": message.shorten(value or "-", FIELD_VALUE_LIMIT),
                    "inline": True,
                }
                for name, value in message.facts(alert)[:FIELDS_LIMIT]
            ],
            "footer": {"text": message.shorten(f"Signalfire · alert {alert.id}", FOOTER_LIMIT)},
        }
        if runbook := alert.annotations.get("runbook_url"):
            embed["url"] = runbook
        room = MESSAGE_LIMIT - total
        while embed["fields"] and embed_size(embed) > room:
            embed["fields"].pop()
        over = embed_size(embed) - room
        if over > 0:
            embed["description"] = message.shorten(embed["description"], len(embed["description"]) - over)
        if not embed["description"] or embed_size(embed) > room:
            break
        total += embed_size(embed)
        embeds.append(embed)
    content = message.title(notification)
    if len(embeds) < len(notification.covered):
        content += f" (showing {len(embeds)})"
    return {
        "username": username,
        "content": message.shorten(content, CONTENT_LIMIT),
        "embeds": embeds,
        "allowed_mentions": {"parse": []},
    }


def discord_retry_after(response: Reply) -> float | None:
    """Discord's 429 body says ``{"retry_after": 1.5, ...}`` (seconds)."""
    try:
        value = response.json().get("retry_after")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


class DiscordChannel:
    """POSTs the embed message; 429 honours ``retry_after`` from the body or the header."""

    acknowledges = False

    def __init__(self, name: str, config: DiscordChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._config = config
        self._http = context.http
        self._slots = asyncio.Semaphore(config.concurrency)
        url = context.secret(name, "webhook_url", config.webhook_url_env, config.webhook_url_file)
        assert url is not None
        if not url.startswith(("http://", "https://")):
            raise_bad_url(name, config)
        self._url = url

    async def send(self, notification: Notification) -> None:
        await post(
            self._http,
            self._url,
            timeout=float(self._config.timeout),
            slots=self._slots,
            json=payload(notification, self._config.username),
            retry_after=discord_retry_after,
        )


def raise_bad_url(name: str, config: DiscordChannelConfig) -> None:
    from signalfire.config import ConfigError

    field = "webhook_url_env" if config.webhook_url_env else "webhook_url_file"
    raise ConfigError("the webhook URL must start with http:// or https://", field=f"channels.{name}.{field}")


__all__ = ["DeliveryError", "DiscordChannel", "DiscordChannelConfig", "payload"]

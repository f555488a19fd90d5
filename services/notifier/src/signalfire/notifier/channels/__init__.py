"""Channel plugins: one module per channel type, each with its config struct and its class.

Adding a type (email, slack, …) means one new module, one member in :data:`ChannelConfig`
and one entry in :data:`CHANNEL_TYPES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from signalfire.notifier.channels.base import (
    Channel,
    ChannelContext,
    ChannelSettings,
    DeliveryError,
    Notification,
)
from signalfire.notifier.channels.discord import DiscordChannel, DiscordChannelConfig
from signalfire.notifier.channels.email import EmailChannel, EmailChannelConfig
from signalfire.notifier.channels.log import LogChannel, LogChannelConfig
from signalfire.notifier.channels.pagerduty import PagerDutyChannel, PagerDutyChannelConfig
from signalfire.notifier.channels.slack import SlackChannel, SlackChannelConfig
from signalfire.notifier.channels.sms import SmsChannel, SmsChannelConfig
from signalfire.notifier.channels.webhook import WebhookChannel, WebhookChannelConfig

#: A channel's config in ``notify.yaml``, chosen by its ``type`` key.
ChannelConfig = (
    LogChannelConfig
    | WebhookChannelConfig
    | EmailChannelConfig
    | SlackChannelConfig
    | DiscordChannelConfig
    | PagerDutyChannelConfig
    | SmsChannelConfig
)

#: ``type`` → the class that delivers through that type.
CHANNEL_TYPES: dict[str, Callable[[str, Any, ChannelContext], Channel]] = {
    "log": LogChannel,
    "webhook": WebhookChannel,
    "email": EmailChannel,
    "slack": SlackChannel,
    "discord": DiscordChannel,
    "pagerduty": PagerDutyChannel,
    "sms": SmsChannel,
}


def channel_type(config: ChannelSettings) -> str:
    """The ``type`` key a channel config was written with."""
    return str(type(config).__struct_config__.tag)


def build_channel(name: str, config: ChannelSettings, context: ChannelContext) -> Channel:
    """The channel ``name`` configured by ``config``; raises ``ConfigError`` for missing secrets."""
    return CHANNEL_TYPES[channel_type(config)](name, config, context)


__all__ = [
    "CHANNEL_TYPES",
    "Channel",
    "ChannelConfig",
    "ChannelContext",
    "ChannelSettings",
    "DeliveryError",
    "Notification",
    "build_channel",
    "channel_type",
]

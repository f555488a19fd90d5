"""The ``pagerduty`` channel: PagerDuty Events API v2. ``firing`` (and repeats, escalations)
trigger, an acknowledgement acknowledges, ``resolved`` resolves — all with ``dedup_key`` =
the alert's fingerprint, so PagerDuty keeps one incident per alert."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from signalfire.config import Duration
from signalfire.notifier.channels import message
from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, Notification
from signalfire.notifier.channels.http import post

#: Our severities → PagerDuty's (critical, error, warning, info).
SEVERITIES = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
#: PagerDuty refuses a summary longer than this.
SUMMARY_LIMIT = 1024


class PagerDutyChannelConfig(ChannelSettings, tag="pagerduty"):
    """``type: pagerduty``. The integration's routing key comes from ``routing_key_env`` or
    ``routing_key_file``."""

    routing_key_env: str | None = None
    routing_key_file: str | None = None
    url: str = "https://events.pagerduty.com/v2/enqueue"
    timeout: Duration = Duration(10)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.routing_key_env is None) == (self.routing_key_file is None):
            raise ValueError("routing_key_env: set exactly one of routing_key_env and routing_key_file")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url: expected an http:// or https:// URL")


def event(notification: Notification, routing_key: str) -> dict[str, Any]:
    """The Events API v2 body for ``notification`` (one alert; a group sends one each)."""
    alert = notification.alert
    action = {"resolved": "resolve", "acknowledged": "acknowledge"}.get(notification.kind, "trigger")
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": alert.fingerprint,
    }
    if action != "trigger":
        return body
    details: dict[str, Any] = {"rule": alert.rule, "alert_id": alert.id, **alert.labels}
    if alert.value is not None:
        details["value"] = alert.value
    if alert.threshold is not None:
        details["threshold"] = alert.threshold
    if description := alert.annotations.get("description"):
        details["description"] = description
    body["payload"] = {
        "summary": message.shorten(message.summary(alert), SUMMARY_LIMIT),
        "source": alert.host,
        "severity": SEVERITIES[alert.severity],
        "timestamp": datetime.fromtimestamp(alert.starts_at, UTC).isoformat(timespec="milliseconds"),
        "component": alert.labels.get("component", alert.host),
        "class": alert.rule,
        "custom_details": details,
    }
    body["client"] = "Signalfire"
    if runbook := alert.annotations.get("runbook_url"):
        body["links"] = [{"href": runbook, "text": "Runbook"}]
    return body


class PagerDutyChannel:
    """Sends one event per alert the notification covers; 202 is accepted, 429/5xx retried."""

    acknowledges = True

    def __init__(self, name: str, config: PagerDutyChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._config = config
        self._http = context.http
        self._slots = asyncio.Semaphore(config.concurrency)
        key = context.secret(name, "routing_key", config.routing_key_env, config.routing_key_file)
        assert key is not None
        self._key = key

    async def send(self, notification: Notification) -> None:
        for alert in notification.covered:
            if notification.digest and alert.status == "resolved":
                # fired and resolved within the digest's period: triggering it now would open
                # an incident for something that is over (the digest's other channels list it)
                continue
            single = Notification(alert=alert, test=notification.test, transition=notification.transition)
            await post(
                self._http,
                self._config.url,
                timeout=float(self._config.timeout),
                slots=self._slots,
                json=event(single, self._key),
            )

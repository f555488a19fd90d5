"""The ``log`` channel: every notification becomes one structured log line (for development)."""

from __future__ import annotations

import logging
from typing import Literal

from signalfire.notifier.channels.base import ChannelContext, ChannelSettings, Notification

log = logging.getLogger("signalfire.notifications")


class LogChannelConfig(ChannelSettings, tag="log"):
    """``type: log``; ``level`` is the level of the line written."""

    level: Literal["debug", "info", "warning", "error"] = "warning"


class LogChannel:
    """Writes ``msg="alert firing: HighCPU on web-1"`` with the alert's fields as keys."""

    acknowledges = False

    def __init__(self, name: str, config: LogChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self._level = logging.getLevelNamesMapping()[config.level.upper()]

    async def send(self, notification: Notification) -> None:
        alert = notification.alert
        fields: dict[str, object] = {
            "channel": self.name,
            "alert_id": alert.id,
            "status": alert.status,
            "transition": notification.kind,
            "severity": alert.severity,
            "rule": alert.rule,
            "host": alert.host,
        }
        if alert.value is not None:
            fields["value"] = alert.value
        if summary := alert.annotations.get("summary"):
            fields["summary"] = summary
        if alert.labels:
            fields["labels"] = ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
        if len(notification.covered) > 1:
            fields["alerts"] = len(notification.covered)
        if notification.delivery_id:
            fields["delivery_id"] = notification.delivery_id
        log.log(
            self._level,
            "%salert %s: %s on %s",
            "test " if notification.test else "",
            "digest" if notification.digest else notification.kind,
            alert.rule,
            alert.host,
            extra=fields,
        )

"""What a notification says, shared by the channels that render text: titles, summaries,
severity colours and the fields worth showing. One place, so every channel words an alert
the same way."""

from __future__ import annotations

from datetime import UTC, datetime

from signalfire.events import AlertEvent
from signalfire.notifier.channels.base import Notification

#: Severity colours (RGB hex) used by Slack attachments, Discord embeds and the HTML email.
SEVERITY_COLOURS = {"critical": "#d32f2f", "high": "#f57c00", "medium": "#fbc02d", "low": "#1976d2"}
RESOLVED_COLOUR = "#2e7d32"
ACKNOWLEDGED_COLOUR = "#757575"

#: The word a title starts with, by transition.
LABELS = {
    "firing": "FIRING",
    "resolved": "RESOLVED",
    "acknowledged": "ACKNOWLEDGED",
    "repeat": "STILL FIRING",
    "escalation": "ESCALATED",
    "test": "TEST",
}


def colour(notification: Notification) -> str:
    """The colour for the message: green when resolved, grey when acknowledged, else severity."""
    if notification.kind == "resolved":
        return RESOLVED_COLOUR
    if notification.kind == "acknowledged":
        return ACKNOWLEDGED_COLOUR
    return SEVERITY_COLOURS[worst(notification).severity]


def alert_colour(alert: AlertEvent) -> str:
    """The colour of one alert in a group or digest: green when resolved, else its severity."""
    return RESOLVED_COLOUR if alert.status == "resolved" else SEVERITY_COLOURS[alert.severity]


def state(alert: AlertEvent, notification: Notification) -> str:
    """``firing``, ``resolved``, or ``fired and resolved`` for an alert a digest lists that
    fired and resolved within the digest's period."""
    if alert.status != "resolved":
        return "firing"
    return "fired and resolved" if notification.digest else "resolved"


def heading(alert: AlertEvent, notification: Notification) -> str:
    """``HighCPU on web-1``; ``HighCPU on web-1 (fired and resolved)`` in a digest."""
    text = f"{alert.rule} on {alert.host}"
    if notification.digest and alert.status == "resolved":
        text += " (fired and resolved)"
    return text


def worst(notification: Notification) -> AlertEvent:
    """The most severe alert a message covers (the first of them on a tie)."""
    order = list(SEVERITY_COLOURS)
    return min(notification.covered, key=lambda a: order.index(a.severity))


def summary(alert: AlertEvent) -> str:
    """The alert's ``summary`` annotation, or ``<rule> on <host>`` without one."""
    return alert.annotations.get("summary") or f"{alert.rule} on {alert.host}"


def title(notification: Notification) -> str:
    """``[FIRING] HighCPU on web-1 (high)``; ``[FIRING x3] …`` for a group, ``[DIGEST] 3 alerts
    (1 fired and resolved)`` for a digest."""
    alert = notification.alert
    count = len(notification.covered)
    if notification.digest:
        text = f"[DIGEST] {count} alert{'s' if count != 1 else ''}"
        ended = sum(1 for a in notification.covered if a.status == "resolved")
        return text + (f" ({ended} fired and resolved)" if ended else "")
    label = LABELS[notification.kind]
    if count > 1:
        return f"[{label} x{count}] {alert.rule} ({worst(notification).severity})"
    return f"[{label}] {alert.rule} on {alert.host} ({alert.severity})"


def when(timestamp: float) -> str:
    """A unix time as ``2025-11-22 08:00:00 UTC``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def facts(alert: AlertEvent) -> list[tuple[str, str]]:
    """The (name, value) pairs worth showing next to the summary, in a stable order."""
    shown: list[tuple[str, str]] = [("Severity", alert.severity), ("Host", alert.host)]
    if alert.value is not None:
        shown.append(("Value", f"{alert.value:g}"))
    if alert.threshold is not None:
        shown.append(("Threshold", f"{alert.threshold:g}"))
    shown.append(("Since", when(alert.starts_at)))
    if alert.ends_at is not None:
        shown.append(("Ended", when(alert.ends_at)))
    shown.extend((k, v) for k, v in sorted(alert.labels.items()))
    return shown


def shorten(text: str, limit: int, ellipsis: str = "...") -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``ellipsis`` when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(ellipsis))].rstrip() + ellipsis

"""Inhibition: while a source alert fires (``HostDown``), matching target alerts on the same
``equal`` fields (the same host) are not sent. A pure function of the alert, the alerts
firing now and the rules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from signalfire.events import AlertEvent
from signalfire.notifier.config import InhibitRule
from signalfire.notifier.routing import alert_fields, matches


def inhibited_by(
    alert: AlertEvent, firing: Iterable[AlertEvent], rules: Sequence[InhibitRule]
) -> AlertEvent | None:
    """The firing alert that mutes ``alert``, or None.

    A source alert is never muted by its own rule (two ``HostDown`` alerts do not mute each
    other), and an alert never mutes itself.
    """
    if not rules:
        return None
    candidates = [other for other in firing if other.status == "firing"]
    fields = alert_fields(alert)
    for rule in rules:
        if not matches(rule.target, alert) or matches(rule.source, alert):
            continue
        for source in candidates:
            if source.fingerprint == alert.fingerprint or not matches(rule.source, source):
                continue
            theirs = alert_fields(source)
            if all(fields.get(name) == theirs.get(name) for name in rule.equal):
                return source
    return None


def reason(source: AlertEvent) -> str:
    """The ``DeliveryResult.reason`` of an inhibited delivery."""
    return f"inhibited by {source.rule} on {source.host}"

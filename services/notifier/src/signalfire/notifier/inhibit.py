"""Inhibition: while a source alert fires (``HostDown``), matching target alerts on the same
``equal`` fields (the same host) are not sent. A pure function of the alert, the alerts
firing now and the rules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from signalfire.events import AlertEvent
from signalfire.matchers import matches
from signalfire.notifier.config import InhibitRule, matcher_list
from signalfire.notifier.routing import alert_fields


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
        source_matchers, target_matchers = matcher_list(rule.source), matcher_list(rule.target)
        if not matches(target_matchers, fields) or matches(source_matchers, fields):
            continue
        for source in candidates:
            if source.fingerprint == alert.fingerprint:
                continue
            theirs = alert_fields(source)
            if not matches(source_matchers, theirs):
                continue
            if all(fields.get(name) == theirs.get(name) for name in rule.equal):
                return source
    return None


def reason(source: AlertEvent) -> str:
    """The ``DeliveryResult.reason`` of an inhibited delivery."""
    return f"inhibited by {source.rule} on {source.host}"

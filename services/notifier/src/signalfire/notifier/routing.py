"""Which channels an alert goes to: a pure function of the alert and the routes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from signalfire.events import AlertEvent
from signalfire.notifier.config import Route


def alert_fields(alert: AlertEvent) -> dict[str, str]:
    """What a route's ``match`` can test: the alert's labels plus ``severity``, ``rule`` and
    ``host`` (which win over labels of the same name)."""
    return {**alert.labels, "severity": alert.severity, "rule": alert.rule, "host": alert.host}


def matches(match: Mapping[str, str], alert: AlertEvent) -> bool:
    """Whether every ``match`` entry equals the alert's field of that name."""
    fields = alert_fields(alert)
    return all(fields.get(key) == value for key, value in match.items())


def matching(alert: AlertEvent, routes: Sequence[Route]) -> list[int]:
    """Indexes of the routes ``alert`` takes, in order.

    Routes are tried in order; the first that matches wins, unless it has
    ``continue: true``, in which case later routes are tried too.
    """
    chosen: list[int] = []
    for index, candidate in enumerate(routes):
        if not matches(candidate.match, alert):
            continue
        chosen.append(index)
        if not candidate.continue_:
            break
    return chosen


def route(alert: AlertEvent, routes: Sequence[Route]) -> list[str]:
    """Channel names for ``alert`` (immediate ones, not escalation steps), in route order
    without duplicates."""
    chosen: dict[str, None] = {}
    for index in matching(alert, routes):
        chosen.update(dict.fromkeys(routes[index].channels))
    return list(chosen)

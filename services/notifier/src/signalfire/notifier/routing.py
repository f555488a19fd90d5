"""Which channels an alert goes to: a pure function of the alert and the routes."""

from __future__ import annotations

from collections.abc import Sequence

from signalfire.events import AlertEvent
from signalfire.matchers import matches
from signalfire.notifier.config import Route, matcher_list


def alert_fields(alert: AlertEvent) -> dict[str, str]:
    """What a route's ``match`` can test: the alert's labels plus ``severity``, ``rule`` and
    ``host`` (which win over labels of the same name)."""
    return {**alert.labels, "severity": alert.severity, "rule": alert.rule, "host": alert.host}


def route_matches(route: Route, alert: AlertEvent) -> bool:
    """Whether ``alert`` satisfies every ``match`` entry and every matcher of ``route``."""
    return matches(matcher_list(route.match, route.matchers), alert_fields(alert))


def matching(alert: AlertEvent, routes: Sequence[Route]) -> list[int]:
    """Indexes of the routes ``alert`` takes, in order.

    Routes are tried in order; the first that matches wins, unless it has
    ``continue: true``, in which case later routes are tried too.
    """
    chosen: list[int] = []
    for index, candidate in enumerate(routes):
        if not route_matches(candidate, alert):
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

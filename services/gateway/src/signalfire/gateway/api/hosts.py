"""``/api/v1/hosts``: every host that has reported, with its status and health score, and one
host with its newest values and active alerts."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.events import SEVERITIES
from signalfire.gateway.api.alerts import Alert, alert_rows
from signalfire.gateway.api.endpoint import PAGE, Endpoint, Param
from signalfire.gateway.api.resources import JsonObject, Resources, decode_json, json_response, raw_json
from signalfire.gateway.api.series import LatestSample, latest_samples
from signalfire.gateway.errors import ApiError, invalid
from signalfire.gateway.params import encode_cursor, parse_cursor, parse_limit
from signalfire.gateway.store import LatestValues

#: What a host is: reporting, silent past its interval, or stopped on purpose.
HostStatus = Literal["up", "down", "offline"]
HOST_STATUSES: tuple[HostStatus, ...] = ("up", "down", "offline")

#: Resource metrics whose newest values lower a host's health score.
PRESSURE_METRICS = ("cpu.usage_percent", "mem.used_percent", "disk.used_percent")
_ALERT_PENALTY = {"critical": 40, "high": 20, "medium": 10, "low": 5}

_SELECT = """
SELECT h.host, h.status, extract(epoch FROM h.last_seen)::float8 AS last_seen,
       extract(epoch FROM h.first_seen)::float8 AS first_seen, h.interval,
       h.facts::text AS facts, h.labels::text AS labels,
       (SELECT jsonb_object_agg(severity, n)::text
          FROM (SELECT severity, count(*) AS n FROM alerts a
                 WHERE a.host = h.host AND a.status = 'firing' GROUP BY severity) c) AS alerts
FROM hosts h
"""


class Host(msgspec.Struct, kw_only=True):
    """A host: its status, when it was seen, its health score, facts, labels and firing alerts
    by severity."""

    host: str
    status: HostStatus
    last_seen: float
    first_seen: float
    health: Annotated[int, msgspec.Meta(ge=0, le=100)]
    facts: JsonObject
    labels: JsonObject
    alerts: dict[str, int]
    #: The newest values the health score looks at (``disk.used_percent``: the fullest disk).
    usage: dict[str, float] = {}


class HostDetail(Host, kw_only=True):
    """A host with its newest values and its active alerts."""

    latest: list[LatestSample]
    active_alerts: list[Alert]


class HostPage(msgspec.Struct, kw_only=True):
    hosts: list[Host]
    next_cursor: str | None


def health_score(status: str, alerts: Mapping[str, int], pressure: Mapping[str, float]) -> int:
    """0 to 100: 0 for a host that is down or offline; otherwise 100, minus 40/20/10/5 per
    firing critical/high/medium/low alert, minus the points by which CPU, memory and the
    fullest disk are above 80 % (so up to 20 each)."""
    if status != "up":
        return 0
    score = 100.0
    for severity, n in alerts.items():
        score -= _ALERT_PENALTY.get(severity, 0) * n
    for name in PRESSURE_METRICS:
        value = pressure.get(name)
        # Compared first: most values are below 80 (and NaN compares false).
        if value is not None and value > 80.0 and math.isfinite(value):
            score -= min(value - 80.0, 20.0)
    return max(0, min(100, round(score)))


def host_status(
    reported: str, last_seen: float, interval: float | None, now: float, down_after: float
) -> HostStatus:
    """``offline`` after a clean shutdown; ``up`` while data arrives; ``down`` after three
    missed intervals (or ``down_after`` seconds for hosts that do not report an interval)."""
    if reported == "offline":
        return "offline"
    limit = 3 * interval if interval else down_after
    return "up" if now - last_seen <= limit else "down"


#: Seconds one gathering of every host's pressure values is reused for.
_PRESSURE_TTL = 1.0


def pressure_now(res: Resources) -> dict[str, dict[str, float]]:
    """Per host, the newest value of each resource metric the health score looks at
    (:func:`_pressure`), gathered at most once a second: it walks every series, and a
    10,000-host fleet is read in several requests. Timed by the monotonic clock:
    this is the age of a cache, not a time the API reports."""
    now = time.monotonic()
    if res.pressure is None or not 0 <= now - res.pressure[0] < _PRESSURE_TTL:
        res.pressure = (now, _pressure(res.latest))
    return res.pressure[1]


def _pressure(values: LatestValues) -> dict[str, dict[str, float]]:
    """Per host, the newest value of each resource metric the health score looks at
    (the fullest disk for ``disk.used_percent``)."""
    found: dict[str, dict[str, float]] = {}
    for (host, name, _), (_, value) in values.items():
        if name in PRESSURE_METRICS:
            per_host = found.setdefault(host, {})
            per_host[name] = max(value, per_host.get(name, value))
    return found


def _host_fields(res: Resources, row: Any, now: float, pressure: Mapping[str, float]) -> dict[str, Any]:
    alerts: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
    alerts.update(decode_json(row["alerts"]))
    status = host_status(
        row["status"], row["last_seen"], row["interval"], now, float(res.config.host_down_after)
    )
    return {
        "host": row["host"],
        "status": status,
        "last_seen": row["last_seen"],
        "first_seen": row["first_seen"],
        "health": health_score(status, alerts, pressure),
        "facts": raw_json(row["facts"]),
        "labels": raw_json(row["labels"]),
        "alerts": alerts,
        "usage": {name: value for name, value in pressure.items() if math.isfinite(value)},
    }


#: Hosts one ``host=`` list may name: what a dashboard patches at once after a burst of changes.
MAX_NAMED_HOSTS = 1000


async def hosts(res: Resources, request: Request) -> Response:
    params = request.query_params
    limit = parse_limit(params, default=500, maximum=5000)
    cursor = parse_cursor(params, (str,))
    # The dashboard fetches again only the hosts whose alerts or status changed, never the fleet.
    named = [name for name in params.getlist("host") if name]
    if len(named) > MAX_NAMED_HOSTS:
        raise invalid("host", f"at most {MAX_NAMED_HOSTS} host= names at once, got {len(named)}")
    rows = await res.pool.fetch(
        _SELECT + " WHERE ($1::text IS NULL OR h.host > $1) AND ($3::text[] IS NULL OR h.host = ANY($3))"
        " ORDER BY h.host LIMIT $2",
        cursor[0] if cursor else None,
        limit + 1,
        named or None,
    )
    now = res.clock()
    pressure = pressure_now(res)
    found = [Host(**_host_fields(res, row, now, pressure.get(row["host"], {}))) for row in rows[:limit]]
    next_cursor = encode_cursor([found[-1].host]) if len(rows) > limit else None
    return json_response(HostPage(hosts=found, next_cursor=next_cursor))


async def host(res: Resources, request: Request) -> Response:
    name = request.path_params["host"]
    row = await res.pool.fetchrow(_SELECT + " WHERE h.host = $1", name)
    if row is None:
        raise ApiError(404, "not_found", f"no host {name!r} has reported", "host")
    fields = _host_fields(res, row, res.clock(), pressure_now(res).get(name, {}))
    active = await alert_rows(
        res, "WHERE host = $1 AND status = 'firing' ORDER BY starts_at DESC, id LIMIT 100", name
    )
    return json_response(
        HostDetail(**fields, latest=latest_samples(res.latest, name, None), active_alerts=active)
    )


routes = [
    Endpoint(
        "GET",
        "/api/v1/hosts",
        hosts,
        "viewer",
        "Hosts with status, last seen, health score, facts, alert counts, CPU/memory/disk usage",
        '`{"hosts": [{"host", "status": "up\\|down\\|offline", "last_seen", "first_seen", "health", "facts", '
        '"labels", "alerts": {"critical": n, ...}, "usage": {"cpu.usage_percent": x, ...}}], "next_cursor"}`',
        params=(
            *PAGE,
            Param(
                "host", f"only these hosts (repeat it, up to {MAX_NAMED_HOSTS}; unknown names are left out)"
            ),
        ),
        answer=HostPage,
    ),
    Endpoint(
        "GET",
        "/api/v1/hosts/{host}",
        host,
        "viewer",
        "One host with its latest values and active alerts",
        "one host, plus `latest` (its newest values) and `active_alerts`",
        params=(Param("host", "host name", where="path"),),
        answer=HostDetail,
    ),
]

"""``/api/v1/fleet``: every host in one answer, worst first, with the fleet's totals.

What the dashboard's Overview needs to show a whole fleet at once: per host only what its
table shows (status, health, last seen, firing alerts by severity, CPU/memory/disk and
labels), as columns, so 10,000 hosts are one request of about 0.6 MB instead of pages of
``/api/v1/hosts`` (each host an object with its facts, about 300 bytes). The order and the
health score are the ones ``/api/v1/hosts`` reports.
"""

from __future__ import annotations

import math

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.events import SEVERITIES
from signalfire.gateway.api.endpoint import Endpoint
from signalfire.gateway.api.hosts import (
    HOST_STATUSES,
    PRESSURE_METRICS,
    HostStatus,
    health_score,
    host_status,
    pressure_now,
)
from signalfire.gateway.api.resources import JsonObject, Resources, json_response, raw_json

# Firing alerts counted per host in one pass over the alerts table (a subquery per host
# made 10,000 index scans).
_SELECT = f"""
SELECT h.host, h.status, extract(epoch FROM h.last_seen)::float8 AS last_seen, h.interval,
       h.labels::text AS labels, {", ".join(f"coalesce(a.{s}, 0) AS {s}" for s in SEVERITIES)}
FROM hosts h LEFT JOIN (
    SELECT host, {", ".join(f"count(*) FILTER (WHERE severity = '{s}') AS {s}" for s in SEVERITIES)}
    FROM alerts WHERE status = 'firing' GROUP BY host
) a USING (host)
"""


class FleetHosts(msgspec.Struct, kw_only=True):
    """Every host as columns: entry ``i`` of each list (and of each list in ``alerts`` and
    ``usage``) is about ``host[i]``."""

    host: list[str]
    status: list[HostStatus]
    health: list[int]
    last_seen: list[float]
    #: Firing alerts of each severity (``critical``, ``high``, ``medium``, ``low``).
    alerts: dict[str, list[int]]
    #: The newest CPU, memory and fullest-disk values (``null`` where none arrived yet).
    usage: dict[str, list[float | None]]
    #: An index into ``label_sets``: hosts with the same labels share one entry.
    labels: list[int]
    label_sets: list[JsonObject]


class Fleet(msgspec.Struct, kw_only=True):
    """The fleet, worst first (the lowest health score; then the most critical, high,
    medium, low alerts; then by name), with hosts per status and firing alerts per severity
    over every host."""

    total: int
    status: dict[str, int]
    alerts: dict[str, int]
    hosts: FleetHosts


async def fleet(res: Resources, request: Request) -> Response:
    rows = await res.pool.fetch(_SELECT)
    now = res.clock()
    down_after = float(res.config.host_down_after)
    pressure = pressure_now(res)
    no_pressure: dict[str, float] = {}
    no_alerts: dict[str, int] = {}
    judged = []
    for row in rows:
        status = host_status(row["status"], row["last_seen"], row["interval"], now, down_after)
        counts = [row[s] for s in SEVERITIES]
        usage = pressure.get(row["host"], no_pressure)
        # Most hosts have no firing alert: no dict of four zeros to build and walk.
        alerts = dict(zip(SEVERITIES, counts, strict=True)) if any(counts) else no_alerts
        health = health_score(status, alerts, usage)
        judged.append((health, [-n for n in counts], row["host"], status, counts, usage, row))
    judged.sort(key=lambda j: (j[0], j[1], j[2]))

    label_index: dict[str, int] = {}
    label_sets: list[msgspec.Raw] = []
    columns = FleetHosts(
        host=[],
        status=[],
        health=[],
        last_seen=[],
        alerts={s: [] for s in SEVERITIES},
        usage={m: [] for m in PRESSURE_METRICS},
        labels=[],
        label_sets=label_sets,
    )
    status_totals: dict[str, int] = dict.fromkeys(HOST_STATUSES, 0)
    alert_totals: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
    for health, _, name, status, counts, usage, row in judged:
        columns.host.append(name)
        columns.status.append(status)
        columns.health.append(health)
        columns.last_seen.append(row["last_seen"])
        status_totals[status] += 1
        for severity, n in zip(SEVERITIES, counts, strict=True):
            columns.alerts[severity].append(n)
            alert_totals[severity] += n
        for metric in PRESSURE_METRICS:
            value = usage.get(metric)
            columns.usage[metric].append(value if value is not None and math.isfinite(value) else None)
        labels = row["labels"] or "{}"
        index = label_index.get(labels)
        if index is None:
            index = label_index[labels] = len(label_sets)
            label_sets.append(raw_json(labels))
        columns.labels.append(index)
    return json_response(Fleet(total=len(judged), status=status_totals, alerts=alert_totals, hosts=columns))


routes = [
    Endpoint(
        "GET",
        "/api/v1/fleet",
        fleet,
        "viewer",
        "Every host in one answer, worst first, as columns, with hosts per status and alerts per severity",
        '`{"total", "status": {"up": n, ...}, "alerts": {"critical": n, ...}, "hosts": {"host": [...], '
        '"status": [...], "health": [...], "last_seen": [...], "alerts": {"critical": [...], ...}, '
        '"usage": {"cpu.usage_percent": [...], ...}, "labels": [i, ...], "label_sets": [{...}, ...]}}`',
        answer=Fleet,
    ),
]

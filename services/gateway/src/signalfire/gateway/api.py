"""The HTTP API: ``/api/v1/*`` (token required), ``/healthz``, ``/readyz`` and ``/metrics``.

Every error is ``{"error": {"code", "message", "field"}}`` with a fitting status; times in
answers are unix seconds. The OpenAPI document is served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import asyncio
import csv
import fnmatch
import io
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from signalfire.bus import request_json
from signalfire.config import parse_duration
from signalfire.events import SEVERITIES, AlertAction, EventBatch, MetricBatch, encode
from signalfire.gateway import rollup
from signalfire.gateway.auth import (
    AuthCounters,
    AuthMiddleware,
    FailureThrottle,
    Principal,
    RateLimiter,
    Refusal,
    create_token,
    hash_token,
    list_tokens,
    revoke_token,
)
from signalfire.gateway.bodies import NoteBody, SilenceBody, TimeValue, TokenBody, parse_body
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.errors import ApiError, error_body, error_response, invalid
from signalfire.gateway.live import LiveEndpoints, LiveSettings, TokenWatch
from signalfire.gateway.openapi import openapi_document
from signalfire.gateway.params import (
    encode_cursor,
    label_matchers,
    parse_choice,
    parse_cursor,
    parse_limit,
    parse_range,
    parse_step,
    parse_time,
    reject_nul,
)
from signalfire.gateway.store import LatestValues, Store
from signalfire.gateway.stream import StreamHub
from signalfire.gateway.web import dashboard_routes
from signalfire.regex import RegexError, compile_regex
from signalfire.subjects import Subjects
from signalfire.telemetry import CONTENT_TYPE, Counter, Registry

log = logging.getLogger("signalfire.gateway.api")

ALERT_STATUSES = ("firing", "resolved")
DELIVERY_STATUSES = ("sent", "failed", "retrying", "suppressed")
AGGREGATES = ("avg", "min", "max", "sum", "count", "last", "p50", "p95", "p99")
_PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
_RAW_AGG = {
    "avg": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "sum": "sum(value)",
    "count": "count(*)::float8",
    "last": "(array_agg(value ORDER BY time DESC))[1]",
    **{name: f"percentile_disc({q}) WITHIN GROUP (ORDER BY value)" for name, q in _PERCENTILES.items()},
}
_ROLLUP_AGG = {
    "avg": "sum(sum) / sum(count)",
    "min": "min(min)",
    "max": "max(max)",
    "sum": "sum(sum)",
    "count": "sum(count)::float8",
    "last": "(array_agg(last ORDER BY last_time DESC))[1]",
}
#: Steps ``step=auto`` picks from: about 500 points per series over the range.
_NICE_STEPS = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_AUTO_POINTS = 500
_ACTIONS = {"ack": "ack", "unack": "unack", "resolve": "resolve", "notes": "note"}
#: Resource metrics whose newest values lower a host's health score.
PRESSURE_METRICS = ("cpu.usage_percent", "mem.used_percent", "disk.used_percent")
_ALERT_PENALTY = {"critical": 40, "high": 20, "medium": 10, "low": 5}
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limited",
}

_HOSTS_SQL = """
SELECT h.host, h.status, extract(epoch FROM h.last_seen)::float8 AS last_seen,
       extract(epoch FROM h.first_seen)::float8 AS first_seen, h.interval,
       h.facts::text AS facts, h.labels::text AS labels,
       (SELECT jsonb_object_agg(severity, n)::text
          FROM (SELECT severity, count(*) AS n FROM alerts a
                 WHERE a.host = h.host AND a.status = 'firing' GROUP BY severity) c) AS alerts
FROM hosts h
"""

_ALERT_SELECT = """
SELECT id, fingerprint, rule, status, severity, host, labels::text AS labels,
       annotations::text AS annotations, value, threshold,
       extract(epoch FROM starts_at)::float8 AS starts_at,
       extract(epoch FROM ends_at)::float8 AS ends_at,
       extract(epoch FROM last_event_at)::float8 AS updated_at, seq,
       acknowledged_by, extract(epoch FROM acknowledged_at)::float8 AS acknowledged_at,
       resolved_by, extract(epoch FROM resolved_at)::float8 AS resolved_at, notes::text AS notes
FROM alerts
"""

_SILENCE_SELECT = """
SELECT id, matchers::text AS matchers, extract(epoch FROM starts_at)::float8 AS starts_at,
       extract(epoch FROM ends_at)::float8 AS ends_at, author, comment,
       extract(epoch FROM created_at)::float8 AS created_at
FROM silences
"""

# kind -> (query over $1 from, $2 to, $3 host[, $4 metric], the columns written)
_EXPORTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "samples": (
        """
        SELECT extract(epoch FROM x.time)::float8 AS time, s.host, s.name AS metric, s.labels::text AS labels,
               x.value
        FROM samples x JOIN series s ON s.id = x.series_id
        WHERE x.time >= to_timestamp($1) AND x.time <= to_timestamp($2)
          AND ($3::text IS NULL OR s.host = $3) AND ($4::text IS NULL OR s.name = $4)
          AND s.labels @> $5::jsonb
        ORDER BY s.host, s.name, s.id, x.time
        """,
        ("time", "host", "metric", "labels", "value"),
    ),
    "alerts": (
        """
        SELECT id, rule, status, severity, host, labels::text AS labels, annotations::text AS annotations,
               value, threshold, extract(epoch FROM starts_at)::float8 AS starts_at,
               extract(epoch FROM ends_at)::float8 AS ends_at, acknowledged_by
        FROM alerts
        WHERE starts_at <= to_timestamp($2) AND coalesce(ends_at, 'infinity') >= to_timestamp($1)
          AND ($3::text IS NULL OR host = $3)
        ORDER BY starts_at, id
        """,
        (
            "id",
            "rule",
            "status",
            "severity",
            "host",
            "labels",
            "annotations",
            "value",
            "threshold",
            "starts_at",
            "ends_at",
            "acknowledged_by",
        ),
    ),
    "events": (
        """
        SELECT extract(epoch FROM time)::float8 AS time, host, type, message, labels::text AS labels, value
        FROM events
        WHERE time >= to_timestamp($1) AND time <= to_timestamp($2) AND ($3::text IS NULL OR host = $3)
        ORDER BY time
        """,
        ("time", "host", "type", "message", "labels", "value"),
    ),
}

_json = msgspec.json.Encoder()


class LatestSample(msgspec.Struct):
    """One series' newest value as ``/latest`` answers it; ``labels`` is the series key's
    canonical JSON, passed through as is."""

    host: str
    metric: str
    labels: msgspec.Raw
    time: float
    value: float


def json_response(data: Any, status: int = 200) -> Response:
    return Response(_json.encode(data), status_code=status, media_type="application/json")


def _decode_json(text: str | None) -> Any:
    return msgspec.json.decode(text) if text else {}


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
        if value is not None and math.isfinite(value):
            score -= min(max(value - 80.0, 0.0), 20.0)
    return max(0, min(100, round(score)))


def auto_step(span: float) -> float:
    """The step ``step=auto`` uses for a range of ``span`` seconds."""
    wanted = span / _AUTO_POINTS
    for step in _NICE_STEPS:
        if step >= wanted:
            return float(step)
    return float(math.ceil(wanted / 86400) * 86400)


#: Text starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_cell(value: Any) -> Any:
    """``value`` as a CSV export cell that a spreadsheet shows and never runs: text starting
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (OWASP's
    advice against CSV injection), unless it is a plain number such as ``-1.5``; ``None`` is
    an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _body_time(value: TimeValue, now: float, field: str) -> float:
    if isinstance(value, str):
        return parse_time(value, now, field)
    if not 0 <= value <= 32503680000.0:
        raise invalid(field, f"{field} is outside the range of unix times")
    return float(value)


def _audit_details(request: Request, details: dict[str, Any]) -> None:
    """What the audit record of this request should say besides method and path."""
    request.scope.setdefault("state", {}).setdefault("audit", {}).update(details)


def _audit_skip(request: Request) -> None:
    request.scope.setdefault("state", {})["audit_skip"] = True


class Api:
    """The endpoints, bound to the resources they read."""

    def __init__(
        self,
        config: GatewayConfig,
        pool: asyncpg.Pool,
        nc: NATS | None,
        registry: Registry,
        latest: LatestValues,
        *,
        store: Store | None = None,
        hub: StreamHub | None = None,
    ) -> None:
        self.config = config
        #: The live streams: a token revoked here ends its open streams at once.
        self.hub = hub
        self.pool = pool
        self.nc = nc
        self.registry = registry
        self.latest = latest
        self._latest_all: tuple[int, bytes] | None = None
        self.store = store if store is not None else Store(pool)
        self.subjects: Subjects = config.nats.subjects

    # Operations ---------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def whoami(self, request: Request) -> Response:
        """The calling token's name and role (the dashboard hides what the role may not do)."""
        principal = self._principal(request)
        return json_response({"name": principal.name, "role": principal.role})

    async def readyz(self, request: Request) -> Response:
        reasons: list[str] = []
        try:
            await self.pool.fetchval("SELECT 1", timeout=2)
        except Exception as exc:
            reasons.append(f"database: {exc or type(exc).__name__}")
        if self.nc is None or not self.nc.is_connected:
            reasons.append("nats: not connected")
        if reasons:
            body = {"status": "not_ready", "reasons": reasons, **error_body("not_ready", "; ".join(reasons))}
            return json_response(body, status=503)
        return json_response({"status": "ready"})

    async def metrics(self, request: Request) -> Response:
        return Response(self.registry.render(), media_type=CONTENT_TYPE)

    # Hosts ------------------------------------------------------------------------------------

    async def hosts(self, request: Request) -> Response:
        params = request.query_params
        limit = parse_limit(params, default=500, maximum=5000)
        cursor = parse_cursor(params, (str,))
        rows = await self.pool.fetch(
            _HOSTS_SQL + " WHERE ($1::text IS NULL OR h.host > $1) ORDER BY h.host LIMIT $2",
            cursor[0] if cursor else None,
            limit + 1,
        )
        now = time.time()
        pressure = self._pressure()
        hosts = [self._host(row, now, pressure.get(row["host"], {})) for row in rows[:limit]]
        next_cursor = encode_cursor([hosts[-1]["host"]]) if len(rows) > limit else None
        return json_response({"hosts": hosts, "next_cursor": next_cursor})

    async def host(self, request: Request) -> Response:
        name = request.path_params["host"]
        row = await self.pool.fetchrow(_HOSTS_SQL + " WHERE h.host = $1", name)
        if row is None:
            raise ApiError(404, "not_found", f"no host {name!r} has reported", "host")
        host = self._host(row, time.time(), self._pressure().get(name, {}))
        host["latest"] = self._latest_samples(name, None)
        host["active_alerts"] = await self._alert_rows(
            "WHERE host = $1 AND status = 'firing' ORDER BY starts_at DESC, id LIMIT 100", name
        )
        return json_response(host)

    def _host(self, row: asyncpg.Record, now: float, pressure: dict[str, float]) -> dict[str, Any]:
        alerts: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
        alerts.update(_decode_json(row["alerts"]))
        status = self.host_status(row["status"], row["last_seen"], row["interval"], now)
        return {
            "host": row["host"],
            "status": status,
            "last_seen": row["last_seen"],
            "first_seen": row["first_seen"],
            "health": health_score(status, alerts, pressure),
            "facts": _decode_json(row["facts"]),
            "labels": _decode_json(row["labels"]),
            "alerts": alerts,
        }

    def _pressure(self) -> dict[str, dict[str, float]]:
        """Per host, the newest value of each resource metric the health score looks at
        (the fullest disk for ``disk.used_percent``)."""
        found: dict[str, dict[str, float]] = {}
        for (host, name, _), (_, value) in self.latest.items():
            if name in PRESSURE_METRICS:
                per_host = found.setdefault(host, {})
                per_host[name] = max(value, per_host.get(name, value))
        return found

    def host_status(self, reported: str, last_seen: float, interval: float | None, now: float) -> str:
        """``offline`` after a clean shutdown; ``up`` while data arrives; ``down`` after three
        missed intervals (or ``host_down_after`` for hosts that do not report an interval)."""
        if reported == "offline":
            return "offline"
        down_after = 3 * interval if interval else float(self.config.host_down_after)
        return "up" if now - last_seen <= down_after else "down"

    # Series and queries -----------------------------------------------------------------------

    async def series(self, request: Request) -> Response:
        params = request.query_params
        limit = parse_limit(params, default=1000, maximum=10000)
        cursor = parse_cursor(params, (int,))
        search = params.get("q") or None
        rows = await self.pool.fetch(
            """
            SELECT id, host, name, labels::text AS labels, unit FROM series
            WHERE ($1::text IS NULL OR host = $1) AND ($2::text IS NULL OR name = $2)
              AND labels @> $3::jsonb AND ($4::text IS NULL OR strpos(name, $4) > 0)
              AND ($5::bigint IS NULL OR id > $5)
            ORDER BY id LIMIT $6
            """,
            params.get("host") or None,
            params.get("metric") or None,
            _json.encode(label_matchers(params)).decode(),
            search,
            cursor[0] if cursor else None,
            limit + 1,
        )
        series = [
            {
                "id": row["id"],
                "host": row["host"],
                "metric": row["name"],
                "labels": _decode_json(row["labels"]),
                "unit": row["unit"],
            }
            for row in rows[:limit]
        ]
        next_cursor = encode_cursor([series[-1]["id"]]) if len(rows) > limit else None
        return json_response({"series": series, "next_cursor": next_cursor})

    async def metric_names(self, request: Request) -> Response:
        """Every metric name with how many series and hosts carry it, its unit and the names of
        its labels: what a metric picker offers (custom ``app.*`` metrics included)."""
        params = request.query_params
        rows = await self.pool.fetch(
            """
            SELECT s.name, count(DISTINCT s.id) AS series, count(DISTINCT s.host) AS hosts,
                   max(s.unit) AS unit, array_remove(array_agg(DISTINCT k), NULL) AS label_names
            FROM series s LEFT JOIN LATERAL jsonb_object_keys(s.labels) AS k ON true
            WHERE ($1::text IS NULL OR s.host = $1) AND ($2::text IS NULL OR strpos(s.name, $2) > 0)
            GROUP BY s.name ORDER BY s.name
            """,
            params.get("host") or None,
            params.get("q") or None,
        )
        metrics = [
            {
                "name": row["name"],
                "series": row["series"],
                "hosts": row["hosts"],
                "unit": row["unit"],
                "label_names": sorted(row["label_names"]),
            }
            for row in rows
        ]
        return json_response({"metrics": metrics})

    async def query(self, request: Request) -> Response:
        params = request.query_params
        metrics = [m for m in params.getlist("metric") if m]
        if not metrics:
            raise invalid("metric", "metric is required (repeat it for several metrics)")
        host = params.get("host") or None
        matchers = label_matchers(params)
        step = parse_step(params)
        agg = parse_choice(params, "agg", AGGREGATES) or "avg"
        now = time.time()
        start, end = parse_range(params, now)
        series = await self.pool.fetch(
            """
            SELECT id, host, name, labels::text AS labels FROM series
            WHERE name = ANY($1::text[]) AND ($2::text IS NULL OR host = $2) AND labels @> $3::jsonb
            ORDER BY name, host, labels::text
            """,
            metrics,
            host,
            _json.encode(matchers).decode(),
        )
        ids = [row["id"] for row in series]
        points: dict[int, list[tuple[float, float | None]]]
        if step == "raw":
            source, width = "raw", 0.0
            points = await self._raw_points(ids, start, end)
        else:
            width = auto_step(end - start) if step == "auto" else float(step)
            source = self._source(width, start, now)
            if max(len(ids), 1) * (end - start) / width > self.config.query_max_points:
                raise ApiError(
                    400,
                    "too_many_points",
                    f"the answer would hold more than {self.config.query_max_points} points; "
                    "use a larger step or a shorter range",
                    "step",
                )
            points = await self._bucketed(ids, start, end, width=width, source=source, agg=agg)
        return json_response(
            {
                "step": width,
                "source": source,
                "agg": None if step == "raw" else agg,
                "from": start,
                "to": end,
                "series": [
                    {
                        "host": row["host"],
                        "metric": row["name"],
                        "labels": _decode_json(row["labels"]),
                        "points": points.get(row["id"], []),
                    }
                    for row in series
                ],
            }
        )

    def _source(self, width: float, start: float, now: float) -> str:
        """The finest data that is coarse enough for ``width`` and still kept for ``start``."""
        retention = self.config.retention
        raw_kept = not retention.raw or start >= now - retention.raw
        if (width < 60 or width % 60) and raw_kept:
            return "raw"
        minutes_kept = not retention.rollup_1m or start >= now - retention.rollup_1m
        if (width < 3600 or width % 3600) and minutes_kept:
            return "1m"
        return "1h"

    async def _raw_points(
        self, ids: list[int], start: float, end: float
    ) -> dict[int, list[tuple[float, float | None]]]:
        points: dict[int, list[tuple[float, float | None]]] = {}
        if not ids:
            return points
        limit = self.config.query_max_points
        rows = await self.pool.fetch(
            """
            SELECT series_id, extract(epoch FROM time)::float8 AS t, value FROM samples
            WHERE series_id = ANY($1::bigint[]) AND time >= to_timestamp($2) AND time <= to_timestamp($3)
            ORDER BY series_id, time
            LIMIT $4
            """,
            ids,
            start,
            end,
            limit + 1,
        )
        if len(rows) > limit:
            raise ApiError(
                400,
                "too_many_points",
                f"the answer would hold more than {limit} points; narrow the time range or the series",
                "from",
            )
        for row in rows:
            points.setdefault(row["series_id"], []).append((row["t"], row["value"]))
        return points

    async def _bucketed(
        self, ids: list[int], start: float, end: float, *, width: float, source: str, agg: str
    ) -> dict[int, list[tuple[float, float | None]]]:
        points: dict[int, list[tuple[float, float | None]]] = {}
        if not ids:
            return points
        if source == "raw":
            table, column, expression = "samples", "time", _RAW_AGG[agg]
        else:
            table, column = ("samples_1m" if source == "1m" else "samples_1h"), "bucket"
            expression = _ROLLUP_AGG.get(agg, "array_agg(hist::text)")
        rows = await self.pool.fetch(
            f"""
            SELECT series_id, extract(epoch FROM b)::float8 AS t, v FROM (
                SELECT series_id, date_bin(make_interval(secs => $4), {column}, 'epoch') AS b,
                       {expression} AS v
                FROM {table}
                WHERE series_id = ANY($1::bigint[])
                  AND {column} >= to_timestamp($2) AND {column} <= to_timestamp($3)
                GROUP BY 1, 2
            ) AS buckets
            ORDER BY series_id, b
            """,
            ids,
            start - start % width if source != "raw" else start,
            end,
            width,
        )
        percentile = _PERCENTILES.get(agg)
        for row in rows:
            value = row["v"]
            if source != "raw" and percentile is not None:
                hist: rollup.Hist = {}
                for text in value:
                    # not stored again: the values may stay known however many they are
                    rollup.merge(hist, msgspec.json.decode(text), limit=None)
                value = rollup.quantile(hist, percentile)
            points.setdefault(row["series_id"], []).append((row["t"], value))
        return points

    async def latest_values(self, request: Request) -> Response:
        params = request.query_params
        host, metric = params.get("host") or None, params.get("metric") or None
        if host is None and metric is None:
            # Every series: a dashboard's most common ask, so the encoded answer is kept until
            # the next update of the values.
            version = self.latest.version
            if self._latest_all is None or self._latest_all[0] != version:
                body = _json.encode({"samples": self._latest_samples(None, None)})
                self._latest_all = (version, body)
            return Response(self._latest_all[1], media_type="application/json")
        return json_response({"samples": self._latest_samples(host, metric)})

    def _latest_samples(self, host: str | None, metric: str | None) -> list[LatestSample]:
        """Newest values, by host, metric and labels; ``metric`` is a name, a glob (``check.*``)
        or a comma-separated list. Built for speed: every series at once is a common ask."""
        patterns = [p for p in (metric or "").split(",") if p]

        def wanted(name: str) -> bool:
            return not patterns or any(p == name or fnmatch.fnmatchcase(name, p) for p in patterns)

        items = self.latest.items()
        if host is not None or patterns:
            items = [(key, tv) for key, tv in items if (host is None or key[0] == host) and wanted(key[1])]
        return [
            LatestSample(h, name, msgspec.Raw(labels), when, value)
            for (h, name, labels), (when, value) in sorted(items)
        ]

    # Events -------------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        params = request.query_params
        limit = parse_limit(params, default=100, maximum=5000)
        cursor = parse_cursor(params, (float, str, str, str))
        start, end = parse_range(params, time.time(), default_span=86400.0)
        rows = await self.pool.fetch(
            """
            SELECT extract(epoch FROM time)::float8 AS time, host, type, message, labels::text AS labels,
                   value, md5(message || labels::text) AS k
            FROM events
            WHERE time >= to_timestamp($1) AND time <= to_timestamp($2)
              AND ($3::text IS NULL OR host = $3) AND ($4::text IS NULL OR type = $4)
              AND ($5::float8 IS NULL
                   OR (time, host, type, md5(message || labels::text)) < (to_timestamp($5), $6, $7, $8))
            ORDER BY time DESC, host DESC, type DESC, k DESC
            LIMIT $9
            """,
            start,
            end,
            params.get("host") or None,
            params.get("type") or None,
            *(cursor or [None, None, None, None]),
            limit + 1,
        )
        events = [
            {
                "time": r["time"],
                "host": r["host"],
                "type": r["type"],
                "message": r["message"],
                "labels": _decode_json(r["labels"]),
                "value": r["value"],
            }
            for r in rows[:limit]
        ]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor([last["time"], last["host"], last["type"], last["k"]])
        return json_response({"events": events, "next_cursor": next_cursor})

    async def event_counts(self, request: Request) -> Response:
        """Events per type in time buckets (``step``: ``auto`` or a duration); buckets without
        events are left out."""
        params = request.query_params
        start, end = parse_range(params, time.time(), default_span=86400.0)
        step = parse_step(params)
        if step == "raw":
            raise invalid("step", "event counts need buckets: step=auto or a duration like 5m")
        width = auto_step(end - start) if step == "auto" else float(step)
        if (end - start) / width > self.config.query_max_points:
            raise ApiError(
                400,
                "too_many_points",
                f"the answer would hold more than {self.config.query_max_points} buckets a type; "
                "use a larger step or a shorter range",
                "step",
            )
        rows = await self.pool.fetch(
            """
            SELECT type, extract(epoch FROM date_bin(make_interval(secs => $5), time, 'epoch'))::float8 AS t,
                   count(*) AS n
            FROM events
            WHERE time >= to_timestamp($1) AND time <= to_timestamp($2)
              AND ($3::text IS NULL OR host = $3) AND ($4::text IS NULL OR type = $4)
            GROUP BY 1, 2 ORDER BY 1, 2
            """,
            start,
            end,
            params.get("host") or None,
            params.get("type") or None,
            width,
        )
        types: dict[str, list[tuple[float, int]]] = {}
        for row in rows:
            types.setdefault(row["type"], []).append((row["t"], row["n"]))
        return json_response(
            {
                "step": width,
                "from": start,
                "to": end,
                "types": [
                    {"type": name, "total": sum(n for _, n in points), "points": points}
                    for name, points in types.items()
                ],
            }
        )

    # Alerts -------------------------------------------------------------------------------------

    async def alerts(self, request: Request) -> Response:
        params = request.query_params
        status = parse_choice(params, "status", ALERT_STATUSES)
        severity = parse_choice(params, "severity", SEVERITIES)
        limit = parse_limit(params, default=100, maximum=1000)
        cursor = parse_cursor(params, (float, str))
        now = time.time()
        start = parse_time(params["from"], now, "from") if "from" in params else None
        end = parse_time(params["to"], now, "to") if "to" in params else None
        if start is not None and end is not None and start > end:
            raise invalid("from", "from must not be later than to")
        alerts = await self._alert_rows(
            """
            WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR severity = $2)
              AND ($3::text IS NULL OR host = $3) AND ($4::text IS NULL OR rule = $4)
              AND ($5::float8 IS NULL OR coalesce(ends_at, 'infinity') >= to_timestamp($5))
              AND ($6::float8 IS NULL OR starts_at <= to_timestamp($6))
              AND ($7::float8 IS NULL OR starts_at < to_timestamp($7)
                   OR (starts_at = to_timestamp($7) AND id > $8))
            ORDER BY starts_at DESC, id
            LIMIT $9
            """,
            status,
            severity,
            params.get("host") or None,
            params.get("rule") or None,
            start,
            end,
            *(cursor or [None, None]),
            limit + 1,
        )
        next_cursor = None
        if len(alerts) > limit:
            alerts = alerts[:limit]
            next_cursor = encode_cursor([alerts[-1]["starts_at"], alerts[-1]["id"]])
        return json_response({"alerts": alerts, "next_cursor": next_cursor})

    async def _alert_rows(self, where: str, *args: Any) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(_ALERT_SELECT + where, *args)
        alerts = []
        for row in rows:
            alert = dict(row)
            for name in ("labels", "annotations", "notes"):
                alert[name] = _decode_json(row[name])
            alert["acknowledged"] = alert["acknowledged_at"] is not None
            alerts.append(alert)
        return alerts

    async def alert(self, request: Request) -> Response:
        alert_id = request.path_params["id"]
        found = await self._alert_rows("WHERE id = $1", alert_id)
        if not found:
            raise ApiError(404, "not_found", f"no alert {alert_id!r}", "id")
        alert = found[0]
        history = await self.pool.fetch(
            """
            SELECT extract(epoch FROM time)::float8 AS time, event, seq, payload::text AS payload
            FROM alert_history WHERE alert_id = $1 ORDER BY time, id
            """,
            alert_id,
        )
        alert["history"] = [
            {"time": h["time"], "event": h["event"], "seq": h["seq"], "payload": _decode_json(h["payload"])}
            for h in history
        ]
        alert["deliveries"] = await self._notification_rows(
            "WHERE alert_id = $1 ORDER BY time, id LIMIT 1000", alert_id
        )
        return json_response(alert)

    async def alert_action(self, request: Request) -> Response:
        alert_id = request.path_params["id"]
        verb = request.path_params["action"]
        action_name = _ACTIONS.get(verb)
        if action_name is None:
            raise ApiError(404, "not_found", "no such endpoint")
        body = (
            parse_body(await self._body(request), NoteBody) if await self._has_body(request) else NoteBody()
        )
        if action_name == "note" and not body.note.strip():
            raise invalid("note", "a note must not be empty")
        row = await self.pool.fetchrow("SELECT fingerprint FROM alerts WHERE id = $1", alert_id)
        if row is None:
            raise ApiError(404, "not_found", f"no alert {alert_id!r}", "id")
        principal = self._principal(request)
        action = AlertAction(
            alert_id=alert_id,
            action=action_name,  # type: ignore[arg-type]
            actor=principal.name,
            time=time.time(),
            note=body.note,
            fingerprint=row["fingerprint"],
        )
        await self._publish(self.subjects.actions, encode(action))
        await self.store.write_actions([action])
        _audit_details(request, {"alert_id": alert_id, "action": action_name})
        found = await self._alert_rows("WHERE id = $1", alert_id)
        return json_response(found[0])

    # Rules, silences, notifications -------------------------------------------------------------

    async def rules(self, request: Request) -> Response:
        if self.nc is None or not self.nc.is_connected:
            raise ApiError(503, "unavailable", "NATS is not connected; the rules cannot be asked for")
        try:
            reply = await request_json(
                self.nc,
                self.subjects.control("evaluator", "rules"),
                timeout=float(self.config.control_timeout),
            )
        except LookupError:
            raise ApiError(503, "unavailable", "no evaluator answered; is one running?") from None
        return json_response(reply)

    async def silences(self, request: Request) -> Response:
        params = request.query_params
        state = parse_choice(params, "state", ("active", "pending", "expired"))
        limit = parse_limit(params, default=100, maximum=1000)
        cursor = parse_cursor(params, (float, str))
        now = time.time()
        rows = await self.pool.fetch(
            _SILENCE_SELECT
            + """
            WHERE ($1::text IS NULL
                   OR ($1 = 'active' AND starts_at <= to_timestamp($2) AND ends_at > to_timestamp($2))
                   OR ($1 = 'pending' AND starts_at > to_timestamp($2))
                   OR ($1 = 'expired' AND ends_at <= to_timestamp($2)))
              AND ($3::float8 IS NULL OR created_at < to_timestamp($3)
                   OR (created_at = to_timestamp($3) AND id > $4))
            ORDER BY created_at DESC, id LIMIT $5
            """,
            state,
            now,
            *(cursor or [None, None]),
            limit + 1,
        )
        silences = [self._silence(row, now) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor([last["created_at"], last["id"]])
        return json_response({"silences": silences, "next_cursor": next_cursor})

    @staticmethod
    def _silence(row: asyncpg.Record, now: float) -> dict[str, Any]:
        silence = {k: row[k] for k in ("id", "starts_at", "ends_at", "author", "comment", "created_at")}
        silence["matchers"] = _decode_json(row["matchers"])
        silence["state"] = (
            "pending" if row["starts_at"] > now else "active" if row["ends_at"] > now else "expired"
        )
        return silence

    async def create_silence(self, request: Request) -> Response:
        body = parse_body(await self._body(request), SilenceBody)
        now = time.time()
        for i, matcher in enumerate(body.matchers):
            if matcher.regex:
                try:
                    compile_regex(matcher.value)
                except RegexError as exc:
                    raise invalid(f"matchers[{i}].value", f"not a regular expression: {exc}") from None
        starts_at = _body_time(body.starts_at, now, "starts_at") if body.starts_at is not None else now
        if body.ends_at is not None and body.duration is not None:
            raise invalid("duration", "give ends_at or duration, not both")
        if body.ends_at is not None:
            ends_at = _body_time(body.ends_at, now, "ends_at")
        elif body.duration is not None:
            try:
                ends_at = starts_at + parse_duration(body.duration)
            except ValueError as exc:
                raise invalid("duration", str(exc)) from None
            if not ends_at <= 32503680000.0:
                raise invalid("duration", "duration reaches beyond the range of unix times")
        else:
            raise invalid("ends_at", "a silence needs ends_at or duration")
        if ends_at <= starts_at:
            raise invalid("ends_at", "ends_at must be later than starts_at")
        if ends_at <= now:
            raise invalid("ends_at", "ends_at is in the past; the silence would never apply")
        silence = {
            "id": uuid.uuid4().hex,
            "matchers": [msgspec.structs.asdict(m) for m in body.matchers],
            "starts_at": starts_at,
            "ends_at": ends_at,
            "author": self._principal(request).name,
            "comment": body.comment,
            "created_at": now,
        }
        await self._put_silence(silence)
        await self.pool.execute(
            """
            INSERT INTO silences (id, matchers, starts_at, ends_at, author, comment, created_at)
            VALUES ($1, $2::jsonb, to_timestamp($3), to_timestamp($4), $5, $6, to_timestamp($7))
            """,
            silence["id"],
            _json.encode(silence["matchers"]).decode(),
            starts_at,
            ends_at,
            silence["author"],
            body.comment,
            now,
        )
        _audit_details(request, {"silence_id": silence["id"]})
        silence["state"] = "pending" if starts_at > now else "active"
        return json_response(silence, status=201)

    async def expire_silence(self, request: Request) -> Response:
        silence_id = request.path_params["id"]
        row = await self.pool.fetchrow(_SILENCE_SELECT + " WHERE id = $1", silence_id)
        if row is None:
            raise ApiError(404, "not_found", f"no silence {silence_id!r}", "id")
        now = time.time()
        silence = self._silence(row, now)
        if silence["state"] != "expired":
            silence["ends_at"] = max(now, silence["starts_at"])
            await self._put_silence({k: v for k, v in silence.items() if k != "state"})
            await self.pool.execute(
                "UPDATE silences SET ends_at = to_timestamp($2), expired_at = now() WHERE id = $1",
                silence_id,
                silence["ends_at"],
            )
            silence["state"] = "expired"
        _audit_details(request, {"silence_id": silence_id})
        return json_response(silence)

    async def _put_silence(self, silence: dict[str, Any]) -> None:
        """Store ``silence`` in the KV bucket in the notifier's format."""
        value = {k: silence[k] for k in ("id", "matchers", "starts_at", "ends_at", "author", "comment")}
        value["v"] = 1
        if self.nc is None or not self.nc.is_connected:
            raise ApiError(503, "unavailable", "NATS is not connected; silences cannot be stored")
        try:
            kv = await self.nc.jetstream().key_value(self.subjects.bucket("silences"))
            await kv.put(silence["id"], _json.encode(value))
        except Exception as exc:
            log.warning("cannot store a silence", extra={"reason": repr(exc)})
            raise ApiError(503, "unavailable", "the silences bucket is unavailable; try again") from None

    async def notifications(self, request: Request) -> Response:
        params = request.query_params
        status = parse_choice(params, "status", DELIVERY_STATUSES)
        limit = parse_limit(params, default=100, maximum=1000)
        cursor = parse_cursor(params, (int,))
        rows = await self._notification_rows(
            """
            WHERE ($1::text IS NULL OR alert_id = $1) AND ($2::text IS NULL OR channel = $2)
              AND ($3::text IS NULL OR status = $3) AND ($4::bigint IS NULL OR id < $4)
            ORDER BY id DESC LIMIT $5
            """,
            params.get("alert") or None,
            params.get("channel") or None,
            status,
            cursor[0] if cursor else None,
            limit + 1,
        )
        next_cursor = encode_cursor([rows[limit - 1]["id"]]) if len(rows) > limit else None
        return json_response({"notifications": rows[:limit], "next_cursor": next_cursor})

    async def _notification_rows(self, where: str, *args: Any) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """
            SELECT id, extract(epoch FROM time)::float8 AS time, alert_id, channel, status, attempt,
                   transition, rule, host, error, reason
            FROM notifications
            """
            + where,
            *args,
        )
        return [dict(row) for row in rows]

    # Export and HTTP ingest ---------------------------------------------------------------------

    async def export(self, request: Request) -> Response:
        params = request.query_params
        kind = parse_choice(params, "kind", ("samples", "alerts", "events")) or "samples"
        fmt = parse_choice(params, "format", ("csv", "json")) or "csv"
        start, end = parse_range(params, time.time(), default_span=86400.0)
        host = params.get("host") or None
        metric = params.get("metric") or None
        sql, columns = _EXPORTS[kind]
        args: list[Any] = [start, end, host]
        if kind == "samples":
            # The same label matchers as /query, so an export holds what the chart showed.
            args += [metric, _json.encode(label_matchers(params)).decode()]
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        filename = f"signalfire-{kind}.{fmt}"
        _audit_skip(request)
        return StreamingResponse(
            self._export_rows(sql, args, columns, fmt),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    async def _export_rows(
        self, sql: str, args: list[Any], columns: tuple[str, ...], fmt: str
    ) -> AsyncIterator[bytes]:
        chunk: list[bytes] = []
        first = True
        if fmt == "csv":
            yield (",".join(columns) + "\r\n").encode()
        else:
            yield b"["
        async with self.pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(sql, *args, prefetch=2000):
                if fmt == "csv":
                    out = io.StringIO()
                    csv.writer(out).writerow([spreadsheet_cell(row[c]) for c in columns])
                    chunk.append(out.getvalue().encode())
                else:
                    item = {
                        c: (_decode_json(row[c]) if c in ("labels", "annotations") else row[c])
                        for c in columns
                    }
                    chunk.append((b"" if first else b",") + _json.encode(item))
                    first = False
                if len(chunk) >= 1000:
                    yield b"".join(chunk)
                    chunk = []
        if chunk:
            yield b"".join(chunk)
        if fmt == "json":
            yield b"]"

    async def ingest_metrics(self, request: Request) -> Response:
        batch = parse_body(await self._body(request), MetricBatch)
        await self._publish(self.subjects.metrics(batch.host), encode(batch))
        _audit_details(request, {"host": batch.host, "samples": len(batch.samples)})
        return json_response({"accepted": len(batch.samples)}, status=202)

    async def ingest_events(self, request: Request) -> Response:
        batch = parse_body(await self._body(request), EventBatch)
        await self._publish(self.subjects.events(batch.host), encode(batch))
        _audit_details(request, {"host": batch.host, "events": len(batch.events)})
        return json_response({"accepted": len(batch.events)}, status=202)

    # Tokens and audit (admin) -------------------------------------------------------------------

    async def tokens(self, request: Request) -> Response:
        return json_response({"tokens": await list_tokens(self.pool), "next_cursor": None})

    async def create_token(self, request: Request) -> Response:
        body = parse_body(await self._body(request), TokenBody)
        if not body.name.strip():
            raise invalid("name", "a token needs a name")
        principal = self._principal(request)
        token = await create_token(self.pool, body.name, body.role, created_by=principal.name)
        row = await self.pool.fetchrow(
            "SELECT id, extract(epoch FROM created_at)::float8 AS created_at FROM api_tokens WHERE hash = $1",
            hash_token(token),
        )
        assert row is not None
        _audit_details(request, {"token_id": row["id"], "name": body.name, "role": body.role})
        return json_response(
            {
                "id": row["id"],
                "name": body.name.strip(),
                "role": body.role,
                "token": token,
                "created_at": row["created_at"],
            },
            status=201,
        )

    async def revoke_token(self, request: Request) -> Response:
        raw = request.path_params["id"]
        try:
            token_id = int(raw)
        except ValueError:
            raise invalid("id", f"id={raw!r} is not a token id (a whole number)") from None
        if not 0 < token_id < 2**63:
            raise invalid("id", "a token id is a positive whole number")
        revoked = await revoke_token(self.pool, token_id)
        if revoked is None:
            raise ApiError(404, "not_found", f"no token {token_id}", "id")
        if self.hub is not None:
            self.hub.revoke({token_id})
        _audit_details(request, {"token_id": token_id})
        return json_response({"id": token_id, "revoked_at": revoked})

    async def audit(self, request: Request) -> Response:
        params = request.query_params
        limit = parse_limit(params, default=100, maximum=1000)
        cursor = parse_cursor(params, (int,))
        rows = await self.pool.fetch(
            """
            SELECT id, extract(epoch FROM time)::float8 AS time, actor, action, target, source, status,
                   details::text AS details
            FROM audit WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2
            """,
            cursor[0] if cursor else None,
            limit + 1,
        )
        entries = [{**dict(r), "details": _decode_json(r["details"])} for r in rows[:limit]]
        next_cursor = encode_cursor([entries[-1]["id"]]) if len(rows) > limit else None
        return json_response({"audit": entries, "next_cursor": next_cursor})

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    # Helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _principal(request: Request) -> Principal:
        principal: Principal = request.scope["state"]["principal"]
        return principal

    async def _has_body(self, request: Request) -> bool:
        return bool((await self._body(request)).strip())

    async def _body(self, request: Request) -> bytes:
        data: bytes = await request.body()
        return data

    async def _publish(self, subject: str, data: bytes) -> None:
        if self.nc is None or not self.nc.is_connected:
            raise ApiError(503, "unavailable", "NATS is not connected; try again shortly")
        try:
            await self.nc.jetstream().publish(subject, data, timeout=float(self.config.control_timeout))
        except Exception as exc:
            log.warning("publish failed", extra={"subject": subject, "reason": repr(exc)})
            raise ApiError(503, "unavailable", "NATS did not take the message; try again shortly") from None


class RequestMetrics:
    """Counts requests by method, route template and status (unknown paths share one label)."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute], counter: Counter) -> None:
        self.app = app
        self.routes = routes
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(self.routes, scope)
        status = ResponseStatus(send)
        try:
            await self.app(scope, receive, status.send)
        finally:
            self.counter.inc(method=scope["method"], route=route, status=str(status.code))


class ResponseStatus:
    """Passes an ASGI app's messages on to ``send`` and keeps the status of its response
    (500 until it starts one: an app that fails first has answered nothing)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.code = 500

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.code = message["status"]
        await self._send(message)


def route_of(routes: list[BaseRoute], scope: Scope) -> str:
    """The route template matching ``scope`` (``/api/v1/alerts/{id}``), or ``unmatched``."""
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(getattr(candidate, "path", "unmatched"))
    return "unmatched"


class LimitsMiddleware:
    """Bodies larger than ``max_body_bytes`` are 413s; NUL characters in parameters are 400s."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            reject_nul(Request(scope).query_params, scope.get("path", ""))
        except ApiError as exc:
            await error_response(exc.status, exc.code, exc.message, exc.field)(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > self.max_body_bytes:
                    await self._too_large()(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._error()
            return message

        await self.app(scope, limited_receive, send)

    def _error(self) -> ApiError:
        return ApiError(413, "too_large", f"the body is larger than {self.max_body_bytes} bytes", "body")

    def _too_large(self) -> Response:
        error = self._error()
        return error_response(error.status, error.code, error.message, error.field)


class AuditMiddleware:
    """Records every state-changing ``/api/v1`` call: who, what, when, from where, and how it
    ended (``details.outcome``: ``ok``, ``failed``, or ``denied`` for a 401/403 refusal). Sits
    outside :class:`AuthMiddleware`, which leaves the caller or its refusal in the state."""

    def __init__(self, app: ASGIApp, pool: asyncpg.Pool, routes: list[BaseRoute], failures: Counter) -> None:
        self.app = app
        self.pool = pool
        self.routes = routes
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        status = ResponseStatus(send)
        try:
            await self.app(scope, receive, status.send)
        finally:
            await self._record(scope, status.code)

    async def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state", {})
        principal: Principal | None = state.get("principal")
        refused: Refusal | None = state.get("refused")
        if principal is not None:
            actor = f"{principal.name} (token {principal.token_id}, {principal.role})"
        elif refused is not None:
            actor = refused.actor
        else:
            return
        client = scope.get("client")
        user_agent = next(
            (bytes(v).decode("latin-1") for k, v in scope.get("headers", []) if k == b"user-agent"), ""
        )
        source = f"{client[0]}" if client else ""
        details = {
            "route": route_of(self.routes, scope),
            "user_agent": user_agent[:200],
            "outcome": "denied" if refused is not None else "ok" if status < 400 else "failed",
            **({"reason": refused.message} if refused is not None else {}),
            **state.get("audit", {}),
        }
        try:
            await self.pool.execute(
                """
                INSERT INTO audit (actor, action, target, details, source, status)
                VALUES ($1, $2, $3, $4::jsonb, $5, $6)
                """,
                actor,
                f"{scope['method']} {details['route']}",
                scope.get("path", "")[:1000],
                _json.encode(details).decode(),
                source,
                status,
            )
        except Exception as exc:
            self.failures.inc()
            log.warning(
                "cannot write an audit record", extra={"reason": repr(exc), "path": scope.get("path")}
            )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.field)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database error", extra={"path": request.url.path, "reason": repr(exc)})
    return error_response(503, "unavailable", "the database is unavailable; try again shortly")


async def _data_error(request: Request, exc: Exception) -> Response:
    # Input the checks let through but PostgreSQL refuses (e.g. a number out of its range).
    return error_response(400, "invalid_parameter", f"the database refused a value: {exc}", "query")


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("internal error", extra={"path": request.url.path, "reason": repr(exc)})
    return error_response(500, "internal", "internal error; the gateway's log has the details")


def create_app(
    config: GatewayConfig,
    *,
    pool: asyncpg.Pool,
    registry: Registry,
    nc: NATS | None = None,
    latest: LatestValues | None = None,
    store: Store | None = None,
    hub: StreamHub | None = None,
    live_settings: LiveSettings | None = None,
) -> Starlette:
    """The gateway's ASGI application over resources the caller owns (pool, NATS client).

    With ``hub``, it also serves the live stream (WebSocket and SSE) fed from that hub; the
    dashboard is always served at ``/``.
    """
    api = Api(
        config, pool, nc, registry, latest if latest is not None else LatestValues(), store=store, hub=hub
    )
    requests = registry.counter(
        "http_requests_total", "HTTP requests answered", ["method", "route", "status"]
    )
    audit_failures = registry.counter("audit_failures_total", "Audit records that could not be written")
    v1 = "/api/v1"
    routes: list[BaseRoute] = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route(f"{v1}/openapi.json", api.openapi, methods=["GET"]),
        Route(f"{v1}/whoami", api.whoami, methods=["GET"]),
        Route(f"{v1}/hosts", api.hosts, methods=["GET"]),
        Route(f"{v1}/hosts/{{host}}", api.host, methods=["GET"]),
        Route(f"{v1}/series", api.series, methods=["GET"]),
        Route(f"{v1}/metric-names", api.metric_names, methods=["GET"]),
        Route(f"{v1}/query", api.query, methods=["GET"]),
        Route(f"{v1}/latest", api.latest_values, methods=["GET"]),
        Route(f"{v1}/events", api.events, methods=["GET"]),
        Route(f"{v1}/events/counts", api.event_counts, methods=["GET"]),
        Route(f"{v1}/alerts", api.alerts, methods=["GET"]),
        Route(f"{v1}/alerts/{{id}}", api.alert, methods=["GET"]),
        Route(f"{v1}/alerts/{{id}}/{{action}}", api.alert_action, methods=["POST"]),
        Route(f"{v1}/rules", api.rules, methods=["GET"]),
        Route(f"{v1}/silences", api.silences, methods=["GET"]),
        Route(f"{v1}/silences", api.create_silence, methods=["POST"]),
        Route(f"{v1}/silences/{{id}}", api.expire_silence, methods=["DELETE"]),
        Route(f"{v1}/notifications", api.notifications, methods=["GET"]),
        Route(f"{v1}/export", api.export, methods=["GET"]),
        Route(f"{v1}/ingest/metrics", api.ingest_metrics, methods=["POST"]),
        Route(f"{v1}/ingest/events", api.ingest_events, methods=["POST"]),
        Route(f"{v1}/tokens", api.tokens, methods=["GET"]),
        Route(f"{v1}/tokens", api.create_token, methods=["POST"]),
        Route(f"{v1}/tokens/{{id}}", api.revoke_token, methods=["DELETE"]),
        Route(f"{v1}/audit", api.audit, methods=["GET"]),
    ]
    if hub is not None:
        stream_rejected = registry.counter(
            "stream_messages_rejected_total", "Live-stream client messages refused (the client was closed)"
        )
        live = LiveEndpoints(hub, live_settings, rejected=stream_rejected)
        routes += [
            WebSocketRoute(f"{v1}/stream", live.websocket),
            Route(f"{v1}/events/stream", live.sse, methods=["GET"]),
        ]
        registry.gauge("stream_clients", "Connected live-stream clients", function=lambda: hub.clients)
        registry.gauge(
            "stream_frames_published",
            "Frames published to the live stream",
            function=lambda: hub.frames_published,
        )
        registry.gauge(
            "stream_frames_coalesced",
            "Metric frames replaced by a newer value before a slow client read them",
            function=lambda: hub.frames_coalesced,
        )
        registry.gauge(
            "stream_clients_stalled",
            "Clients disconnected for not reading",
            function=lambda: hub.clients_stalled,
        )
        registry.gauge(
            "stream_clients_revoked",
            "Clients disconnected because their API token was revoked or deleted",
            function=lambda: hub.clients_revoked,
        )
    routes += dashboard_routes()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watch: asyncio.Task[None] | None = None
        if hub is not None:
            checker = TokenWatch(hub, pool, float(config.stream_token_recheck))
            watch = asyncio.create_task(checker.run(), name="stream-token-watch")
        log.info("API ready")
        try:
            yield
        finally:
            if watch is not None:
                watch.cancel()
                with suppress(asyncio.CancelledError):
                    await watch
        log.info("API stopped")

    limiter = RateLimiter(config.rate_limit, config.rate_burst)
    failed_auth = FailureThrottle(config.auth_failure_rate, config.auth_failure_burst)
    auth_counters = AuthCounters(
        failures=registry.counter(
            "auth_failures_total", "Requests refused for a missing or invalid API token", ["reason"]
        ),
        throttled=registry.counter(
            "auth_throttled_total",
            "Requests refused (429) for too many failed authentications from their address",
        ),
    )
    middleware = [
        Middleware(RequestMetrics, routes=routes, counter=requests),
        Middleware(LimitsMiddleware, max_body_bytes=config.max_body_bytes),
        # Outside the auth, so that refused calls are audited too.
        Middleware(AuditMiddleware, pool=pool, routes=routes, failures=audit_failures),
        Middleware(AuthMiddleware, pool=pool, limiter=limiter, failures=failed_auth, counters=auth_counters),
    ]
    if config.cors_origins:
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=config.cors_origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            ),
        )
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            OSError: _unavailable,
            asyncpg.PostgresConnectionError: _unavailable,
            asyncpg.InterfaceError: _unavailable,
            asyncpg.CannotConnectNowError: _unavailable,
            asyncpg.DataError: _data_error,
            Exception: _internal,
        },
        lifespan=lifespan,
    )

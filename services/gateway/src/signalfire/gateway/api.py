"""The HTTP API: ``/api/v1/*`` (token required), ``/healthz``, ``/readyz`` and ``/metrics``.

Every error is ``{"error": {"code", "message", "field"}}`` with a fitting status; times in
answers are unix seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from signalfire.events import SEVERITIES
from signalfire.gateway.auth import AuthMiddleware
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.errors import ApiError, error_body, error_response
from signalfire.gateway.params import (
    label_matchers,
    parse_choice,
    parse_limit,
    parse_range,
    require,
)
from signalfire.gateway.store import LatestValues
from signalfire.telemetry import CONTENT_TYPE, Counter, Registry

log = logging.getLogger("signalfire.gateway.api")

ALERT_STATUSES = ("firing", "resolved")
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limited",
}

_json = msgspec.json.Encoder()


def json_response(data: Any, status: int = 200) -> Response:
    return Response(_json.encode(data), status_code=status, media_type="application/json")


def _decode_json(text: str | None) -> Any:
    return msgspec.json.decode(text) if text else {}


class Api:
    """The endpoints, bound to the resources they read."""

    def __init__(
        self,
        config: GatewayConfig,
        pool: asyncpg.Pool,
        nc: NATS | None,
        registry: Registry,
        latest: LatestValues,
    ) -> None:
        self.config = config
        self.pool = pool
        self.nc = nc
        self.registry = registry
        self.latest = latest

    # Operations ---------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

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

    # /api/v1 ----------------------------------------------------------------------------------

    async def hosts(self, request: Request) -> Response:
        rows = await self.pool.fetch(
            """
            SELECT h.host, h.status, extract(epoch FROM h.last_seen)::float8 AS last_seen, h.interval,
                   h.facts::text AS facts, h.labels::text AS labels,
                   (SELECT jsonb_object_agg(severity, n)::text
                      FROM (SELECT severity, count(*) AS n FROM alerts a
                             WHERE a.host = h.host AND a.status = 'firing' GROUP BY severity) c) AS alerts
            FROM hosts h ORDER BY h.host
            """
        )
        now = time.time()
        hosts = []
        for row in rows:
            alerts = dict.fromkeys(SEVERITIES, 0)
            alerts.update(_decode_json(row["alerts"]))
            hosts.append(
                {
                    "host": row["host"],
                    "status": self.host_status(row["status"], row["last_seen"], row["interval"], now),
                    "last_seen": row["last_seen"],
                    "facts": _decode_json(row["facts"]),
                    "labels": _decode_json(row["labels"]),
                    "alerts": alerts,
                }
            )
        return json_response({"hosts": hosts})

    def host_status(self, reported: str, last_seen: float, interval: float | None, now: float) -> str:
        """``offline`` after a clean shutdown; ``up`` while data arrives; ``down`` after three
        missed intervals (or ``host_down_after`` for hosts that do not report an interval)."""
        if reported == "offline":
            return "offline"
        down_after = 3 * interval if interval else float(self.config.host_down_after)
        return "up" if now - last_seen <= down_after else "down"

    async def query(self, request: Request) -> Response:
        params = request.query_params
        metric = require(params, "metric")
        host = params.get("host") or None
        matchers = label_matchers(params)
        step = params.get("step", "raw")
        if step not in ("raw", "auto"):
            raise ApiError(400, "invalid_parameter", "only step=raw is supported so far", "step")
        start, end = parse_range(params, time.time())
        series = await self.pool.fetch(
            """
            SELECT id, host, name, labels::text AS labels FROM series
            WHERE name = $1 AND ($2::text IS NULL OR host = $2) AND labels @> $3::jsonb
            ORDER BY host, labels::text
            """,
            metric,
            host,
            _json.encode(matchers).decode(),
        )
        limit = self.config.query_max_points
        points: dict[int, list[tuple[float, float]]] = {row["id"]: [] for row in series}
        if series:
            rows = await self.pool.fetch(
                """
                SELECT series_id, extract(epoch FROM time)::float8 AS t, value FROM samples
                WHERE series_id = ANY($1::bigint[]) AND time >= to_timestamp($2) AND time <= to_timestamp($3)
                ORDER BY series_id, time
                LIMIT $4
                """,
                list(points),
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
                points[row["series_id"]].append((row["t"], row["value"]))
        return json_response(
            {
                "step": 0,
                "source": "raw",
                "from": start,
                "to": end,
                "series": [
                    {
                        "host": row["host"],
                        "metric": row["name"],
                        "labels": _decode_json(row["labels"]),
                        "points": points[row["id"]],
                    }
                    for row in series
                ],
            }
        )

    async def alerts(self, request: Request) -> Response:
        params = request.query_params
        status = parse_choice(params, "status", ALERT_STATUSES)
        severity = parse_choice(params, "severity", SEVERITIES)
        limit = parse_limit(params, default=100, maximum=1000)
        rows = await self.pool.fetch(
            """
            SELECT id, fingerprint, rule, status, severity, host, labels::text AS labels,
                   annotations::text AS annotations, value, threshold,
                   extract(epoch FROM starts_at)::float8 AS starts_at,
                   extract(epoch FROM ends_at)::float8 AS ends_at,
                   extract(epoch FROM last_event_at)::float8 AS updated_at, seq
            FROM alerts
            WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR severity = $2)
              AND ($3::text IS NULL OR host = $3) AND ($4::text IS NULL OR rule = $4)
            ORDER BY starts_at DESC, id
            LIMIT $5
            """,
            status,
            severity,
            params.get("host") or None,
            params.get("rule") or None,
            limit,
        )
        alerts = []
        for row in rows:
            alert = dict(row)
            alert["labels"] = _decode_json(row["labels"])
            alert["annotations"] = _decode_json(row["annotations"])
            alerts.append(alert)
        return json_response({"alerts": alerts})


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
        route = "unmatched"
        for candidate in self.routes:
            match, _ = candidate.matches(scope)
            if match != Match.NONE:
                route = getattr(candidate, "path", "unmatched")
                break
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.counter.inc(method=scope["method"], route=route, status=str(status))


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


async def _internal(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal", "internal error; the gateway's log has the details")


def create_app(
    config: GatewayConfig,
    *,
    pool: asyncpg.Pool,
    registry: Registry,
    nc: NATS | None = None,
    latest: LatestValues | None = None,
) -> Starlette:
    """The gateway's ASGI application over resources the caller owns (pool, NATS client)."""
    api = Api(config, pool, nc, registry, latest if latest is not None else LatestValues())
    requests = registry.counter(
        "http_requests_total", "HTTP requests answered", ["method", "route", "status"]
    )
    routes: list[BaseRoute] = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/api/v1/hosts", api.hosts, methods=["GET"]),
        Route("/api/v1/query", api.query, methods=["GET"]),
        Route("/api/v1/alerts", api.alerts, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("API ready")
        yield
        log.info("API stopped")

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestMetrics, routes=routes, counter=requests),
            Middleware(AuthMiddleware, pool=pool),
        ],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            OSError: _unavailable,
            asyncpg.PostgresConnectionError: _unavailable,
            asyncpg.InterfaceError: _unavailable,
            asyncpg.CannotConnectNowError: _unavailable,
            Exception: _internal,
        },
        lifespan=lifespan,
    )

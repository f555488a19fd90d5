"""The gateway's ASGI application: ``/api/v1/*`` (token required), ``/healthz``, ``/readyz``,
``/metrics`` and the dashboard.

Every error is ``{"error": {"code", "message", "field"}}`` with a fitting status; times in
answers are unix seconds. The endpoints are declared in one module per resource
(:mod:`signalfire.gateway.api.catalog` lists them); this module binds them to the resources
the caller owns and wraps them in the middleware.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import asyncpg
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from signalfire.gateway.api.catalog import ENDPOINTS, ROLES
from signalfire.gateway.api.endpoint import Endpoint, Handler, SocketHandler
from signalfire.gateway.api.middleware import AuditMiddleware, LimitsMiddleware, RequestMetrics
from signalfire.gateway.api.openapi import openapi_document
from signalfire.gateway.api.resources import Resources, encode_json
from signalfire.gateway.auth import AuthCounters, AuthMiddleware, FailureThrottle
from signalfire.gateway.commits import Commits
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.errors import ApiError, error_response
from signalfire.gateway.live import LiveEndpoints, LiveSettings, TokenWatch
from signalfire.gateway.store import LatestValues, Store
from signalfire.gateway.stream import StreamHub
from signalfire.gateway.web import dashboard_routes
from signalfire.ratelimit import RateLimiter
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.gateway.api")

#: The live stream's gauges: name, help, the :class:`StreamHub` attribute they read.
_STREAM_GAUGES = (
    ("stream_clients", "Connected live-stream clients", "clients"),
    ("stream_frames_published", "Frames published to the live stream", "frames_published"),
    (
        "stream_frames_coalesced",
        "Metric frames replaced by a newer value before a slow client read them",
        "frames_coalesced",
    ),
    ("stream_clients_stalled", "Clients disconnected for not reading", "clients_stalled"),
    ("stream_resets", "Times every client was told to reload (committed frames were missed)", "resets"),
    (
        "stream_clients_revoked",
        "Clients disconnected because their API token was revoked or deleted",
        "clients_revoked",
    ),
)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limited",
}


def _route(endpoint: Endpoint, res: Resources) -> BaseRoute:
    """``endpoint`` as a Starlette route whose handler is bound to ``res``."""
    if endpoint.method == "WS":
        socket_handler: SocketHandler = endpoint.handler  # type: ignore[assignment]

        async def on_socket(ws: WebSocket) -> None:
            await socket_handler(res, ws)

        return WebSocketRoute(endpoint.path, on_socket)
    handler: Handler = endpoint.handler  # type: ignore[assignment]

    async def on_request(request: Request) -> Response:
        return await handler(res, request)

    return Route(endpoint.path, on_request, methods=[endpoint.method], name=handler.__name__)


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
    clock: Callable[[], float] = time.time,
    commits: Commits | None = None,
) -> Starlette:
    """The gateway's ASGI application over resources the caller owns (pool, NATS client).

    With ``hub``, it also serves the live stream (WebSocket and SSE) fed from that hub; the
    dashboard is always served at ``/``. ``clock`` gives the time the answers are computed at.
    ``commits`` is told by the consumers that store what the API publishes (alert actions,
    silences), so the endpoints that wait for them answer as soon as they are stored.
    """
    res = Resources(
        config=config,
        pool=pool,
        nc=nc,
        registry=registry,
        latest=latest if latest is not None else LatestValues(),
        store=store if store is not None else Store(pool),
        clock=clock,
        hub=hub,
        openapi_json=encode_json(openapi_document(ENDPOINTS)),
        commits=commits if commits is not None else Commits(),
    )
    requests = registry.counter("http_requests", "HTTP requests answered", ["method", "route", "status"])
    request_seconds = registry.histogram(
        "http_request_duration_seconds",
        "Time from a request's arrival to the end of its answer (a live stream: its whole life)",
        ["method", "route"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    )
    audit_failures = registry.counter("audit_failures", "Audit records that could not be written")
    if hub is not None:
        stream_rejected = registry.counter(
            "stream_messages_rejected", "Live-stream client messages refused (the client was closed)"
        )
        res.live = LiveEndpoints(hub, live_settings, rejected=stream_rejected)
        for name, description, attribute in _STREAM_GAUGES:
            registry.gauge(name, description, function=functools.partial(getattr, hub, attribute))
    routes = [_route(e, res) for e in ENDPOINTS if res.live is not None or not e.needs_hub]
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
            "auth_failures", "Requests refused for a missing or invalid API token", ["reason"]
        ),
        throttled=registry.counter(
            "auth_throttled",
            "Requests refused (429) for too many failed authentications from their address",
        ),
    )
    middleware = [
        Middleware(RequestMetrics, routes=routes, counter=requests, duration=request_seconds),
        Middleware(LimitsMiddleware, max_body_bytes=config.max_body_bytes),
        # Outside the auth, so that refused calls are audited too.
        Middleware(AuditMiddleware, pool=pool, routes=routes, failures=audit_failures),
        Middleware(
            AuthMiddleware,
            roles=ROLES.required,
            pool=pool,
            limiter=limiter,
            failures=failed_auth,
            counters=auth_counters,
        ),
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

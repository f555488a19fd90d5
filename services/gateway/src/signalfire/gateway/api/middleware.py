"""The HTTP middleware of the API: request counting, size and NUL limits, and the audit log
of state-changing calls."""

from __future__ import annotations

import logging
import time

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from signalfire.gateway.auth import Principal, Refusal
from signalfire.gateway.errors import ApiError, error_response
from signalfire.gateway.params import reject_nul
from signalfire.telemetry import Counter, Histogram

log = logging.getLogger("signalfire.gateway.api")

_json = msgspec.json.Encoder()


class RequestMetrics:
    """Counts requests by method, route template and status, and times them by method and
    route (unknown paths share one label)."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute], counter: Counter, duration: Histogram) -> None:
        self.app = app
        self.routes = routes
        self.counter = counter
        self.duration = duration

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(self.routes, scope)
        status = ResponseStatus(send)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, status.send)
        finally:
            method = scope["method"]
            self.duration.labels(method=method, route=route).observe(time.perf_counter() - started)
            self.counter.labels(method=method, route=route, status=str(status.code)).inc()


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
    outside :class:`AuthMiddleware`, which leaves the caller or its refusal in the state.

    The record is written before the response's last part reaches the caller, so whoever
    reads the audit log after a call returned finds the call in it; an app that fails
    without finishing its response is recorded as it unwinds."""

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
        recorded = False

        async def send_after_recording(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.body" and not message.get("more_body") and not recorded:
                recorded = True
                await self._record(scope, status.code)
            await status.send(message)

        try:
            await self.app(scope, receive, send_after_recording)
        finally:
            if not recorded:
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

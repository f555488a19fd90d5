"""Operations: ``/healthz``, ``/readyz``, ``/metrics`` (public), ``/api/v1/openapi.json``
(public) and ``/api/v1/whoami``."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.gateway.api.endpoint import Endpoint
from signalfire.gateway.api.resources import Resources, json_response, principal
from signalfire.gateway.auth import Role
from signalfire.gateway.errors import error_body
from signalfire.telemetry import exposition


class Whoami(msgspec.Struct, kw_only=True):
    """The calling token's name and role."""

    name: str
    role: Role


async def healthz(res: Resources, request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(res: Resources, request: Request) -> Response:
    reasons: list[str] = []
    try:
        await res.pool.fetchval("SELECT 1", timeout=2)
    except Exception as exc:
        reasons.append(f"database: {exc or type(exc).__name__}")
    if res.nc is None or not res.nc.is_connected:
        reasons.append("nats: not connected")
    if reasons:
        body = {"status": "not_ready", "reasons": reasons, **error_body("not_ready", "; ".join(reasons))}
        return json_response(body, status=503)
    return json_response({"status": "ready"})


async def metrics(res: Resources, request: Request) -> Response:
    body, content_type = exposition(res.registry, request.headers.get("accept"))
    return Response(body, media_type=content_type)


async def openapi(res: Resources, request: Request) -> Response:
    return Response(res.openapi_json, media_type="application/json")


async def whoami(res: Resources, request: Request) -> Response:
    caller = principal(request)
    return json_response(Whoami(name=caller.name, role=caller.role))


routes = [
    Endpoint(
        "GET",
        "/healthz",
        healthz,
        None,
        "Liveness",
        '`{"status": "ok"}` while the process runs',
        openapi=False,
    ),
    Endpoint(
        "GET",
        "/readyz",
        readyz,
        None,
        "Readiness",
        '200 `{"status": "ready"}` when the database answers and NATS is connected, else 503 with `reasons`',
        openapi=False,
    ),
    Endpoint(
        "GET",
        "/metrics",
        metrics,
        None,
        "Prometheus metrics",
        "the gateway's counters, gauges and histograms in the Prometheus text format "
        "(OpenMetrics when the `Accept` header asks for it)",
        openapi=False,
    ),
    Endpoint(
        "GET",
        "/api/v1/openapi.json",
        openapi,
        None,
        "This API's OpenAPI 3.1 document",
        "the OpenAPI 3.1 document of `/api/v1`, built from the same declarations as this table",
        openapi=False,
    ),
    Endpoint(
        "GET",
        "/api/v1/whoami",
        whoami,
        "viewer",
        "The calling token's name and role",
        '`{"name", "role"}` of the calling token (the dashboard hides what the role may not do)',
        answer=Whoami,
    ),
]

"""``/api/v1/stream`` (WebSocket) and ``/api/v1/events/stream`` (its SSE fallback): the live
stream, served by :class:`~signalfire.gateway.live.LiveEndpoints` when the gateway has a hub.

OpenAPI 3.1 cannot describe either, so they are left out of the document; docs/dashboard.md
describes their frames."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from signalfire.gateway.api.endpoint import Endpoint
from signalfire.gateway.api.resources import Resources

_DOC = "the live stream (WebSocket) and its SSE fallback: [docs/dashboard.md](dashboard.md#live-stream)"


async def websocket(res: Resources, ws: WebSocket) -> None:
    assert res.live is not None  # routed only with a hub
    await res.live.websocket(ws)


async def sse(res: Resources, request: Request) -> Response:
    assert res.live is not None
    return await res.live.sse(request)


routes = [
    Endpoint("WS", "/api/v1/stream", websocket, "viewer", "Live stream", _DOC, openapi=False, needs_hub=True),
    Endpoint(
        "GET",
        "/api/v1/events/stream",
        sse,
        "viewer",
        "Live stream as server-sent events",
        _DOC,
        openapi=False,
        needs_hub=True,
    ),
]

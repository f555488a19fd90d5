"""``/api/v1/rules``: the evaluator's rules and their active alerts, asked of the evaluator."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from signalfire.bus import request_json
from signalfire.gateway.api.endpoint import Endpoint
from signalfire.gateway.api.resources import Resources, json_response
from signalfire.gateway.errors import ApiError


async def rules(res: Resources, request: Request) -> Response:
    if res.nc is None or not res.nc.is_connected:
        raise ApiError(503, "unavailable", "NATS is not connected; the rules cannot be asked for")
    try:
        reply = await request_json(
            res.nc, res.subjects.control("evaluator", "rules"), timeout=float(res.config.control_timeout)
        )
    except LookupError:
        raise ApiError(503, "unavailable", "no evaluator answered; is one running?") from None
    return json_response(reply)


routes = [
    Endpoint(
        "GET",
        "/api/v1/rules",
        rules,
        "viewer",
        "The evaluator's rules and their active alerts (503 when no evaluator answers)",
        "the evaluator's answer on `sf.control.evaluator.rules`; 503 when no evaluator answers",
        answer=dict[str, Any],
    ),
]

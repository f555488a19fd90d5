"""``/api/v1/audit`` (admin): the log of state-changing calls, written by
:class:`~signalfire.gateway.api.middleware.AuditMiddleware`."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.gateway.api.endpoint import PAGE, Endpoint
from signalfire.gateway.api.resources import JsonObject, Resources, from_rows, json_response
from signalfire.gateway.params import encode_cursor, parse_cursor, parse_limit


class AuditEntry(msgspec.Struct, kw_only=True):
    """Who did what, when, from where, and how it ended (``status``)."""

    id: int
    time: float
    actor: str
    action: str
    target: str
    source: str
    status: int | None
    details: JsonObject


class AuditPage(msgspec.Struct, kw_only=True):
    audit: list[AuditEntry]
    next_cursor: str | None


async def audit(res: Resources, request: Request) -> Response:
    params = request.query_params
    limit = parse_limit(params, default=100, maximum=1000)
    cursor = parse_cursor(params, (int,))
    rows = await res.pool.fetch(
        """
        SELECT id, extract(epoch FROM time)::float8 AS time, actor, action, target, source, status,
               details::text AS details
        FROM audit WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2
        """,
        cursor[0] if cursor else None,
        limit + 1,
    )
    entries = from_rows(AuditEntry, rows[:limit], json=("details",))
    next_cursor = encode_cursor([entries[-1].id]) if len(rows) > limit else None
    return json_response(AuditPage(audit=entries, next_cursor=next_cursor))


routes = [
    Endpoint(
        "GET",
        "/api/v1/audit",
        audit,
        "admin",
        "Audit log of state-changing calls, newest first",
        '`{"audit": [{"id", "time", "actor", "action", "target", "source", "status", "details"}], '
        '"next_cursor"}`',
        params=PAGE,
        answer=AuditPage,
    ),
]

"""``/api/v1/notifications``: the notifier's delivery log."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.gateway.api.endpoint import PAGE, Endpoint, Param, enum
from signalfire.gateway.api.resources import Resources, from_rows, json_response
from signalfire.gateway.params import encode_cursor, parse_choice, parse_cursor, parse_limit

DELIVERY_STATUSES = ("sent", "failed", "retrying", "suppressed")

_SELECT = """
SELECT id, extract(epoch FROM time)::float8 AS time, alert_id, channel, status, attempt,
       transition, rule, host, error, reason
FROM notifications
"""


class Notification(msgspec.Struct, kw_only=True):
    """One delivery attempt of one alert to one channel."""

    id: int
    time: float
    alert_id: str
    channel: str
    status: str
    attempt: int
    transition: str
    rule: str
    host: str
    error: str | None
    reason: str | None


class NotificationPage(msgspec.Struct, kw_only=True):
    notifications: list[Notification]
    next_cursor: str | None


async def notification_rows(res: Resources, where: str, *args: Any) -> list[Notification]:
    """The deliveries ``where`` selects (``WHERE ... ORDER BY ... LIMIT ...`` over ``args``)."""
    rows = await res.pool.fetch(_SELECT + where, *args)
    return from_rows(Notification, rows)


async def notifications(res: Resources, request: Request) -> Response:
    params = request.query_params
    status = parse_choice(params, "status", DELIVERY_STATUSES)
    limit = parse_limit(params, default=100, maximum=1000)
    cursor = parse_cursor(params, (int,))
    rows = await notification_rows(
        res,
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
    next_cursor = encode_cursor([rows[limit - 1].id]) if len(rows) > limit else None
    return json_response(NotificationPage(notifications=rows[:limit], next_cursor=next_cursor))


routes = [
    Endpoint(
        "GET",
        "/api/v1/notifications",
        notifications,
        "viewer",
        "Delivery log, newest first",
        '`{"notifications": [...], "next_cursor"}`, newest first',
        params=(
            Param("alert", "alert id"),
            Param("channel", "channel name"),
            enum("status", "delivery status", DELIVERY_STATUSES),
            *PAGE,
        ),
        answer=NotificationPage,
    ),
]

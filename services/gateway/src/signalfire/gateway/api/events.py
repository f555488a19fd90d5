"""``/api/v1/events``: discrete events, newest first, and their counts per type over time."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.gateway.api.endpoint import HOST, PAGE, RANGE, Endpoint, Param
from signalfire.gateway.api.query import auto_step, too_many
from signalfire.gateway.api.resources import JsonObject, Resources, from_rows, json_response
from signalfire.gateway.errors import invalid
from signalfire.gateway.params import encode_cursor, parse_cursor, parse_limit, parse_range, parse_step

_DAY = 86400.0
_TYPE = Param("type", "event type")


class StoredEvent(msgspec.Struct, kw_only=True):
    """An event as stored."""

    time: float
    host: str
    type: str
    message: str
    labels: JsonObject
    value: float | None


class EventPage(msgspec.Struct, kw_only=True):
    events: list[StoredEvent]
    next_cursor: str | None


class TypeCounts(msgspec.Struct, kw_only=True):
    """Events of one type; ``points`` are ``[bucket start in unix seconds, events]``."""

    type: str
    total: int
    points: list[tuple[float, int]]


class EventCounts(msgspec.Struct, kw_only=True):
    step: float
    from_: float = msgspec.field(name="from")
    to: float
    types: list[TypeCounts]


async def events(res: Resources, request: Request) -> Response:
    params = request.query_params
    limit = parse_limit(params, default=100, maximum=5000)
    cursor = parse_cursor(params, (float, str, str, str))
    start, end = parse_range(params, res.clock(), default_span=_DAY)
    rows = await res.pool.fetch(
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
    found = from_rows(StoredEvent, rows[:limit], json=("labels",))
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor([last["time"], last["host"], last["type"], last["k"]])
    return json_response(EventPage(events=found, next_cursor=next_cursor))


async def event_counts(res: Resources, request: Request) -> Response:
    """Events per type in time buckets (``step``: ``auto`` or a duration); buckets without
    events are left out."""
    params = request.query_params
    start, end = parse_range(params, res.clock(), default_span=_DAY)
    step = parse_step(params)
    if step == "raw":
        raise invalid("step", "event counts need buckets: step=auto or a duration like 5m")
    width = auto_step(end - start) if step == "auto" else float(step)
    limit = res.config.query_max_points
    if (end - start) / width > limit:
        raise too_many(limit, "buckets a type; use a larger step or a shorter range", "step")
    rows = await res.pool.fetch(
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
        EventCounts(
            step=width,
            from_=start,
            to=end,
            types=[
                TypeCounts(type=name, total=sum(n for _, n in points), points=points)
                for name, points in types.items()
            ],
        )
    )


routes = [
    Endpoint(
        "GET",
        "/api/v1/events",
        events,
        "viewer",
        "Events, newest first",
        '`{"events": [...], "next_cursor"}`, newest first (default: last 24 h)',
        params=(HOST, _TYPE, *RANGE, *PAGE),
        answer=EventPage,
    ),
    Endpoint(
        "GET",
        "/api/v1/events/counts",
        event_counts,
        "viewer",
        "Events per type in time buckets (buckets without events are left out)",
        '`{"step", "from", "to", "types": [{"type", "total", "points": [[bucket start, count], ...]}]}`: '
        "events per type in buckets (`step` `auto`, the default, or a duration; default range the last "
        "24 h); buckets without events are left out",
        params=(HOST, _TYPE, *RANGE, Param("step", "`auto` (default) or a duration like `10s`, `5m`, `1h`")),
        answer=EventCounts,
    ),
]

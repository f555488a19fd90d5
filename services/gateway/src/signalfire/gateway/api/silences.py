"""``/api/v1/silences``: list, create and expire silences. A silence is stored in the
notifier's KV bucket (which mutes notifications) and in PostgreSQL (which lists them)."""

from __future__ import annotations

import uuid
from typing import Literal

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire import events
from signalfire.config import parse_duration
from signalfire.events import MAX_UNIX_TIME
from signalfire.gateway.api.endpoint import PAGE, Endpoint, Param, enum
from signalfire.gateway.api.resources import (
    Resources,
    audit_details,
    encode_json,
    json_response,
    log,
    principal,
)
from signalfire.gateway.bodies import SilenceBody, TimeValue, parse_body
from signalfire.gateway.errors import ApiError, invalid
from signalfire.gateway.params import encode_cursor, parse_choice, parse_cursor, parse_limit, parse_time
from signalfire.matchers import Matcher

STATES = ("active", "pending", "expired")
State = Literal["active", "pending", "expired"]

_SELECT = """
SELECT id, matchers::text AS matchers, extract(epoch FROM starts_at)::float8 AS starts_at,
       extract(epoch FROM ends_at)::float8 AS ends_at, author, comment,
       extract(epoch FROM created_at)::float8 AS created_at
FROM silences
"""


class Silence(msgspec.Struct, kw_only=True):
    """A silence and whether it applies now."""

    id: str
    matchers: list[Matcher]
    starts_at: float
    ends_at: float
    author: str
    comment: str
    created_at: float
    state: State


class SilencePage(msgspec.Struct, kw_only=True):
    silences: list[Silence]
    next_cursor: str | None


def _state(starts_at: float, ends_at: float, now: float) -> State:
    return "pending" if starts_at > now else "active" if ends_at > now else "expired"


def _silence(row: asyncpg.Record, now: float) -> Silence:
    return Silence(
        id=row["id"],
        matchers=msgspec.json.decode(row["matchers"], type=list[Matcher]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        author=row["author"],
        comment=row["comment"],
        created_at=row["created_at"],
        state=_state(row["starts_at"], row["ends_at"], now),
    )


def _body_time(value: TimeValue, now: float, field: str) -> float:
    if isinstance(value, str):
        return parse_time(value, now, field)
    if not 0 <= value <= MAX_UNIX_TIME:
        raise invalid(field, f"{field} is outside the range of unix times")
    return float(value)


async def silences(res: Resources, request: Request) -> Response:
    params = request.query_params
    state = parse_choice(params, "state", STATES)
    limit = parse_limit(params, default=100, maximum=1000)
    cursor = parse_cursor(params, (float, str))
    now = res.clock()
    rows = await res.pool.fetch(
        _SELECT
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
    found = [_silence(row, now) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor([last["created_at"], last["id"]])
    return json_response(SilencePage(silences=found, next_cursor=next_cursor))


def _ends_at(body: SilenceBody, starts_at: float, now: float) -> float:
    if body.ends_at is not None and body.duration is not None:
        raise invalid("duration", "give ends_at or duration, not both")
    if body.ends_at is not None:
        ends_at = _body_time(body.ends_at, now, "ends_at")
    elif body.duration is not None:
        try:
            ends_at = starts_at + parse_duration(body.duration)
        except ValueError as exc:
            raise invalid("duration", str(exc)) from None
        if not ends_at <= MAX_UNIX_TIME:
            raise invalid("duration", "duration reaches beyond the range of unix times")
    else:
        raise invalid("ends_at", "a silence needs ends_at or duration")
    if ends_at <= starts_at:
        raise invalid("ends_at", "ends_at must be later than starts_at")
    if ends_at <= now:
        raise invalid("ends_at", "ends_at is in the past; the silence would never apply")
    return ends_at


async def create_silence(res: Resources, request: Request) -> Response:
    body = parse_body(await request.body(), SilenceBody)
    now = res.clock()
    starts_at = _body_time(body.starts_at, now, "starts_at") if body.starts_at is not None else now
    ends_at = _ends_at(body, starts_at, now)
    silence = Silence(
        id=uuid.uuid4().hex,
        matchers=body.matchers,
        starts_at=starts_at,
        ends_at=ends_at,
        author=principal(request).name,
        comment=body.comment,
        created_at=now,
        state=_state(starts_at, ends_at, now),
    )
    await _put(res, silence)
    await res.pool.execute(
        """
        INSERT INTO silences (id, matchers, starts_at, ends_at, author, comment, created_at)
        VALUES ($1, $2::jsonb, to_timestamp($3), to_timestamp($4), $5, $6, to_timestamp($7))
        """,
        silence.id,
        encode_json(silence.matchers).decode(),
        starts_at,
        ends_at,
        silence.author,
        body.comment,
        now,
    )
    audit_details(request, {"silence_id": silence.id})
    return json_response(silence, status=201)


async def expire_silence(res: Resources, request: Request) -> Response:
    silence_id = request.path_params["id"]
    row = await res.pool.fetchrow(_SELECT + " WHERE id = $1", silence_id)
    if row is None:
        raise ApiError(404, "not_found", f"no silence {silence_id!r}", "id")
    now = res.clock()
    silence = _silence(row, now)
    if silence.state != "expired":
        silence.ends_at = max(now, silence.starts_at)
        await _put(res, silence)
        await res.pool.execute(
            "UPDATE silences SET ends_at = to_timestamp($2), expired_at = now() WHERE id = $1",
            silence_id,
            silence.ends_at,
        )
        silence.state = "expired"
    audit_details(request, {"silence_id": silence_id})
    return json_response(silence)


async def _put(res: Resources, silence: Silence) -> None:
    """Store ``silence`` in the KV bucket as the notifier reads it (:class:`events.Silence`)."""
    value = events.Silence(
        id=silence.id,
        matchers=silence.matchers,
        starts_at=silence.starts_at,
        ends_at=silence.ends_at,
        author=silence.author,
        comment=silence.comment,
    )
    if res.nc is None or not res.nc.is_connected:
        raise ApiError(503, "unavailable", "NATS is not connected; silences cannot be stored")
    try:
        kv = await res.nc.jetstream().key_value(res.subjects.bucket("silences"))
        await kv.put(silence.id, encode_json(value))
    except Exception as exc:
        log.warning("cannot store a silence", extra={"reason": repr(exc)})
        raise ApiError(503, "unavailable", "the silences bucket is unavailable; try again") from None


routes = [
    Endpoint(
        "GET",
        "/api/v1/silences",
        silences,
        "viewer",
        "Silences, newest first",
        '`{"silences": [...], "next_cursor"}`',
        params=(enum("state", "active, pending or expired", STATES), *PAGE),
        answer=SilencePage,
    ),
    Endpoint(
        "POST",
        "/api/v1/silences",
        create_silence,
        "operator",
        "Create a silence",
        'body `{"matchers": [{"name", "op"?, "value"}], "starts_at"?, "ends_at" or "duration", "comment"?}` '
        "(matchers: docs/matchers.md); 201 with the silence",
        body=SilenceBody,
        answer=Silence,
        status=201,
    ),
    Endpoint(
        "DELETE",
        "/api/v1/silences/{id}",
        expire_silence,
        "operator",
        "Expire a silence now",
        "expires the silence now",
        params=(Param("id", "silence id", where="path"),),
        answer=Silence,
    ),
]

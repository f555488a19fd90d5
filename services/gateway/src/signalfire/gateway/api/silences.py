"""``/api/v1/silences``: list, create and expire silences.

The ``sf_silences`` KV bucket is the silences' source of truth (the notifier mutes from it):
create and expire write only there. The gateway's :class:`~signalfire.gateway.silence_mirror.SilenceMirror`
copies the bucket into PostgreSQL, which the list reads; create and expire copy their write
into the table themselves (as the mirror will: each row keeps the revision it shows, so the
two copies agree in any order), so a list right after them shows it even while the mirror's
watch is behind."""

from __future__ import annotations

import uuid
from typing import Literal

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import InvalidKeyError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from starlette.requests import Request
from starlette.responses import Response

from signalfire import events
from signalfire.config import parse_duration
from signalfire.events import MAX_UNIX_TIME, PayloadError
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
from signalfire.gateway.silence_mirror import store_written
from signalfire.matchers import Matcher

STATES = ("active", "pending", "expired")
State = Literal["active", "pending", "expired"]

_SELECT = """
SELECT id, matchers::text AS matchers, extract(epoch FROM starts_at)::float8 AS starts_at,
       extract(epoch FROM ends_at)::float8 AS ends_at, author, comment,
       extract(epoch FROM created_at)::float8 AS created_at, revision
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
    stored = events.Silence(
        id=uuid.uuid4().hex,
        matchers=body.matchers,
        starts_at=starts_at,
        ends_at=ends_at,
        author=principal(request).name,
        comment=body.comment,
        created_at=now,
    )
    payload = encode_json(stored)

    async def create(nc: NATS, timeout: float) -> int:
        kv = await _bucket(res, nc, timeout)
        try:
            return await kv.create(stored.id, payload)
        except KeyWrongLastSequenceError:
            # an earlier try landed and its answer was lost (the id is new): that one
            entry = await kv.get(stored.id)
            if entry.value != payload:
                raise
            return entry.revision or 0

    # Written again while NATS does not take it (a node died: the bucket elects a leader), so
    # an operator silencing what pages in the middle of an incident is answered, not refused.
    revision = await res.persist(create, UNAVAILABLE, bucket="silences")
    audit_details(request, {"silence_id": stored.id})
    return json_response(await _answer(res, stored, revision), status=201)


async def expire_silence(res: Resources, request: Request) -> Response:
    silence_id = request.path_params["id"]

    async def expire(nc: NATS, timeout: float) -> tuple[events.Silence, int]:
        kv = await _bucket(res, nc, timeout)
        changed = False  # by another writer since it was read, once already
        while True:
            try:
                entry = await kv.get(silence_id)
            except (NotFoundError, InvalidKeyError):  # never created, deleted, or not a key at all
                raise ApiError(404, "not_found", f"no silence {silence_id!r}", "id") from None
            try:
                stored = events.decode(entry.value or b"", events.Silence)
            except PayloadError as exc:
                why = f"silence {silence_id!r} in the KV bucket is unreadable ({exc}); fix or delete it"
                raise ApiError(409, "conflict", why) from None
            revision = entry.revision or 0
            now = res.clock()
            if stored.ends_at <= now:
                return stored, revision  # expired already (also by an earlier try of this one)
            stored.ends_at = max(now, stored.starts_at)
            try:
                return stored, await kv.update(silence_id, encode_json(stored), last=revision)
            except KeyWrongLastSequenceError:
                # Changed since we read it (another replica, another request): read it again, once.
                if changed:
                    raise ApiError(
                        409, "conflict", f"silence {silence_id!r} changed while it was expired; try again"
                    ) from None
                changed = True

    stored, revision = await res.persist(expire, UNAVAILABLE, keep=(ApiError,), bucket="silences")
    audit_details(request, {"silence_id": silence_id})
    silence = await _answer(res, stored, revision)
    silence.state = "expired"
    return json_response(silence)


#: Why a silence could not be written (NATS answered nothing, or refused).
UNAVAILABLE = "the silences bucket in NATS is unavailable"


async def _bucket(res: Resources, nc: NATS, timeout: float) -> KeyValue:
    return await nc.jetstream(timeout=timeout).key_value(res.subjects.bucket("silences"))


async def _answer(res: Resources, stored: events.Silence, revision: int) -> Silence:
    """The silence as the list will show it: copied into the table by this request (as the
    mirror will copy it), or, when the database refused that, once the mirror has copied
    ``revision`` (waiting up to ``apply_wait``); if it has not by then, as the bucket holds it."""
    try:
        await store_written(res.pool, stored, revision, res.clock())
    except Exception as exc:  # the mirror copies it when the database is back
        log.warning("silence not copied into the table by the API", extra={"reason": repr(exc)})

    async def mirrored() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await res.pool.fetchrow(
            _SELECT + " WHERE id = $1 AND revision >= $2", stored.id, revision
        )
        return row

    row = await res.commits.wait_for(mirrored, float(res.config.apply_wait))
    now = res.clock()
    if row is not None:
        return _silence(row, now)
    created_at = stored.created_at if stored.created_at is not None else stored.starts_at
    return Silence(
        id=stored.id,
        matchers=stored.matchers,
        starts_at=stored.starts_at,
        ends_at=stored.ends_at,
        author=stored.author,
        comment=stored.comment,
        created_at=created_at,
        state=_state(stored.starts_at, stored.ends_at, now),
    )


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

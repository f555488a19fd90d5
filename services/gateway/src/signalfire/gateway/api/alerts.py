"""``/api/v1/alerts``: alerts, one alert with its history, and what an operator does to one
(acknowledge, withdraw that, resolve by hand, add a note)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.events import SEVERITIES, AlertAction, Severity, encode
from signalfire.gateway.api.endpoint import HOST, PAGE, RANGE, Endpoint, Param, enum, enum_path
from signalfire.gateway.api.notifications import Notification, notification_rows
from signalfire.gateway.api.resources import (
    JsonObject,
    Resources,
    audit_details,
    from_rows,
    json_response,
    principal,
)
from signalfire.gateway.bodies import NoteBody, parse_body
from signalfire.gateway.errors import ApiError, invalid
from signalfire.gateway.params import encode_cursor, parse_choice, parse_cursor, parse_limit, parse_time

ALERT_STATUSES = ("firing", "resolved")
#: The actions (``/alerts/{id}/<action>``) and the :class:`AlertAction` each publishes.
ACTIONS: dict[str, Literal["ack", "unack", "resolve", "note"]] = {
    "ack": "ack",
    "unack": "unack",
    "resolve": "resolve",
    "notes": "note",
}

_SELECT = """
SELECT id, fingerprint, rule, status, severity, host, labels::text AS labels,
       annotations::text AS annotations, value, threshold,
       extract(epoch FROM starts_at)::float8 AS starts_at,
       extract(epoch FROM ends_at)::float8 AS ends_at,
       extract(epoch FROM last_event_at)::float8 AS updated_at, seq,
       acknowledged_by, extract(epoch FROM acknowledged_at)::float8 AS acknowledged_at,
       resolved_by, extract(epoch FROM resolved_at)::float8 AS resolved_at, notes::text AS notes,
       acknowledged_at IS NOT NULL AS acknowledged
FROM alerts
"""

Notes = Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"type": "array"})]


class Alert(msgspec.Struct, kw_only=True):
    """One alert instance with its newest state and what operators did to it."""

    id: str
    fingerprint: str
    rule: str
    status: Literal["firing", "resolved"]
    severity: Severity
    host: str
    labels: JsonObject
    annotations: JsonObject
    value: float | None
    threshold: float | None
    starts_at: float
    ends_at: float | None
    updated_at: float
    seq: int
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: float | None
    resolved_by: str | None
    resolved_at: float | None
    notes: Notes


class HistoryEntry(msgspec.Struct, kw_only=True):
    """An alert event or an action, as stored."""

    time: float
    event: str
    seq: int
    payload: JsonObject


class AlertDetail(Alert, kw_only=True):
    """An alert with its history (events and actions) and its deliveries."""

    history: list[HistoryEntry]
    deliveries: list[Notification]


class ActionPending(msgspec.Struct, kw_only=True):
    """An action published but not yet stored when the answer was due (202): the gateway's
    consumer applies it shortly; the alert shows it then."""

    action: AlertAction
    message: str


class AlertPage(msgspec.Struct, kw_only=True):
    alerts: list[Alert]
    next_cursor: str | None


_JSON_COLUMNS = ("labels", "annotations", "notes")


async def alert_rows(res: Resources, where: str, *args: Any) -> list[Alert]:
    """The alerts ``where`` selects (``WHERE ... ORDER BY ... LIMIT ...`` over ``args``)."""
    rows = await res.pool.fetch(_SELECT + where, *args)
    return from_rows(Alert, rows, json=_JSON_COLUMNS)


async def alerts(res: Resources, request: Request) -> Response:
    params = request.query_params
    status = parse_choice(params, "status", ALERT_STATUSES)
    severity = parse_choice(params, "severity", SEVERITIES)
    limit = parse_limit(params, default=100, maximum=1000)
    cursor = parse_cursor(params, (float, str))
    now = res.clock()
    start = parse_time(params["from"], now, "from") if "from" in params else None
    end = parse_time(params["to"], now, "to") if "to" in params else None
    if start is not None and end is not None and start > end:
        raise invalid("from", "from must not be later than to")
    found = await alert_rows(
        res,
        """
        WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR severity = $2)
          AND ($3::text IS NULL OR host = $3) AND ($4::text IS NULL OR rule = $4)
          AND ($5::float8 IS NULL OR coalesce(ends_at, 'infinity') >= to_timestamp($5))
          AND ($6::float8 IS NULL OR starts_at <= to_timestamp($6))
          AND ($7::float8 IS NULL OR starts_at < to_timestamp($7)
               OR (starts_at = to_timestamp($7) AND id > $8))
        ORDER BY starts_at DESC, id
        LIMIT $9
        """,
        status,
        severity,
        params.get("host") or None,
        params.get("rule") or None,
        start,
        end,
        *(cursor or [None, None]),
        limit + 1,
    )
    next_cursor = None
    if len(found) > limit:
        found = found[:limit]
        next_cursor = encode_cursor([found[-1].starts_at, found[-1].id])
    return json_response(AlertPage(alerts=found, next_cursor=next_cursor))


async def alert(res: Resources, request: Request) -> Response:
    alert_id = request.path_params["id"]
    found = await alert_rows(res, "WHERE id = $1", alert_id)
    if not found:
        raise ApiError(404, "not_found", f"no alert {alert_id!r}", "id")
    history = await res.pool.fetch(
        """
        SELECT extract(epoch FROM time)::float8 AS time, event, seq, payload::text AS payload
        FROM alert_history WHERE alert_id = $1 ORDER BY time, id
        """,
        alert_id,
    )
    deliveries = await notification_rows(res, "WHERE alert_id = $1 ORDER BY time, id LIMIT 1000", alert_id)
    return json_response(
        AlertDetail(
            **msgspec.structs.asdict(found[0]),
            history=from_rows(HistoryEntry, history, json=("payload",)),
            deliveries=deliveries,
        )
    )


async def alert_action(res: Resources, request: Request) -> Response:
    """``/alerts/{id}/{action}``: publish the :class:`AlertAction` and answer the updated alert."""
    alert_id = request.path_params["id"]
    kind = ACTIONS.get(request.path_params["action"])
    if kind is None:
        raise ApiError(404, "not_found", "no such endpoint")
    data: bytes = await request.body()
    body = parse_body(data, NoteBody) if data.strip() else NoteBody()
    if kind == "note" and not body.note.strip():
        raise invalid("note", "a note must not be empty")
    row = await res.pool.fetchrow("SELECT fingerprint FROM alerts WHERE id = $1", alert_id)
    if row is None:
        raise ApiError(404, "not_found", f"no alert {alert_id!r}", "id")
    action = AlertAction(
        alert_id=alert_id,
        action=kind,
        actor=principal(request).name,
        time=res.clock(),
        note=body.note,
        fingerprint=row["fingerprint"],
        id=uuid.uuid4().hex,
    )
    # The gateway-actions consumer is the one writer of the alert and its history; this only
    # publishes (the id keeps a retried publish from being stored twice) and waits for that
    # consumer, here or in another replica, to have stored it.
    await res.publish(res.subjects.actions, encode(action), msg_id=action.id)
    audit_details(request, {"alert_id": alert_id, "action": kind})

    async def applied() -> Alert | None:
        found = await alert_rows(
            res,
            "WHERE id = $1 AND EXISTS (SELECT 1 FROM alert_history h WHERE h.action_id = $2)",
            alert_id,
            action.id,
        )
        return found[0] if found else None

    stored = await res.commits.wait_for(applied, float(res.config.apply_wait))
    if stored is None:
        message = f"published; the gateway is still applying it (GET /api/v1/alerts/{alert_id} shows it then)"
        return json_response(ActionPending(action=action, message=message), status=202)
    return json_response(stored)


_ID = Param("id", "alert id", where="path")

routes = [
    Endpoint(
        "GET",
        "/api/v1/alerts",
        alerts,
        "viewer",
        "Alerts, newest first",
        '`{"alerts": [...], "next_cursor"}`, newest first; `from`/`to` select alerts active in the window',
        params=(
            enum("status", "firing or resolved", ALERT_STATUSES),
            enum("severity", "severity", SEVERITIES),
            HOST,
            Param("rule", "rule name"),
            *RANGE,
            *PAGE,
        ),
        answer=AlertPage,
    ),
    Endpoint(
        "GET",
        "/api/v1/alerts/{id}",
        alert,
        "viewer",
        "One alert with its history and deliveries",
        "the alert with `history` (events and actions) and `deliveries`",
        params=(_ID,),
        answer=AlertDetail,
    ),
    Endpoint(
        "POST",
        "/api/v1/alerts/{id}/{action}",
        alert_action,
        "operator",
        "Acknowledge an alert, withdraw that, resolve it by hand or add a note (publishes an AlertAction)",
        'body `{"note": "..."}` (optional, required for `notes`); publishes an `AlertAction` on '
        "`sf.actions.alerts` (again, for up to `publish_wait`, while NATS does not take it) and answers "
        "the alert once the gateway has stored it (202 with the action if that takes longer than "
        "`apply_wait`)",
        params=(_ID, enum_path("action", "what to do", list(ACTIONS))),
        body=NoteBody,
        answer=Alert,
        accepted=ActionPending,
    ),
]

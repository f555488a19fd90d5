"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from signalfire.events import EventBatch, MetricBatch
from signalfire.gateway.bodies import NoteBody, SilenceBody, TokenBody

_REF = "#/components/schemas/"


def _param(
    name: str, description: str, *, where: str = "query", required: bool = False, **schema: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


_TIME = "unix seconds, RFC 3339 (with a zone), `now`, or relative like `-1h`"
_PAGE = [
    _param("limit", "the most items in this page", type="integer", minimum=1),
    _param("cursor", "`next_cursor` of the previous page"),
]
_RANGE = [_param("from", f"start; {_TIME}"), _param("to", f"end (default now); {_TIME}")]
_LABELS = {
    "name": "label.<name>",
    "in": "query",
    "required": False,
    "description": "exact label matcher, e.g. `label.mount=/var` (any number of them)",
    "schema": {"type": "string"},
}


def _obj(required: str = "", **properties: Any) -> dict[str, Any]:
    """An object schema; ``required`` lists the always-present properties (space-separated)."""
    return {"type": "object", "properties": properties, "required": required.split()}


_NUM = {"type": "number"}
_NUM_NULL = {"type": ["number", "null"]}
_STR = {"type": "string"}
_STR_NULL = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_MAP = {"type": "object"}
_ACCEPTED = {
    "type": "object",
    "properties": {"accepted": {"type": "integer", "minimum": 0}},
    "required": ["accepted"],
}
_SEVERITY = {"type": "string", "enum": ["critical", "high", "medium", "low"]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


#: The answers' schemas (components), named after what they describe.
_ANSWERS: dict[str, dict[str, Any]] = {
    "Host": _obj(
        "host status last_seen first_seen health facts labels alerts",
        host=_STR,
        status={"type": "string", "enum": ["up", "down", "offline"]},
        last_seen=_NUM,
        first_seen=_NUM,
        health={"type": "integer", "minimum": 0, "maximum": 100},
        facts=_MAP,
        labels=_MAP,
        alerts={"type": "object", "additionalProperties": {"type": "integer"}},
    ),
    "Series": _obj("id host metric labels unit", id=_INT, host=_STR, metric=_STR, labels=_MAP, unit=_STR),
    "LatestSample": _obj(
        "host metric labels time value", host=_STR, metric=_STR, labels=_MAP, time=_NUM, value=_NUM
    ),
    "QueryAnswer": _obj(
        "step source agg from to series",
        step=_NUM,
        source={"type": "string", "enum": ["raw", "1m", "1h"]},
        agg=_STR_NULL,
        **{"from": _NUM, "to": _NUM},
        series={
            "type": "array",
            "items": _obj(
                "host metric labels points",
                host=_STR,
                metric=_STR,
                labels=_MAP,
                points={
                    "type": "array",
                    "description": "[unix seconds, value or null]",
                    "items": {"type": "array", "items": _NUM_NULL, "minItems": 2, "maxItems": 2},
                },
            ),
        },
    ),
    "Event": _obj(
        "time host type message labels value",
        time=_NUM,
        host=_STR,
        type=_STR,
        message=_STR,
        labels=_MAP,
        value=_NUM_NULL,
    ),
    "Alert": _obj(
        "id fingerprint rule status severity host labels annotations starts_at ends_at updated_at seq "
        "acknowledged acknowledged_by acknowledged_at resolved_by resolved_at notes",
        id=_STR,
        fingerprint=_STR,
        rule=_STR,
        status={"type": "string", "enum": ["firing", "resolved"]},
        severity=_SEVERITY,
        host=_STR,
        labels=_MAP,
        annotations=_MAP,
        value=_NUM_NULL,
        threshold=_NUM_NULL,
        starts_at=_NUM,
        ends_at=_NUM_NULL,
        updated_at=_NUM,
        seq=_INT,
        acknowledged={"type": "boolean"},
        acknowledged_by=_STR_NULL,
        acknowledged_at=_NUM_NULL,
        resolved_by=_STR_NULL,
        resolved_at=_NUM_NULL,
        notes={"type": "array"},
    ),
    "Notification": _obj(
        "id time alert_id channel status attempt transition rule host error reason",
        id=_INT,
        time=_NUM,
        alert_id=_STR,
        channel=_STR,
        status=_STR,
        attempt=_INT,
        transition=_STR,
        rule=_STR,
        host=_STR,
        error=_STR_NULL,
        reason=_STR_NULL,
    ),
    "Silence": _obj(
        "id matchers starts_at ends_at author comment created_at state",
        id=_STR,
        matchers={"type": "array", "items": _MAP},
        starts_at=_NUM,
        ends_at=_NUM,
        author=_STR,
        comment=_STR,
        created_at=_NUM,
        state={"type": "string", "enum": ["active", "pending", "expired"]},
    ),
    "Token": _obj(
        "id name role created_by created_at revoked_at",
        id=_INT,
        name=_STR,
        role={"type": "string", "enum": ["viewer", "operator", "admin"]},
        created_by=_STR,
        created_at=_NUM,
        revoked_at=_NUM_NULL,
    ),
    "NewToken": _obj(
        "id name role token created_at",
        id=_INT,
        name=_STR,
        role={"type": "string", "enum": ["viewer", "operator", "admin"]},
        token={"type": "string", "description": "the token itself; shown this once"},
        created_at=_NUM,
    ),
    "AuditEntry": _obj(
        "id time actor action target source status details",
        id=_INT,
        time=_NUM,
        actor=_STR,
        action=_STR,
        target=_STR,
        source=_STR,
        status={"type": ["integer", "null"]},
        details=_MAP,
    ),
}
_ANSWERS["HostDetail"] = {
    "allOf": [
        _ref("Host"),
        _obj(
            "latest active_alerts",
            latest={"type": "array", "items": _ref("LatestSample")},
            active_alerts={"type": "array", "items": _ref("Alert")},
        ),
    ]
}
_ANSWERS["AlertDetail"] = {
    "allOf": [
        _ref("Alert"),
        _obj(
            "history deliveries",
            history={
                "type": "array",
                "items": _obj("time event seq payload", time=_NUM, event=_STR, seq=_INT, payload=_MAP),
            },
            deliveries={"type": "array", "items": _ref("Notification")},
        ),
    ]
}


def _op(
    summary: str,
    role: str,
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    ok: int = 200,
    answer: dict[str, Any] | None = None,
    media: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``media`` maps content types to schemas where the answer is not JSON described by ``answer``."""
    content = {kind: {"schema": schema} for kind, schema in (media or {}).items()} or {
        "application/json": {"schema": answer or {"type": "object"}}
    }
    responses: dict[str, Any] = {
        str(ok): {"description": "success", "content": content},
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "403": {"$ref": "#/components/responses/Error"},
        "413": {"$ref": "#/components/responses/Error"},
        "429": {"$ref": "#/components/responses/Error"},
        "503": {"$ref": "#/components/responses/Error"},
    }
    operation: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs the `{role}` role.",
        "parameters": params or [],
        "responses": responses,
    }
    if any(p["in"] == "path" for p in params or []):
        responses["404"] = {"$ref": "#/components/responses/Error"}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF + body}}},
        }
    return operation


def _list(key: str, item: str | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            key: {"type": "array", "items": _ref(item) if item else {"type": "object"}},
            "next_cursor": {"type": ["string", "null"]},
        },
        "required": [key, "next_cursor"],
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document; built once."""
    _, components = msgspec.json.schema_components(
        [MetricBatch, EventBatch, NoteBody, SilenceBody, TokenBody], ref_template=_REF + "{name}"
    )
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": ["string", "null"]},
                },
                "required": ["code", "message", "field"],
            }
        },
        "required": ["error"],
    }
    host_path = _param("host", "host name", where="path")
    id_path = _param("id", "alert id", where="path")
    alert_filters = [
        _param("status", "firing or resolved", enum=["firing", "resolved"]),
        _param("severity", "severity", enum=["critical", "high", "medium", "low"]),
        _param("host", "host name"),
        _param("rule", "rule name"),
        *_RANGE,
        *_PAGE,
    ]
    paths: dict[str, Any] = {
        "/api/v1/whoami": {
            "get": _op(
                "The calling token's name and role",
                "viewer",
                answer={
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
                    },
                    "required": ["name", "role"],
                },
            )
        },
        "/api/v1/hosts": {
            "get": _op(
                "Hosts with status, last seen, health score, facts, alert counts",
                "viewer",
                params=_PAGE,
                answer=_list("hosts", "Host"),
            )
        },
        "/api/v1/hosts/{host}": {
            "get": _op(
                "One host with its latest values and active alerts",
                "viewer",
                params=[host_path],
                answer=_ref("HostDetail"),
            )
        },
        "/api/v1/series": {
            "get": _op(
                "Search series",
                "viewer",
                params=[
                    _param("host", "host name"),
                    _param("metric", "metric name"),
                    _param("q", "part of the metric name"),
                    _LABELS,
                    *_PAGE,
                ],
                answer=_list("series", "Series"),
            )
        },
        "/api/v1/metric-names": {
            "get": _op(
                "Metric names with their series and host counts, unit and label names",
                "viewer",
                params=[_param("host", "host name"), _param("q", "part of the metric name")],
                answer=_obj(
                    "metrics",
                    metrics={
                        "type": "array",
                        "items": _obj(
                            "name series hosts unit label_names",
                            name=_STR,
                            series=_INT,
                            hosts=_INT,
                            unit=_STR,
                            label_names={"type": "array", "items": _STR},
                        ),
                    },
                ),
            )
        },
        "/api/v1/query": {
            "get": _op(
                "Range query over one or more series",
                "viewer",
                params=[
                    _param("metric", "metric name; repeat for several", required=True),
                    _param("host", "host name"),
                    _LABELS,
                    *_RANGE,
                    _param("step", "`raw`, `auto` (default) or a duration like `10s`, `5m`, `1h`"),
                    _param(
                        "agg",
                        "aggregate per step",
                        enum=["avg", "min", "max", "sum", "count", "last", "p50", "p95", "p99"],
                    ),
                ],
                answer=_ref("QueryAnswer"),
            )
        },
        "/api/v1/latest": {
            "get": _op(
                "Newest value of every series",
                "viewer",
                params=[_param("host", "host name"), _param("metric", "metric name")],
                answer=_obj("samples", samples={"type": "array", "items": _ref("LatestSample")}),
            )
        },
        "/api/v1/events": {
            "get": _op(
                "Events, newest first",
                "viewer",
                params=[_param("host", "host name"), _param("type", "event type"), *_RANGE, *_PAGE],
                answer=_list("events", "Event"),
            )
        },
        "/api/v1/events/counts": {
            "get": _op(
                "Events per type in time buckets (buckets without events are left out)",
                "viewer",
                params=[
                    _param("host", "host name"),
                    _param("type", "event type"),
                    *_RANGE,
                    _param("step", "`auto` (default) or a duration like `10s`, `5m`, `1h`"),
                ],
                answer=_obj(
                    "step from to types",
                    step=_NUM,
                    **{"from": _NUM, "to": _NUM},
                    types={
                        "type": "array",
                        "items": _obj(
                            "type total points",
                            type=_STR,
                            total=_INT,
                            points={
                                "type": "array",
                                "description": "[bucket start in unix seconds, events]",
                                "items": {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2},
                            },
                        ),
                    },
                ),
            )
        },
        "/api/v1/alerts": {
            "get": _op(
                "Alerts, newest first", "viewer", params=alert_filters, answer=_list("alerts", "Alert")
            )
        },
        "/api/v1/alerts/{id}": {
            "get": _op(
                "One alert with its history and deliveries",
                "viewer",
                params=[id_path],
                answer=_ref("AlertDetail"),
            )
        },
        "/api/v1/rules": {
            "get": _op(
                "The evaluator's rules and their active alerts (503 when no evaluator answers)", "viewer"
            )
        },
        "/api/v1/silences": {
            "get": _op(
                "Silences, newest first",
                "viewer",
                params=[
                    _param("state", "active, pending or expired", enum=["active", "pending", "expired"]),
                    *_PAGE,
                ],
                answer=_list("silences", "Silence"),
            ),
            "post": _op("Create a silence", "operator", body="SilenceBody", ok=201, answer=_ref("Silence")),
        },
        "/api/v1/silences/{id}": {
            "delete": _op(
                "Expire a silence now",
                "operator",
                params=[_param("id", "silence id", where="path")],
                answer=_ref("Silence"),
            )
        },
        "/api/v1/notifications": {
            "get": _op(
                "Delivery log, newest first",
                "viewer",
                params=[
                    _param("alert", "alert id"),
                    _param("channel", "channel name"),
                    _param("status", "delivery status", enum=["sent", "failed", "retrying", "suppressed"]),
                    *_PAGE,
                ],
                answer=_list("notifications", "Notification"),
            )
        },
        "/api/v1/export": {
            "get": _op(
                "Export samples, alerts or events (streamed)",
                "viewer",
                params=[
                    _param("kind", "what to export", enum=["samples", "alerts", "events"]),
                    _param("format", "file format", enum=["csv", "json"]),
                    _param("host", "host name"),
                    _param("metric", "metric name (samples)"),
                    _LABELS,
                    *_RANGE,
                ],
                media={
                    "text/csv": {"type": "string"},
                    "application/json": {"type": "array", "items": {"type": "object"}},
                },
            )
        },
        "/api/v1/ingest/metrics": {
            "post": _op(
                "Publish a MetricBatch to NATS", "operator", body="MetricBatch", ok=202, answer=_ACCEPTED
            )
        },
        "/api/v1/ingest/events": {
            "post": _op(
                "Publish an EventBatch to NATS", "operator", body="EventBatch", ok=202, answer=_ACCEPTED
            )
        },
        "/api/v1/tokens": {
            "get": _op("API tokens (never their values)", "admin", answer=_list("tokens", "Token")),
            "post": _op(
                "Create an API token (its value is shown once)",
                "admin",
                body="TokenBody",
                ok=201,
                answer=_ref("NewToken"),
            ),
        },
        "/api/v1/tokens/{id}": {
            "delete": _op(
                "Revoke an API token",
                "admin",
                params=[_param("id", "token id", where="path", type="integer")],
                answer=_obj("id revoked_at", id=_INT, revoked_at=_NUM),
            )
        },
        "/api/v1/audit": {
            "get": _op(
                "Audit log of state-changing calls, newest first",
                "admin",
                params=_PAGE,
                answer=_list("audit", "AuditEntry"),
            )
        },
    }
    for action, what in (
        ("ack", "Acknowledge"),
        ("unack", "Withdraw the acknowledgement of"),
        ("resolve", "Resolve by hand"),
        ("notes", "Add a note to"),
    ):
        paths[f"/api/v1/alerts/{{id}}/{action}"] = {
            "post": _op(
                f"{what} an alert (publishes an AlertAction)",
                "operator",
                params=[id_path],
                body="NoteBody",
                answer=_ref("Alert"),
            )
        }
    components.update(_ANSWERS)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Signalfire gateway API", "version": "1"},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "an error",
                    "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
                }
            },
        },
    }

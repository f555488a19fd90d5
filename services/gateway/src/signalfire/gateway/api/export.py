"""``/api/v1/export``: samples, alerts or events of a time range as a streamed CSV or JSON file."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from signalfire.gateway.api.endpoint import HOST, LABELS, RANGE, Endpoint, Param, enum
from signalfire.gateway.api.resources import Resources, decode_json, encode_json
from signalfire.gateway.params import label_matchers, parse_choice, parse_range

KINDS = ("samples", "alerts", "events")
FORMATS = ("csv", "json")
#: Rows are sent in chunks of this many.
_CHUNK = 1000

# kind -> (query over $1 from, $2 to, $3 host[, $4 metric, $5 label matchers], the columns written)
_EXPORTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "samples": (
        """
        SELECT extract(epoch FROM x.time)::float8 AS time, s.host, s.name AS metric, s.labels::text AS labels,
               x.value
        FROM samples x JOIN series s ON s.id = x.series_id
        WHERE x.time >= to_timestamp($1) AND x.time <= to_timestamp($2)
          AND ($3::text IS NULL OR s.host = $3) AND ($4::text IS NULL OR s.name = $4)
          AND s.labels @> $5::jsonb
        ORDER BY s.host, s.name, s.id, x.time
        """,
        ("time", "host", "metric", "labels", "value"),
    ),
    "alerts": (
        """
        SELECT id, rule, status, severity, host, labels::text AS labels, annotations::text AS annotations,
               value, threshold, extract(epoch FROM starts_at)::float8 AS starts_at,
               extract(epoch FROM ends_at)::float8 AS ends_at, acknowledged_by
        FROM alerts
        WHERE starts_at <= to_timestamp($2) AND coalesce(ends_at, 'infinity') >= to_timestamp($1)
          AND ($3::text IS NULL OR host = $3)
        ORDER BY starts_at, id
        """,
        (
            "id",
            "rule",
            "status",
            "severity",
            "host",
            "labels",
            "annotations",
            "value",
            "threshold",
            "starts_at",
            "ends_at",
            "acknowledged_by",
        ),
    ),
    "events": (
        """
        SELECT extract(epoch FROM time)::float8 AS time, host, type, message, labels::text AS labels, value
        FROM events
        WHERE time >= to_timestamp($1) AND time <= to_timestamp($2) AND ($3::text IS NULL OR host = $3)
        ORDER BY time
        """,
        ("time", "host", "type", "message", "labels", "value"),
    ),
}

#: Text starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_cell(value: Any) -> Any:
    """``value`` as a CSV export cell that a spreadsheet shows and never runs: text starting
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (OWASP's
    advice against CSV injection), unless it is a plain number such as ``-1.5``; ``None`` is
    an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


async def export(res: Resources, request: Request) -> Response:
    params = request.query_params
    kind = parse_choice(params, "kind", KINDS) or "samples"
    fmt = parse_choice(params, "format", FORMATS) or "csv"
    start, end = parse_range(params, res.clock(), default_span=86400.0)
    sql, columns = _EXPORTS[kind]
    args: list[Any] = [start, end, params.get("host") or None]
    if kind == "samples":
        # The same label matchers as /query, so an export holds what the chart showed.
        args += [params.get("metric") or None, encode_json(label_matchers(params)).decode()]
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    filename = f"signalfire-{kind}.{fmt}"
    return StreamingResponse(
        _rows(res, sql, args, columns, fmt),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def _rows(
    res: Resources, sql: str, args: list[Any], columns: tuple[str, ...], fmt: str
) -> AsyncIterator[bytes]:
    chunk: list[bytes] = []
    first = True
    if fmt == "csv":
        yield (",".join(columns) + "\r\n").encode()
    else:
        yield b"["
    # a connection held as long as the client reads: one of the heavy reads' slots
    async with res.reading() as conn, conn.transaction():
        async for row in conn.cursor(sql, *args, prefetch=2000):
            if fmt == "csv":
                out = io.StringIO()
                csv.writer(out).writerow([spreadsheet_cell(row[c]) for c in columns])
                chunk.append(out.getvalue().encode())
            else:
                item = {
                    c: (decode_json(row[c]) if c in ("labels", "annotations") else row[c]) for c in columns
                }
                chunk.append((b"" if first else b",") + encode_json(item))
                first = False
            if len(chunk) >= _CHUNK:
                yield b"".join(chunk)
                chunk = []
    if chunk:
        yield b"".join(chunk)
    if fmt == "json":
        yield b"]"


routes = [
    Endpoint(
        "GET",
        "/api/v1/export",
        export,
        "viewer",
        "Export samples, alerts or events (streamed)",
        "a streamed file (default last 24 h; `label.<name>` matchers apply to samples, as in `/query`): "
        "`text/csv` with a header row, or `application/json`, an array of objects",
        params=(
            enum("kind", "what to export", KINDS),
            enum("format", "file format", FORMATS),
            HOST,
            Param("metric", "metric name (samples)"),
            LABELS,
            *RANGE,
        ),
        media={
            "text/csv": {"type": "string"},
            "application/json": {"type": "array", "items": {"type": "object"}},
        },
    ),
]

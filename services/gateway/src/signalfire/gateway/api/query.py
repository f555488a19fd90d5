"""``/api/v1/query``: range queries over series, from the raw samples or the 1-minute, 5-minute
and 1-hour rollups, whichever is coarse enough for the step and still kept for the range."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.gateway import rollup
from signalfire.gateway.api.endpoint import HOST, LABELS, RANGE, Endpoint, Param, enum
from signalfire.gateway.api.resources import JsonObject, Resources, encode_json, json_response, raw_json
from signalfire.gateway.config import RetentionConfig
from signalfire.gateway.errors import ApiError, invalid
from signalfire.gateway.params import label_matchers, parse_choice, parse_range, parse_step

AGGREGATES = ("avg", "min", "max", "sum", "count", "last", "p50", "p95", "p99")
_PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
_RAW_AGG = {
    "avg": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "sum": "sum(value)",
    "count": "count(*)::float8",
    "last": "(array_agg(value ORDER BY time DESC))[1]",
    **{name: f"percentile_disc({q}) WITHIN GROUP (ORDER BY value)" for name, q in _PERCENTILES.items()},
}
_ROLLUP_AGG = {
    "avg": "sum(sum) / sum(count)",
    "min": "min(min)",
    "max": "max(max)",
    "sum": "sum(sum)",
    "count": "sum(count)::float8",
    "last": "(array_agg(last ORDER BY last_time DESC))[1]",
}
_COLUMNS = "series_id, bucket, count, sum, min, max, last, last_time, hist"
_HORIZON = "(SELECT horizon FROM rollup_fold)"
_HORIZON_5M = "(SELECT horizon_5m FROM rollup_fold)"
Source = Literal["raw", "1m", "5m", "1h"]


def _folded_and_open_hours(until: str = "") -> str:
    """The folded hours' 1-hour rows and the open hours' (from the fold horizon on, rollup.fold)
    1-minute rows, which have the same columns; ``until``: a condition ending the latter."""
    return f"""
    SELECT {_COLUMNS} FROM samples_1h WHERE bucket < {_HORIZON}
    UNION ALL
    SELECT {_COLUMNS} FROM samples_1m WHERE bucket >= {_HORIZON} {until}"""


#: The 1-hour rollups of every hour, as a derived table (what the benchmarks and tests check
#: the rollups against).
HOURS = f"({_folded_and_open_hours()}\n)"
#: Raw samples since ``{since}`` as rollup rows of one sample each.
_FRESH = """
    SELECT series_id, time AS bucket, 1::bigint AS count, value AS sum, value AS min, value AS max,
           value AS last, time AS last_time, jsonb_build_object('v', jsonb_build_array(value)) AS hist
    FROM samples WHERE time >= {since}"""
#: How far back a rollup query reads the raw samples rather than the 1-minute rows, which are
#: merged once their minute has ended (``rollup_merge: minute``, a few seconds to a few tens
#: after it): the answer holds every sample stored, up to the newest.
FRESH_SECONDS = 120.0


def rollup_rows(source: Literal["1m", "5m", "1h"]) -> str:
    """The rows a ``1m``, ``5m`` or ``1h`` query aggregates (a derived table; ``$5`` is the
    start of the minute from which the raw samples are read, see :data:`FRESH_SECONDS`): the
    folded intervals' rows of the tier (rollup.fold), the open ones' 1-minute rows, the last
    minutes' raw samples."""
    if source == "1m":
        fresh = "to_timestamp($5)"
        rolled = f"SELECT {_COLUMNS} FROM samples_1m WHERE bucket < {fresh}"
    elif source == "5m":
        fresh = f"greatest(to_timestamp($5), {_HORIZON_5M})"
        rolled = f"""
    SELECT {_COLUMNS} FROM samples_5m WHERE bucket < {_HORIZON_5M}
    UNION ALL
    SELECT {_COLUMNS} FROM samples_1m WHERE bucket >= {_HORIZON_5M} AND bucket < {fresh}"""
    else:
        fresh = f"greatest(to_timestamp($5), {_HORIZON})"
        rolled = _folded_and_open_hours(f"AND bucket < {fresh}")
    return f"({rolled}\n    UNION ALL {_FRESH.format(since=fresh)}\n)"


_SINCE_5M = "SELECT extract(epoch FROM since_5m)::float8 FROM rollup_fold"

#: Steps ``step=auto`` picks from: about 500 points per series over the range.
_NICE_STEPS = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_AUTO_POINTS = 500

#: A series' points, ``[[unix seconds, value or null], ...]``, passed through as JSON text
#: (PostgreSQL's, or the JSON encoder's), described as what they are.
JsonPoints = Annotated[
    msgspec.Raw,
    msgspec.Meta(
        extra_json_schema={
            "type": "array",
            "items": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "prefixItems": [{"type": "number"}, {"anyOf": [{"type": "number"}, {"type": "null"}]}],
                "items": False,
            },
        }
    ),
]
Points = dict[int, msgspec.Raw]


class QuerySeries(msgspec.Struct, kw_only=True):
    """One series of an answer; ``points`` are ``[unix seconds, value or null]``."""

    host: str
    metric: str
    labels: JsonObject
    points: JsonPoints


class QueryAnswer(msgspec.Struct, kw_only=True):
    """The points of every series asked for; ``agg`` is null for raw samples."""

    step: float
    source: Source
    agg: str | None
    from_: float = msgspec.field(name="from")
    to: float
    series: list[QuerySeries]


_NONE = msgspec.Raw(b"[]")
#: PostgreSQL's array text as JSON: ``{{t,v},...}`` → ``[[t,v],...]``.
_ARRAY_TO_JSON = bytes.maketrans(b"{}", b"[]")


def points_json(array_text: str) -> msgspec.Raw:
    """A ``float8[][]`` of ``[t, v]`` pairs, as PostgreSQL writes it, as JSON points: the braces
    made brackets, and ``NULL`` and the non-finite values a ``float8`` can hold (the contract
    keeps samples finite; rows written by hand need not be) null, as the JSON encoder writes
    them."""
    text = array_text.encode().translate(_ARRAY_TO_JSON)
    if b"N" in text or b"I" in text:  # NULL, NaN, Infinity, -Infinity: no number has either
        for word in (b"NULL", b"NaN", b"-Infinity", b"Infinity"):
            text = text.replace(word, b"null")
    return msgspec.Raw(text)


def auto_step(span: float) -> float:
    """The step ``step=auto`` uses for a range of ``span`` seconds."""
    wanted = span / _AUTO_POINTS
    for step in _NICE_STEPS:
        if step >= wanted:
            return float(step)
    return float(math.ceil(wanted / 86400) * 86400)


#: The fewest series worth a statement of their own (one host's ~20 series stay one statement:
#: a second statement's round trip and plan cost more than the half of the work it takes).
_SERIES_PER_PART = 32


def split_ids(ids: list[int], parallelism: int) -> list[list[int]]:
    """``ids`` dealt round-robin into at most ``parallelism`` parts of at least
    ``_SERIES_PER_PART`` series each (one part when there are fewer)."""
    count = max(1, min(parallelism, len(ids) // _SERIES_PER_PART))
    return [ids[i::count] for i in range(count)]


def too_many(limit: int, what: str, field: str) -> ApiError:
    """The 400 for an answer that would hold more than ``limit`` points."""
    return ApiError(400, "too_many_points", f"the answer would hold more than {limit} {what}", field)


#: The rollups' bucket widths.
_WIDTHS: dict[Source, int] = {"raw": 1, "1m": 60, "5m": 300, "1h": 3600}


def data_source(
    retention: RetentionConfig,
    width: float,
    start: float,
    now: float,
    since_5m: float = -math.inf,
    *,
    percentile: bool = False,
) -> Source:
    """What buckets ``width`` seconds wide from ``start`` are read from: of the data still kept
    for ``start``, the coarsest whose buckets divide the width (the raw samples divide any),
    else the finest (the 1-hour rollups when nothing is kept). ``since_5m``: where the
    5-minute rows begin (migration 0011); a ``percentile`` is never read from them (they hold
    no histogram)."""
    keeps: dict[Source, float] = {
        "raw": retention.raw,
        "1m": retention.rollup_1m,
        "5m": retention.rollup_5m,
        "1h": retention.rollup_1h,
    }
    kept = [
        source
        for source, keep in keeps.items()
        if (not keep or start >= now - keep) and (source != "5m" or (start >= since_5m and not percentile))
    ]
    dividing = [s for s in kept if width >= _WIDTHS[s] and not width % _WIDTHS[s]]
    if dividing:
        return dividing[-1]
    return kept[0] if kept else "1h"


async def query(res: Resources, request: Request) -> Response:
    params = request.query_params
    metrics = [m for m in params.getlist("metric") if m]
    if not metrics:
        raise invalid("metric", "metric is required (repeat it for several metrics)")
    host = params.get("host") or None
    matchers = label_matchers(params)
    step = parse_step(params)
    agg = parse_choice(params, "agg", AGGREGATES) or "avg"
    now = res.clock()
    start, end = parse_range(params, now)
    series = await res.pool.fetch(
        """
        SELECT id, host, name, labels::text AS labels FROM series
        WHERE name = ANY($1::text[]) AND ($2::text IS NULL OR host = $2) AND labels @> $3::jsonb
        ORDER BY name, host, labels::text
        """,
        metrics,
        host,
        encode_json(matchers).decode(),
    )
    ids = [row["id"] for row in series]
    points: Points
    source: Source
    limit = res.config.query_max_points
    if step == "raw":
        source, width = "raw", 0.0
        points = await _raw_points(res, ids, start, end)
    else:
        width = auto_step(end - start) if step == "auto" else float(step)
        percentile = agg in _PERCENTILES
        if res.since_5m is None and not width % 300 and not percentile:
            res.since_5m = float(await res.pool.fetchval(_SINCE_5M))
        since_5m = -math.inf if res.since_5m is None else res.since_5m
        source = data_source(res.config.retention, width, start, now, since_5m, percentile=percentile)
        if max(len(ids), 1) * (end - start) / width > limit:
            raise too_many(limit, "points; use a larger step or a shorter range", "step")
        points = await _bucketed(res, ids, start, end, width=width, source=source, agg=agg)
    return json_response(
        QueryAnswer(
            step=width,
            source=source,
            agg=None if step == "raw" else agg,
            from_=start,
            to=end,
            series=[
                QuerySeries(
                    host=row["host"],
                    metric=row["name"],
                    labels=raw_json(row["labels"]),
                    points=points.get(row["id"], _NONE),
                )
                for row in series
            ],
        )
    )


async def _raw_points(res: Resources, ids: list[int], start: float, end: float) -> Points:
    points: Points = {}
    if not ids:
        return points
    limit = res.config.query_max_points
    rows = await res.pool.fetch(
        """
        SELECT series_id, extract(epoch FROM time)::float8 AS t, value FROM samples
        WHERE series_id = ANY($1::bigint[]) AND time >= to_timestamp($2) AND time <= to_timestamp($3)
        ORDER BY series_id, time
        LIMIT $4
        """,
        ids,
        start,
        end,
        limit + 1,
    )
    if len(rows) > limit:
        raise too_many(limit, "points; narrow the time range or the series", "from")
    lists: dict[int, list[tuple[float, float | None]]] = {}
    for row in rows:
        lists.setdefault(row["series_id"], []).append((row["t"], row["value"]))
    return _as_json(lists)


def _as_json(lists: dict[int, list[tuple[float, float | None]]]) -> Points:
    return {series_id: msgspec.Raw(encode_json(pairs)) for series_id, pairs in lists.items()}


_BIN = "date_bin(make_interval(secs => $4), {column}, 'epoch')"


def _series_buckets(source: Source, expression: str) -> str:
    """The buckets ``(b, v)`` of series ``s.id`` in ``[$2, $3]`` (``$4`` seconds wide) from
    ``source``. From a rollup, the buckets wholly before the rows still open (the last minutes'
    raw samples, the hours not folded) are read from the one table that holds them, without the
    union of the open rows, which cost 30 of the fleet query's 180 ms row by row (its rows
    passing three more plan nodes each)."""
    if source == "raw":
        return f"""
            SELECT {_BIN.format(column="time")} AS b, {expression} AS v FROM samples
            WHERE series_id = s.id AND time >= to_timestamp($2) AND time <= to_timestamp($3)
            GROUP BY 1"""
    settled = rollup.TABLES[_WIDTHS[source]]
    until = {"1m": "to_timestamp($5)", "5m": _HORIZON_5M, "1h": _HORIZON}[source]
    # (clamped to the range: the horizon may be -infinity, $5 infinity)
    cut = _BIN.format(column=f"greatest(to_timestamp($2), least({until}, to_timestamp($3)))")
    return f"""
            SELECT {_BIN.format(column="bucket")} AS b, {expression} AS v FROM {settled}
            WHERE series_id = s.id AND bucket >= to_timestamp($2) AND bucket < {cut}
            GROUP BY 1
            UNION ALL
            SELECT {_BIN.format(column="bucket")} AS b, {expression} AS v
            FROM {rollup_rows(source)} AS r
            WHERE series_id = s.id AND bucket >= {cut} AND bucket <= to_timestamp($3)
            GROUP BY 1"""


async def _bucketed(
    res: Resources, ids: list[int], start: float, end: float, *, width: float, source: Source, agg: str
) -> Points:
    points: Points = {}
    if not ids:
        return points
    args: list[object] = [ids, start, end, width]
    if source == "raw":
        expression = _RAW_AGG[agg]
    else:
        expression = _ROLLUP_AGG.get(agg, "array_agg(hist::text)")
        raw_kept = float(res.config.retention.raw)
        # the raw samples of the last minutes, while they are kept that long
        fresh = math.inf if 0 < raw_kept < 2 * FRESH_SECONDS else (res.clock() - FRESH_SECONDS) // 60 * 60
        args[1] = start - start % width
        args.append(fresh)
    percentile = _PERCENTILES.get(agg)
    if source == "raw" or percentile is None:
        # Each series on its own (an index range, a small in-memory aggregate, its buckets in
        # order as two arrays): one hash aggregate and sort over every series' rows spilled to
        # disk (the fleet CPU over 24 h, 288,000 rows of 200 series: 278 ms against 178).
        # ... and as the text of one array of [t, v] pairs, which is the answer's JSON but for
        # its brackets: PostgreSQL writes the numbers (shortest exact form), and the gateway
        # does not decode, pair and encode again 57,800 of them (the fleet query: 19 of its
        # 250 ms, against 3).
        sql = f"""
            SELECT s.id, g.p::text FROM unnest($1::bigint[]) AS s(id)
            CROSS JOIN LATERAL (
                SELECT array_agg(ARRAY[date_part('epoch', b), v] ORDER BY b) AS p
                FROM ({_series_buckets(source, expression)}) AS buckets
            ) AS g
            WHERE g.p IS NOT NULL
            """
        # The series shared among up to `query_parallelism` statements on as many connections:
        # PostgreSQL runs one statement on one core, and a lateral over a list of ids is not
        # parallel-aware (the fleet CPU over 24 h, 200 series, in SQL alone: 192 ms in one
        # statement, 133 in two; docs/benchmarks.md, "Queries").
        parts = split_ids(ids, min(res.config.query_parallelism, res.config.query_connections))
        answers = await asyncio.gather(*(_fetch(res, sql, part, *args[1:]) for part in parts))
        for rows in answers:
            for series_id, text in rows:
                points[series_id] = points_json(text)
        return points
    rows = await _fetch(
        res,
        f"""
        SELECT series_id, extract(epoch FROM b)::float8 AS t, v FROM (
            SELECT series_id, {_BIN.format(column="bucket")} AS b, {expression} AS v
            FROM {rollup_rows(source)} AS r
            WHERE series_id = ANY($1::bigint[])
              AND bucket >= to_timestamp($2) AND bucket <= to_timestamp($3)
            GROUP BY 1, 2
        ) AS buckets
        ORDER BY series_id, b
        """,
        *args,
    )
    lists: dict[int, list[tuple[float, float | None]]] = {}
    for row in rows:
        # a rollup percentile: the buckets' histograms merged (not stored again: the values
        # may stay known however many they are)
        hist: rollup.Hist = {}
        for text in row["v"]:
            rollup.merge(hist, msgspec.json.decode(text), limit=None)
        lists.setdefault(row["series_id"], []).append((row["t"], rollup.quantile(hist, percentile)))
    return _as_json(lists)


async def _fetch(res: Resources, sql: str, *args: Any) -> list[asyncpg.Record]:
    """A range-query statement on a connection of :meth:`Resources.reading`."""
    async with res.reading() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows


routes = [
    Endpoint(
        "GET",
        "/api/v1/query",
        query,
        "viewer",
        "Range query over one or more series",
        '`{"step", "source": "raw\\|1m\\|5m\\|1h", "agg", "from", "to", "series": [{"host", "metric", '
        '"labels", "points": [[t, v], ...]}]}`',
        params=(
            Param("metric", "metric name; repeat for several", required=True),
            HOST,
            LABELS,
            *RANGE,
            Param("step", "`raw`, `auto` (default) or a duration like `10s`, `5m`, `1h`"),
            enum("agg", "aggregate per step", AGGREGATES),
        ),
        answer=QueryAnswer,
    ),
]

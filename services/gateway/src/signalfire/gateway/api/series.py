"""``/api/v1/series``, ``/api/v1/metric-names`` and ``/api/v1/latest``: what is measured, and
the newest value of each series (from memory)."""

from __future__ import annotations

import fnmatch

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.gateway.api.endpoint import HOST, LABELS, PAGE, Endpoint, Param
from signalfire.gateway.api.resources import JsonObject, Resources, encode_json, from_rows, json_response
from signalfire.gateway.params import encode_cursor, label_matchers, parse_cursor, parse_limit
from signalfire.gateway.store import LatestValues

_QUERY = Param("q", "part of the metric name")


class Series(msgspec.Struct, kw_only=True):
    """One series: a host's metric with one set of labels."""

    id: int
    host: str
    metric: str
    labels: JsonObject
    unit: str


class SeriesPage(msgspec.Struct, kw_only=True):
    series: list[Series]
    next_cursor: str | None


class MetricName(msgspec.Struct, kw_only=True):
    """A metric name with how many series and hosts carry it, its unit and its label names."""

    name: str
    series: int
    hosts: int
    unit: str
    label_names: list[str]


class MetricNames(msgspec.Struct, kw_only=True):
    metrics: list[MetricName]


class LatestSample(msgspec.Struct):
    """One series' newest value as ``/latest`` answers it; ``labels`` is the series key's
    canonical JSON, passed through as is."""

    host: str
    metric: str
    labels: JsonObject
    time: float
    value: float


class Latest(msgspec.Struct, kw_only=True):
    samples: list[LatestSample]


async def series(res: Resources, request: Request) -> Response:
    params = request.query_params
    limit = parse_limit(params, default=1000, maximum=10000)
    cursor = parse_cursor(params, (int,))
    rows = await res.pool.fetch(
        """
        SELECT id, host, name AS metric, labels::text AS labels, unit FROM series
        WHERE ($1::text IS NULL OR host = $1) AND ($2::text IS NULL OR name = $2)
          AND labels @> $3::jsonb AND ($4::text IS NULL OR strpos(name, $4) > 0)
          AND ($5::bigint IS NULL OR id > $5)
        ORDER BY id LIMIT $6
        """,
        params.get("host") or None,
        params.get("metric") or None,
        encode_json(label_matchers(params)).decode(),
        params.get("q") or None,
        cursor[0] if cursor else None,
        limit + 1,
    )
    found = from_rows(Series, rows[:limit], json=("labels",))
    next_cursor = encode_cursor([found[-1].id]) if len(rows) > limit else None
    return json_response(SeriesPage(series=found, next_cursor=next_cursor))


async def metric_names(res: Resources, request: Request) -> Response:
    """Every metric name with how many series and hosts carry it, its unit and the names of
    its labels: what a metric picker offers (custom ``app.*`` metrics included)."""
    params = request.query_params
    rows = await res.pool.fetch(
        """
        SELECT s.name, count(DISTINCT s.id) AS series, count(DISTINCT s.host) AS hosts,
               max(s.unit) AS unit, array_remove(array_agg(DISTINCT k), NULL) AS label_names
        FROM series s LEFT JOIN LATERAL jsonb_object_keys(s.labels) AS k ON true
        WHERE ($1::text IS NULL OR s.host = $1) AND ($2::text IS NULL OR strpos(s.name, $2) > 0)
        GROUP BY s.name ORDER BY s.name
        """,
        params.get("host") or None,
        params.get("q") or None,
    )
    names = [
        MetricName(
            name=row["name"],
            series=row["series"],
            hosts=row["hosts"],
            unit=row["unit"],
            label_names=sorted(row["label_names"]),
        )
        for row in rows
    ]
    return json_response(MetricNames(metrics=names))


async def latest(res: Resources, request: Request) -> Response:
    params = request.query_params
    host, metric = params.get("host") or None, params.get("metric") or None
    if host is None and metric is None:
        # Every series: a dashboard's most common ask, so the encoded answer is kept until
        # the next update of the values.
        version = res.latest.version
        if res.latest_encoded is None or res.latest_encoded[0] != version:
            res.latest_encoded = (
                version,
                encode_json(Latest(samples=latest_samples(res.latest, None, None))),
            )
        return Response(res.latest_encoded[1], media_type="application/json")
    return json_response(Latest(samples=latest_samples(res.latest, host, metric)))


def latest_samples(values: LatestValues, host: str | None, metric: str | None) -> list[LatestSample]:
    """Newest values, by host, metric and labels; ``metric`` is a name, a glob (``check.*``)
    or a comma-separated list. Built for speed: every series at once is a common ask."""
    patterns = [p for p in (metric or "").split(",") if p]

    def wanted(name: str) -> bool:
        return not patterns or any(p == name or fnmatch.fnmatchcase(name, p) for p in patterns)

    items = values.items()
    if host is not None or patterns:
        items = [(key, tv) for key, tv in items if (host is None or key[0] == host) and wanted(key[1])]
    return [
        LatestSample(h, name, msgspec.Raw(labels), when, value)
        for (h, name, labels), (when, value) in sorted(items)
    ]


routes = [
    Endpoint(
        "GET",
        "/api/v1/series",
        series,
        "viewer",
        "Search series",
        '`{"series": [{"id", "host", "metric", "labels", "unit"}], "next_cursor"}`; '
        "`q` matches part of the metric name",
        params=(HOST, Param("metric", "metric name"), _QUERY, LABELS, *PAGE),
        answer=SeriesPage,
    ),
    Endpoint(
        "GET",
        "/api/v1/metric-names",
        metric_names,
        "viewer",
        "Metric names with their series and host counts, unit and label names",
        '`{"metrics": [{"name", "series", "hosts", "unit", "label_names"}]}`, every metric name (custom '
        "`app.*` ones too) ordered by name; `host` limits to one host, `q` matches part of the name",
        params=(HOST, _QUERY),
        answer=MetricNames,
    ),
    Endpoint(
        "GET",
        "/api/v1/latest",
        latest,
        "viewer",
        "Newest value of every series",
        '`{"samples": [{"host", "metric", "labels", "time", "value"}]}` from memory, ordered by host, '
        "metric and labels; `metric` is a name, a glob (`check.*`) or a comma-separated list; the answer "
        "for every series is encoded once per change of the values",
        params=(HOST, Param("metric", "metric name")),
        answer=Latest,
    ),
]

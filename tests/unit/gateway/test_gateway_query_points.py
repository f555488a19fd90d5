"""The answer of ``/api/v1/query`` as it is sent: the points PostgreSQL writes as array text
made JSON, sent by the structs the API document describes."""

from __future__ import annotations

import msgspec

from signalfire.gateway.api.query import QueryAnswer, QuerySeries, points_json


def test_array_text_becomes_the_points_the_json_encoder_would_write() -> None:
    # PostgreSQL's shortest exact forms: whole numbers without a point, exponents with a sign.
    text = "{{1733200000,12.5},{1733200300,1e+20},{1733200600,-0},{1733200900,5e-324},{1733201200,-1.5e-07}}"
    points = msgspec.json.decode(points_json(text))
    assert points == [
        [1733200000, 12.5],
        [1733200300, 1e20],
        [1733200600, -0.0],
        [1733200900, 5e-324],
        [1733201200, -1.5e-07],
    ]


def test_null_and_non_finite_values_become_null_as_the_encoder_writes_them() -> None:
    text = "{{1,NULL},{2,NaN},{3,Infinity},{4,-Infinity},{5,7}}"
    points = msgspec.json.decode(points_json(text))
    assert points == [[1, None], [2, None], [3, None], [4, None], [5, 7]]
    assert msgspec.json.encode([[5.0, float("nan")], [6.0, float("inf")]]) == b"[[5.0,null],[6.0,null]]"


def test_the_answer_is_sent_as_the_document_describes_it() -> None:
    # The points pass through as JSON text; the document still says what they are.
    points = msgspec.json.schema(QuerySeries)["$defs"]["QuerySeries"]["properties"]["points"]
    assert points["type"] == "array" and points["items"]["prefixItems"] == [
        {"type": "number"},
        {"anyOf": [{"type": "number"}, {"type": "null"}]},
    ]
    answer = QueryAnswer(
        step=60.0,
        source="1m",
        agg="avg",
        from_=0.0,
        to=60.0,
        series=[
            QuerySeries(
                host="h",
                metric="m",
                labels=msgspec.Raw(b'{"env": "dev"}'),
                points=points_json("{{0,1.5},{60,NULL}}"),
            )
        ],
    )
    assert msgspec.json.decode(msgspec.json.encode(answer)) == {
        "step": 60.0,
        "source": "1m",
        "agg": "avg",
        "from": 0.0,
        "to": 60.0,
        "series": [{"host": "h", "metric": "m", "labels": {"env": "dev"}, "points": [[0, 1.5], [60, None]]}],
    }

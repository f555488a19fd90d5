"""Query parameters of the API: times, ranges, limits, choices and label matchers."""

from __future__ import annotations

import pytest

from signalfire.gateway.errors import ApiError
from signalfire.gateway.params import (
    label_matchers,
    parse_choice,
    parse_limit,
    parse_range,
    parse_time,
    require,
)

NOW = 1_763_794_800.0  # 2025-11-22T07:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1763794800", NOW),
        ("1763794800.5", NOW + 0.5),
        ("2025-11-22T07:00:00Z", NOW),
        ("2025-11-22T09:00:00+02:00", NOW),
        ("2025-11-22T07:00:00.250Z", NOW + 0.25),
        ("now", NOW),
        ("-1h", NOW - 3600),
        ("-30m", NOW - 1800),
        ("-90s", NOW - 90),
        ("-2d", NOW - 2 * 86400),
        ("-500ms", NOW - 0.5),
    ],
)
def test_times_are_unix_seconds_rfc3339_or_relative(text: str, expected: float) -> None:
    assert parse_time(text, NOW, "from") == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "-1x", "1h", "2025-11-22T07:00:00", "2025-13-40T00:00:00Z", "-1", "1e20"],
)
def test_a_bad_time_is_a_400_naming_the_parameter(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_time(text, NOW, "to")
    assert caught.value.status == 400
    assert caught.value.code == "invalid_parameter"
    assert caught.value.field == "to"


def test_a_time_without_zone_says_how_to_fix_it() -> None:
    with pytest.raises(ApiError, match="time zone"):
        parse_time("2025-11-22T07:00:00", NOW, "from")


def test_the_range_defaults_to_the_last_hour() -> None:
    assert parse_range({}, NOW) == (NOW - 3600, NOW)
    assert parse_range({"from": "-5m"}, NOW) == (NOW - 300, NOW)
    assert parse_range({"to": "-1h"}, NOW) == (NOW - 7200, NOW - 3600)


def test_a_range_that_ends_before_it_starts_names_from() -> None:
    with pytest.raises(ApiError) as caught:
        parse_range({"from": "-1h", "to": "-2h"}, NOW)
    assert caught.value.field == "from"


def test_limit() -> None:
    assert parse_limit({}, default=100, maximum=1000) == 100
    assert parse_limit({"limit": "5"}, default=100, maximum=1000) == 5
    for bad in ("0", "1001", "ten", "-3", "1.5"):
        with pytest.raises(ApiError) as caught:
            parse_limit({"limit": bad}, default=100, maximum=1000)
        assert caught.value.field == "limit"


def test_choice() -> None:
    assert parse_choice({}, "status", ("firing", "resolved")) is None
    assert parse_choice({"status": "firing"}, "status", ("firing", "resolved")) == "firing"
    with pytest.raises(ApiError, match="firing, resolved") as caught:
        parse_choice({"status": "open"}, "status", ("firing", "resolved"))
    assert caught.value.field == "status"


def test_label_matchers_come_from_label_dot_parameters() -> None:
    params = {"metric": "disk.used_percent", "label.mount": "/", "label.env": "prod", "host": "web-1"}
    assert label_matchers(params) == {"mount": "/", "env": "prod"}
    with pytest.raises(ApiError) as caught:
        label_matchers({"label.": "x"})
    assert caught.value.field == "label."


def test_required_parameter() -> None:
    assert require({"metric": "cpu.usage_percent"}, "metric") == "cpu.usage_percent"
    for params in ({}, {"metric": ""}):
        with pytest.raises(ApiError) as caught:
            require(params, "metric")
        assert caught.value.field == "metric"
        assert "required" in caught.value.message

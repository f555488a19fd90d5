"""The gateway's decoders are total and its fast metric decoder is the contract's decoder:
the same decision and the same value for any bytes, valid or not."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signalfire.events import (
    MAX_HOST_NAME_LENGTH,
    MAX_LABEL_NAME_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_METRIC_NAME_LENGTH,
    MAX_SAMPLE_VALUE,
    MAX_SAMPLES_PER_BATCH,
    MAX_UNIX_TIME,
    MetricBatch,
    PayloadError,
    decode,
    host_name_problem,
)
from signalfire.gateway.errors import ApiError
from signalfire.gateway.ingest import decode_metric_batch
from signalfire.gateway.live import ClientMessage, decode_client_message
from signalfire.gateway.params import parse_cursor
from tests.hostile import EXAMPLES, HOSTILE_TEXT, T0, any_input, deep, dump, not_utf8_payload, spoiled

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(decoder: Any, data: bytes) -> tuple[bool, Any]:
    """(accepted, the value as builtins) or (refused, the error text); any other exception
    fails the test."""
    try:
        value = decoder(data)
    except PayloadError as exc:
        return False, str(exc)
    return True, msgspec.to_builtins(value)


#: For each part of a batch: values that are valid, and values on or past its limits.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "host": st.one_of(
        st.sampled_from(["web-1", "db-1.example.com", "h" * MAX_HOST_NAME_LENGTH, "a..", "é"]),
        st.text(min_size=1, max_size=20).filter(lambda h: host_name_problem(h) is None),
    ),
    "time": st.one_of(
        st.sampled_from([T0, 0, MAX_UNIX_TIME]), st.floats(min_value=0, max_value=MAX_UNIX_TIME)
    ),
    "name": st.one_of(
        st.sampled_from(["cpu.usage_percent", "a", "_x", "x:y-z.w", "n" * MAX_METRIC_NAME_LENGTH]),
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,8}", fullmatch=True),
    ),
    "value": st.one_of(
        st.floats(min_value=-MAX_SAMPLE_VALUE, max_value=MAX_SAMPLE_VALUE),
        st.sampled_from([MAX_SAMPLE_VALUE, -MAX_SAMPLE_VALUE]),
        st.integers(-(10**30), 10**30),
    ),
    "label_name": st.one_of(
        st.sampled_from(["env", "_a.b-c", "l" * MAX_LABEL_NAME_LENGTH]),
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,8}", fullmatch=True),
    ),
    "label_value": st.one_of(
        st.text(max_size=8), st.sampled_from(["v" * MAX_LABEL_VALUE_LENGTH, "é" * MAX_LABEL_VALUE_LENGTH])
    ),
    "label_count": st.integers(0, 3),
}
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "host": st.one_of(
        st.sampled_from(["", "h" * (MAX_HOST_NAME_LENGTH + 1), "a/b", ".", "..", "web\n"]), HOSTILE_TEXT
    ),
    "time": st.one_of(st.sampled_from([-1, -0.001, MAX_UNIX_TIME + 0.5, 1e300]), st.floats()),
    "name": st.one_of(
        st.sampled_from(["", "n" * (MAX_METRIC_NAME_LENGTH + 1), "1bad", "cpu\n", "a b"]), HOSTILE_TEXT
    ),
    "value": st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, 1.7976931348623157e308, -1e301]),
        st.sampled_from(
            [math.nextafter(MAX_SAMPLE_VALUE, math.inf), math.nextafter(-MAX_SAMPLE_VALUE, -math.inf)]
        ),
        st.floats(min_value=MAX_SAMPLE_VALUE, exclude_min=True, allow_infinity=False),
        st.integers(10**301, 10**400),
    ),
    "label_name": st.one_of(
        st.sampled_from(["", "l" * (MAX_LABEL_NAME_LENGTH + 1), "1x", "a:b", "env\n"]), HOSTILE_TEXT
    ),
    "label_value": st.sampled_from(["v" * (MAX_LABEL_VALUE_LENGTH + 1), "é" * (MAX_LABEL_VALUE_LENGTH + 1)]),
    "label_count": st.integers(MAX_LABELS + 1, MAX_LABELS + 6),
}
PARTS = [*VALID, "sample_time", None]


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    """Metric batches valid but for at most one part, which is on or past its limit (NaN and
    Infinity are written as such), so each constraint is tried alone."""
    bad = draw(st.sampled_from(PARTS))

    def part(name: str) -> Any:
        return draw(INVALID[name] if name == bad else VALID[name])

    def some_labels() -> dict[str, str]:
        return {
            part("label_name") + ("" if i == 0 else str(i)): part("label_value")
            for i in range(part("label_count"))
        }

    samples: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        sample: dict[str, Any] = {"name": part("name"), "value": part("value")}
        if draw(st.booleans()):
            sample["labels"] = some_labels()
        if bad == "sample_time" or draw(st.booleans()):
            sample["time"] = draw(INVALID["time"]) if bad == "sample_time" else part("time")
        samples.append(sample)
    batch: dict[str, Any] = {"host": part("host"), "time": part("time"), "samples": samples}
    if draw(st.booleans()):
        batch["labels"] = some_labels()
    return json.dumps(batch, ensure_ascii=draw(st.booleans())).encode()


def strict(data: bytes) -> MetricBatch:
    return decode(data, MetricBatch)


@settings(max_examples=600, deadline=None)
@given(data=batches())
def test_the_fast_decoder_agrees_with_the_contract_on_each_limit(data: bytes) -> None:
    assert outcome(decode_metric_batch, data) == outcome(strict, data)


@PROPERTY
@given(data=st.one_of(any_input("MetricBatch"), spoiled(EXAMPLES["MetricBatch"])))
def test_the_fast_decoder_agrees_with_the_contract_on_any_bytes(data: bytes) -> None:
    assert outcome(decode_metric_batch, data) == outcome(strict, data)


def test_the_fast_decoder_refuses_bytes_that_are_not_utf8_with_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="not UTF-8"):
        decode_metric_batch(not_utf8_payload(EXAMPLES["MetricBatch"], "host"))


@pytest.mark.parametrize("host", ["a/b", "/", ".", "..", "web-1\n", "web\x1b1", "web\x85"])
def test_host_names_no_page_can_show_are_refused_by_both_decoders(host: str) -> None:
    data = dump({**EXAMPLES["MetricBatch"], "host": host})
    for decoder in (decode_metric_batch, lambda d: decode(d, MetricBatch)):
        with pytest.raises(PayloadError, match=r"host name without '/' or control characters.*\$\.host"):
            decoder(data)


CLIENT_MESSAGE = {
    "subscribe": {"hosts": ["web-1"], "metrics": ["cpu.*"], "alerts": True},
    "last_seq": 3,
    "epoch": "e",
}


@PROPERTY
@given(data=any_input(CLIENT_MESSAGE))
def test_any_client_message_decodes_or_is_a_payload_error(data: bytes) -> None:
    accepted, value = outcome(decode_client_message, data)
    if accepted:
        assert decode_client_message(msgspec.json.encode(value)) == msgspec.convert(value, ClientMessage)


@PROPERTY
@given(data=st.one_of(any_input({"a": 1}), st.sampled_from([deep(1_000), deep(5_000, "{")])))
def test_any_paging_cursor_is_read_or_refused_with_a_400(data: bytes) -> None:
    cursor = base64.urlsafe_b64encode(data).decode().rstrip("=")
    for raw in (cursor, data.decode("latin-1")):
        try:
            values = parse_cursor({"cursor": raw}, (str, int))
        except ApiError as exc:
            assert (exc.status, exc.field) == (400, "cursor")
        else:
            assert values is None or len(values) == 2


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b'{"host":"h","time":1,"samples":[{"name":"x","value":1e999}]}', "$.samples[0].value"),
        (
            json.dumps(
                {"host": "h", "time": 1, "samples": [{"name": "x", "value": 1}] * (MAX_SAMPLES_PER_BATCH + 1)}
            ).encode(),
            "$.samples",
        ),
    ],
)
def test_the_fast_decoder_refuses_what_json_cannot_hold_as_the_contract_does(data: bytes, error: str) -> None:
    # A value that overflows to infinity, and more samples than a batch may hold: both outside
    # what the property tests above can write.
    accepted, message = outcome(decode_metric_batch, data)
    assert not accepted and error in message
    assert (accepted, message) == outcome(strict, data)

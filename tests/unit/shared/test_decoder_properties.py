"""Every payload decoder of the contract is total: any bytes give a valid payload or a
``PayloadError`` naming the problem, never another exception (a ``UnicodeDecodeError`` once
cost a whole gateway ingest round and answered HTTP ingest with a 500)."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signalfire.events import PAYLOADS, MetricBatch, PayloadError, decode, encode
from tests.hostile import BAD_NUMBERS, EXAMPLES, Raw, any_input, deep, dump, not_utf8_payload

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decoded_or_refused(data: bytes, kind: type[msgspec.Struct]) -> msgspec.Struct | None:
    """The decoded payload (checked to be valid: it survives its own round trip), or None for a
    PayloadError. Any other exception fails the test."""
    try:
        payload = decode(data, kind)
    except PayloadError as exc:
        assert str(exc), "a PayloadError says what is wrong"
        return None
    assert type(payload) is kind
    assert decode(encode(payload), kind) == payload
    if isinstance(payload, MetricBatch):
        assert all(math.isfinite(s.value) for s in payload.samples)
    return payload


@pytest.mark.parametrize("name", sorted(PAYLOADS))
@PROPERTY
@given(data=st.data())
def test_any_bytes_decode_to_a_valid_payload_or_a_payload_error(name: str, data: st.DataObject) -> None:
    decoded_or_refused(data.draw(any_input(name)), PAYLOADS[name])


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_each_example_is_valid_and_breaking_one_string_is_refused_naming_utf8(name: str) -> None:
    example = EXAMPLES[name]
    assert decoded_or_refused(dump(example), PAYLOADS[name]) is not None
    field = next(k for k, v in example.items() if isinstance(v, str))
    with pytest.raises(PayloadError, match="not UTF-8"):
        decode(not_utf8_payload(example, field), PAYLOADS[name])


@pytest.mark.parametrize("depth", [100, 1_000, 100_000])
@pytest.mark.parametrize("kind", ["[", "{"])
def test_deep_nesting_is_a_payload_error(depth: int, kind: str) -> None:
    data = dump({**EXAMPLES["MetricBatch"], "extra": Raw(deep(depth, kind))})
    refused = decoded_or_refused(data, MetricBatch)
    assert refused is None or depth < 1_000  # shallow unknown fields are merely skipped
    if depth >= 1_000:
        with pytest.raises(PayloadError, match="nested too deeply"):
            decode(data, MetricBatch)


@pytest.mark.parametrize("number", BAD_NUMBERS)
def test_numbers_json_or_a_float_cannot_hold_are_refused(number: bytes) -> None:
    sample = {"name": "cpu.usage_percent", "value": Raw(number)}
    data = dump({**EXAMPLES["MetricBatch"], "samples": [sample]})
    if number in (b"1e-400", b"9223372036854775808", b"-" + b"9" * 40):
        # Numbers a float holds (rounded, or 0.0): odd but valid sample values.
        assert decoded_or_refused(data, MetricBatch) is not None
        return
    with pytest.raises(PayloadError):
        decode(data, MetricBatch)


def test_huge_integers_are_refused_where_the_database_holds_64_bits() -> None:
    alert = {**EXAMPLES["AlertEvent"], "seq": 2**63}
    with pytest.raises(PayloadError, match=r"\$\.seq"):
        decode(dump(alert), PAYLOADS["AlertEvent"])
    facts = {**EXAMPLES["AgentStatus"], "facts": {"cpu_count": 10**40}}
    with pytest.raises(PayloadError, match=r"\$\.facts\.cpu_count"):
        decode(dump(facts), PAYLOADS["AgentStatus"])

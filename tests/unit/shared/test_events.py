"""The event contract: what other languages see on the wire, and what bad input gets."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalfire.events import (
    MAX_SAMPLE_VALUE,
    AgentStatus,
    AlertEvent,
    MetricBatch,
    PayloadError,
    Sample,
    decode,
    encode,
    host_name_problem,
)


def test_metric_batch_reads_the_documented_example() -> None:
    raw = (
        b'{"v":1, "host":"web-1", "time":1763794800.123, "labels":{"env":"prod"},'
        b'"samples":[{"name":"cpu.usage_percent","value":12.5},'
        b'{"name":"disk.used_percent","value":71.2,"labels":{"mount":"/"}}]}'
    )
    batch = decode(raw, MetricBatch)
    assert batch.host == "web-1"
    assert batch.labels == {"env": "prod"}
    assert batch.samples[1] == Sample(name="disk.used_percent", value=71.2, labels={"mount": "/"})


def test_payloads_carry_the_version_and_samples_stay_compact() -> None:
    batch = MetricBatch(host="h", time=1.0, samples=[Sample(name="cpu.usage_percent", value=1.0)])
    wire = json.loads(encode(batch))
    assert wire == {
        "v": 1,
        "host": "h",
        "time": 1.0,
        "labels": {},
        "samples": [{"name": "cpu.usage_percent", "value": 1.0}],
    }
    assert decode(encode(batch), MetricBatch).v == 1


def test_every_payload_type_writes_v() -> None:
    status = AgentStatus(host="h", status="online", time=1.0)
    assert json.loads(encode(status))["v"] == 1


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (b"{not json", "malformed"),
        (b'{"host":"h","time":1,"samples":[{"name":"x","value":"high"}]}', "$.samples[0].value"),
        (b'{"host":"","time":1,"samples":[]}', "$.host"),
        (b'{"host":"h","time":-5,"samples":[]}', "$.time"),
        (b'{"host":"h","time":1,"samples":[{"name":"bad name!","value":1}]}', "$.samples[0].name"),
        (b'{"host":"h","time":1,"samples":[{"name":"x","value":1e999}]}', "$.samples[0].value"),
        (b'{"v":2,"host":"h","time":1,"samples":[]}', "$.v"),
        (b'{"host":"h","time":1}', "samples"),
        (b"[]", "object"),
    ],
)
def test_bad_metric_batches_name_what_is_wrong(raw: bytes, names: str) -> None:
    with pytest.raises(PayloadError) as error:
        decode(raw, MetricBatch)
    assert names.lower() in str(error.value).lower()


def test_too_many_labels_are_refused() -> None:
    labels = {f"l{i}": "x" for i in range(100)}
    raw = msgspec.json.encode({"host": "h", "time": 1, "samples": [], "labels": labels})
    with pytest.raises(PayloadError, match=r"\$\.labels"):
        decode(raw, MetricBatch)


def test_alert_event_status_and_severity_are_closed_sets() -> None:
    base = {"id": "a", "fingerprint": "f", "rule": "R", "host": "h", "starts_at": 1, "time": 1}
    decode(msgspec.json.encode({**base, "status": "firing", "severity": "high"}), AlertEvent)
    with pytest.raises(PayloadError, match="status"):
        decode(msgspec.json.encode({**base, "status": "burning", "severity": "high"}), AlertEvent)
    with pytest.raises(PayloadError, match="severity"):
        decode(msgspec.json.encode({**base, "status": "firing", "severity": "urgent"}), AlertEvent)


def test_agent_status_defaults_facts() -> None:
    status = decode(b'{"host":"h","status":"offline","time":2}', AgentStatus)
    assert status.facts.cpu_count == 0


@given(
    host=st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != "" and host_name_problem(s) is None),
    values=st.lists(st.floats(min_value=-MAX_SAMPLE_VALUE, max_value=MAX_SAMPLE_VALUE), max_size=20),
)
def test_any_valid_batch_round_trips(host: str, values: list[float]) -> None:
    batch = MetricBatch(
        host=host,
        time=1763794800.5,
        samples=[Sample(name="m.x", value=v, labels={"i": str(i)}) for i, v in enumerate(values)],
    )
    assert decode(encode(batch), MetricBatch) == batch


@pytest.mark.parametrize("value", ["1.7976931348623157e308", "-1e301", "1e999", "1.0000000000000002e+300"])
def test_a_value_whose_sums_could_overflow_is_refused_naming_the_sample(value: str) -> None:
    # Two values near the float maximum sum to infinity: PostgreSQL refuses such a sum with an
    # error (a rollup merge, an hourly fold, a query) and math.fsum raises.
    data = (
        b'{"host":"h","time":2,"samples":[{"name":"a","value":1},{"name":"b","value":'
        + value.encode()
        + b"}]}"
    )
    with pytest.raises(
        PayloadError, match=r"(<= 1e\+300|>= -1e\+300|Number out of range) - at `\$\.samples\[1\]\.value`"
    ):
        decode(data, MetricBatch)


def test_values_up_to_the_largest_magnitude_are_accepted() -> None:
    data = b'{"host":"h","time":2,"samples":[{"name":"a","value":1e300},{"name":"b","value":-1e300}]}'
    assert [s.value for s in decode(data, MetricBatch).samples] == [MAX_SAMPLE_VALUE, -MAX_SAMPLE_VALUE]

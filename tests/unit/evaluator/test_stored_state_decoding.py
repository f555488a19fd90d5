"""An alert state in the KV bucket is read by the contract's decoder: whatever bytes a key
holds, the evaluator gets a valid state or a PayloadError (counted, skipped), never a crash."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings

from signalfire.evaluator.service import StoredAlert
from signalfire.evaluator.state import AlertState
from signalfire.events import AlertEvent, PayloadError, decode
from tests.hostile import EXAMPLES, T0, any_input

STATE = AlertState(
    rule="HighCPU",
    fingerprint="f-1",
    host="web-1",
    labels={"mount": "/"},
    status="firing",
    alert_id="f-1:1",
    active_since=T0,
    fired_at=T0,
    value=93.0,
    seq=1,
)
EXAMPLE = msgspec.to_builtins(
    StoredAlert(state=STATE, outbox=[msgspec.convert(EXAMPLES["AlertEvent"], AlertEvent)])
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=any_input(EXAMPLE))
def test_any_stored_bytes_decode_to_a_state_or_a_payload_error(data: bytes) -> None:
    try:
        stored = decode(data, StoredAlert)
    except PayloadError as exc:
        assert str(exc)
        return
    assert decode(msgspec.json.encode(stored), StoredAlert) == stored

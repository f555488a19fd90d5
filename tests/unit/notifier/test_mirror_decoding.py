"""A KV mirror skips (and reports) any value it cannot read, whatever its bytes: one bad
silence must not end the watch and leave every replica with stale silences."""

from __future__ import annotations

from typing import Any, cast

import msgspec
from hypothesis import HealthCheck, given, settings
from nats.js.kv import KeyValue

from signalfire.events import Silence
from signalfire.notifier.mirror import Mirror
from tests.hostile import T0, any_input, deep, not_utf8_payload

SILENCE = {
    "id": "maint-1",
    "matchers": [{"name": "host", "value": "web-1"}],
    "starts_at": T0,
    "ends_at": T0 + 3600,
    "author": "ana",
    "comment": "kernel upgrade",
}


def silences() -> tuple[Mirror[Silence], list[tuple[str, str]]]:
    """The notifier's silence mirror (its decoder, as the service builds it), not yet watching."""
    bad: list[tuple[str, str]] = []
    mirror = Mirror(
        cast(KeyValue, None),  # only _apply runs here: no bucket is read
        ">",
        lambda data: msgspec.json.decode(data, type=Silence),
        lambda key, why: bad.append((key, why)),
    )
    return mirror, bad


def entry(key: str, value: bytes, revision: int) -> Any:
    return KeyValue.Entry("sf_silences", key, value, revision, None, None, None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=any_input(SILENCE))
def test_any_value_is_mirrored_or_skipped_and_reported(data: bytes) -> None:
    mirror, bad = silences()
    mirror._apply(entry("s", data, 1))
    if bad:
        assert "s" not in mirror.entries and bad[0][0] == "s" and bad[0][1]
    elif data:
        assert isinstance(mirror.entries["s"][0], Silence)


def test_values_not_utf8_or_nested_too_deeply_are_skipped_and_the_rest_mirrored() -> None:
    mirror, bad = silences()
    mirror._apply(entry("bytes", not_utf8_payload(SILENCE, "author"), 1))
    mirror._apply(entry("deep", deep(100_000), 2))
    mirror._apply(entry("good", msgspec.json.encode(SILENCE), 3))
    assert [key for key, _ in bad] == ["bytes", "deep"]
    assert list(mirror.entries) == ["good"]

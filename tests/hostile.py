"""Hostile input for the decoders' property tests and the poison-message tests.

Three kinds, from least to most like the real thing: arbitrary bytes, arbitrary JSON values,
and payloads of the contract that are valid except in one place (a string that is not UTF-8,
a number that is huge, NaN or Infinity as text, nesting thousands deep, hostile text in a
string or a key, an unknown field carrying any of these, a truncation or a flipped byte).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

T0 = 1_763_794_800.0

#: Byte sequences that are not UTF-8: a stray continuation byte, overlong forms, an encoded
#: surrogate, a code point past U+10FFFF, a truncated sequence, bytes UTF-8 never uses.
BAD_UTF8 = [
    b"\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\xfe",
]

#: Number literals JSON does not have, or that no float or 64-bit integer holds.
BAD_NUMBERS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"1" + b"0" * 400,
    b"-" + b"9" * 40,
    b"9223372036854775808",
    b"0x10",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"1e-400",
]

#: Text that is valid JSON but meant to break whoever trusts it.
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "/",
            "a/b",
            ".",
            "..",
            "web-1\n",
            "\nweb-1",
            "web\x00-1",
            "\x1b[31mred",
            "\x7f",
            "\x85",
            "\u2028",
            "\u202eevil",
            "\ufeff",
            "%2F",
            "a" * 254,
            "é" * 300,
            "💥" * 10,
            "cpu.usage_percent\n",
            "1bad",
            "'; DROP TABLE samples; --",
        ]
    ),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]), min_size=1, max_size=8),
)


@dataclass(frozen=True)
class Raw:
    """Bytes written into the JSON text as they are (they need not be JSON)."""

    data: bytes


def dump(value: Any) -> bytes:
    """``value`` as JSON text, with :class:`Raw` parts written verbatim."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        return b"{" + b",".join(dump(_key(k)) + b":" + dump(v) for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode()


def _key(key: Any) -> Any:
    return key if isinstance(key, Raw) else str(key)


def deep(depth: int, kind: str = "[") -> bytes:
    """JSON nested ``depth`` levels deep: ``[[[...]]]`` or ``{"a":{"a":...}}``."""
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    HOSTILE_TEXT,
)
#: Any JSON value (objects with any keys, arrays, numbers of any size, any text).
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.one_of(HOSTILE_TEXT, st.sampled_from(["host", "time", "samples", "v"])), children, max_size=5
        )
    ),
    max_leaves=25,
)
json_bytes = json_values.map(dump)

#: One valid example of each payload type of the contract (and of the services' own records).
EXAMPLES: dict[str, dict[str, Any]] = {
    "MetricBatch": {
        "v": 1,
        "host": "web-1",
        "time": T0,
        "labels": {"env": "prod"},
        "samples": [
            {"name": "cpu.usage_percent", "value": 12.5, "labels": {"cpu": "0"}, "time": T0 - 1},
            {"name": "mem.used_percent", "value": 40},
        ],
    },
    "EventBatch": {
        "v": 1,
        "host": "web-1",
        "time": T0,
        "labels": {},
        "events": [
            {"type": "login.failed", "message": "bad password", "labels": {"user": "bob"}, "value": 1}
        ],
    },
    "AgentStatus": {
        "v": 1,
        "host": "web-1",
        "status": "online",
        "time": T0,
        "facts": {"os": "linux", "kernel": "6.1", "cpu_count": 4, "memory_total_bytes": 1 << 33},
        "labels": {"env": "prod"},
        "interval": 5,
    },
    "AlertEvent": {
        "v": 1,
        "id": "a-1",
        "fingerprint": "f-1",
        "rule": "HighCPU",
        "status": "firing",
        "severity": "critical",
        "host": "web-1",
        "starts_at": T0,
        "time": T0,
        "labels": {"team": "ops"},
        "annotations": {"summary": "CPU 93%"},
        "value": 93.0,
        "threshold": 90.0,
        "seq": 1,
    },
    "AlertAction": {"v": 1, "alert_id": "a-1", "action": "ack", "actor": "ana", "time": T0, "note": "on it"},
    "DeliveryResult": {
        "v": 1,
        "alert_id": "a-1",
        "channel": "ops",
        "status": "sent",
        "attempt": 1,
        "time": T0,
        "transition": "firing",
    },
    "Silence": {
        "v": 1,
        "id": "s-1",
        "matchers": [{"name": "host", "value": "web-1"}, {"name": "rule", "op": "=~", "value": "High.*"}],
        "starts_at": T0,
        "ends_at": T0 + 3600,
        "author": "ana",
        "comment": "maintenance",
    },
}


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*path, i))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (_replace(v, rest, new) if k == head else v) for k, v in value.items()}
    return [(_replace(v, rest, new) if i == head else v) for i, v in enumerate(value)]


def _with_key(value: Any, path: tuple[Any, ...], key: Any, new: Any) -> Any:
    if not path:
        if isinstance(value, dict):
            return {**value, key: new}
        return value
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (_with_key(v, rest, key, new) if k == head else v) for k, v in value.items()}
    return [(_with_key(v, rest, key, new) if i == head else v) for i, v in enumerate(value)]


@st.composite
def not_utf8_string(draw: st.DrawFn) -> Raw:
    """A JSON string with bytes that are not UTF-8 somewhere in it."""
    before = draw(st.text(max_size=5)).encode()
    after = draw(st.text(max_size=5)).encode()
    return Raw(b'"' + before + draw(st.sampled_from(BAD_UTF8)) + after + b'"')


hostile_values = st.one_of(
    not_utf8_string(),
    st.sampled_from(BAD_NUMBERS).map(Raw),
    st.sampled_from([10, 100, 1_000, 5_000, 100_000]).flatmap(
        lambda n: st.sampled_from(["[", "{"]).map(lambda kind: Raw(deep(n, kind)))
    ),
    HOSTILE_TEXT,
    json_values,
)


@st.composite
def spoiled(draw: st.DrawFn, example: dict[str, Any]) -> bytes:
    """``example`` (a valid payload) as JSON, made bad (or merely odd) in one place."""
    how = draw(st.sampled_from(["value", "key", "field", "truncate", "flip"]))
    if how in ("truncate", "flip"):
        data = dump(example)
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if how == "truncate":
            return data[:at]
        return data[:at] + draw(st.binary(min_size=1, max_size=1)) + data[at + 1 :]
    path = draw(st.sampled_from(_paths(example)))
    if how == "value":
        return dump(_replace(example, path, draw(hostile_values)))
    key: Any = draw(st.one_of(not_utf8_string(), HOSTILE_TEXT))
    if how == "key":  # an unknown field: its name and its value may be anything
        return dump(_with_key(example, path, key, draw(hostile_values)))
    return dump(
        _with_key(example, path, draw(st.sampled_from(["host", "time", "v", "labels"])), draw(hostile_values))
    )


def any_input(example: str | dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Every kind of hostile input for a decoder of ``example`` (a valid value, or the name of
    one in :data:`EXAMPLES`): arbitrary bytes and JSON, the example spoiled, the example."""
    valid = EXAMPLES[example] if isinstance(example, str) else example
    return st.one_of(st.binary(max_size=300), json_bytes, spoiled(valid), st.just(dump(valid)))


def not_utf8_payload(example: dict[str, Any], field: str) -> bytes:
    """``example`` as JSON whose string ``field`` (top level) holds a byte that is not UTF-8."""
    return dump({**example, field: Raw(b'"' + str(example[field]).encode() + b'\xff"')})

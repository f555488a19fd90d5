"""The event contract: every payload that travels on the bus.

Each struct is the wire format itself (JSON, encoded with msgspec) and carries ``v: 1``.
Top-level payloads write every field (so ``v`` is always on the wire and readers in other
languages see explicit nulls); the per-sample and per-event structs omit empty defaults,
because a batch holds thousands of them.
Validation happens once, when a payload is decoded at a service's boundary; everything
inside a service can trust the types. JSON Schemas for integrators in other languages are
generated from these structs into ``docs/schemas/`` (see :mod:`signalfire.schemas`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

#: Version of the wire format; every payload carries it as ``v``.
CONTRACT_VERSION = 1

# Bounds that keep one hostile payload from costing a service more than a busy host would.
MAX_SAMPLES_PER_BATCH = 100_000
MAX_EVENTS_PER_BATCH = 10_000
MAX_LABELS = 64

HostName = Annotated[
    str, Meta(min_length=1, max_length=253, description="The host's real name (any characters but control)")
]
MetricName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$",
        description="Dotted metric name carrying its unit, e.g. `cpu.usage_percent`",
    ),
]
LabelName = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")]
LabelValue = Annotated[str, Meta(max_length=1024)]
Labels = Annotated[dict[LabelName, LabelValue], Meta(max_length=MAX_LABELS)]
UnixTime = Annotated[float, Meta(ge=0, le=32503680000, description="Unix time in seconds")]
Severity = Literal["critical", "high", "medium", "low"]
Version = Literal[1]

SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")


class Sample(Struct, omit_defaults=True, forbid_unknown_fields=False):
    """One measurement. ``time`` and ``labels`` are optional; a sample without ``time``
    was taken at its batch's ``time``."""

    name: MetricName
    value: float
    labels: Labels = {}
    time: UnixTime | None = None


class MetricBatch(Struct, kw_only=True):
    """Samples from one host, published on ``sf.metrics.<host>``."""

    host: HostName
    time: UnixTime
    samples: Annotated[list[Sample], Meta(max_length=MAX_SAMPLES_PER_BATCH)]
    labels: Labels = {}
    v: Version = 1


class Event(Struct, omit_defaults=True, kw_only=True):
    """One discrete occurrence: a failed login, a deploy, a restart."""

    type: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")]
    time: UnixTime | None = None
    message: Annotated[str, Meta(max_length=8192)] = ""
    labels: Labels = {}
    value: float | None = None


class EventBatch(Struct, kw_only=True):
    """Events from one host, published on ``sf.events.<host>``."""

    host: HostName
    time: UnixTime
    events: Annotated[list[Event], Meta(max_length=MAX_EVENTS_PER_BATCH)]
    labels: Labels = {}
    v: Version = 1


class HostFacts(Struct, omit_defaults=True, kw_only=True):
    """What an agent knows about its host when it starts."""

    os: str = ""
    kernel: str = ""
    cpu_count: int = 0
    memory_total_bytes: int = 0
    boot_time: UnixTime | None = None
    agent_version: str = ""


class AgentStatus(Struct, kw_only=True):
    """Agent liveness on ``sf.agents.<host>``: ``online`` at start, ``offline`` on a clean
    shutdown (a host that goes silent without ``offline`` is down, not offline)."""

    host: HostName
    status: Literal["online", "offline"]
    time: UnixTime
    facts: HostFacts = msgspec.field(default_factory=HostFacts)
    labels: Labels = {}
    interval: Annotated[float, Meta(gt=0)] | None = None
    v: Version = 1


class AlertEvent(Struct, kw_only=True):
    """One transition of one alert instance, on ``sf.alerts.<host>``.

    ``id`` names the alert instance and is the same on its ``firing`` and its ``resolved``
    event; ``fingerprint`` names the (rule, identifying labels) pair across instances.
    ``seq`` increases with every event the evaluator publishes for the fingerprint.
    """

    id: Annotated[str, Meta(min_length=1, max_length=200)]
    fingerprint: Annotated[str, Meta(min_length=1, max_length=200)]
    rule: Annotated[str, Meta(min_length=1, max_length=200)]
    status: Literal["firing", "resolved"]
    severity: Severity
    host: HostName
    starts_at: UnixTime
    time: UnixTime
    labels: Labels = {}
    annotations: dict[str, Annotated[str, Meta(max_length=16384)]] = {}
    value: float | None = None
    threshold: float | None = None
    ends_at: UnixTime | None = None
    seq: Annotated[int, Meta(ge=0)] = 0
    v: Version = 1


class AlertAction(Struct, kw_only=True):
    """A person's action on an alert, on ``sf.actions.alerts``."""

    alert_id: Annotated[str, Meta(min_length=1, max_length=200)]
    action: Literal["ack", "unack", "resolve", "note"]
    actor: Annotated[str, Meta(min_length=1, max_length=200)]
    time: UnixTime
    note: Annotated[str, Meta(max_length=16384)] = ""
    fingerprint: str = ""
    v: Version = 1


class DeliveryResult(Struct, kw_only=True):
    """The outcome of one delivery attempt, on ``sf.notifications.<channel>``."""

    alert_id: Annotated[str, Meta(min_length=1, max_length=200)]
    channel: Annotated[str, Meta(min_length=1, max_length=200)]
    status: Literal["sent", "failed", "retrying", "suppressed"]
    attempt: Annotated[int, Meta(ge=1)]
    time: UnixTime
    transition: Literal["firing", "resolved", "acknowledged", "repeat", "escalation", "test"] = "firing"
    fingerprint: str = ""
    rule: str = ""
    host: str = ""
    error: str | None = None
    reason: str | None = None
    v: Version = 1


#: Every payload type on the bus, by the name used for its JSON Schema file.
PAYLOADS: dict[str, type[Struct]] = {
    "MetricBatch": MetricBatch,
    "EventBatch": EventBatch,
    "AgentStatus": AgentStatus,
    "AlertEvent": AlertEvent,
    "AlertAction": AlertAction,
    "DeliveryResult": DeliveryResult,
}

T = TypeVar("T", bound=Struct)


class PayloadError(ValueError):
    """A payload that does not match the contract. ``str()`` names the field and the reason."""


_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def encode(payload: Struct) -> bytes:
    """The payload as compact JSON bytes."""
    return _encoder.encode(payload)


def decode(data: bytes, kind: type[T]) -> T:
    """Decode and validate one payload of type ``kind``.

    Raises :class:`PayloadError` naming the offending field (e.g. ``$.samples[3].value``)
    for malformed JSON, wrong types, out-of-range values and non-finite numbers.
    """
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        payload: T = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(str(exc)) from None
    if isinstance(payload, MetricBatch):
        for i, sample in enumerate(payload.samples):
            if not math.isfinite(sample.value):
                raise PayloadError(f"Expected a finite number - at `$.samples[{i}].value`")
    return payload

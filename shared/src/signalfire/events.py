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

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from signalfire.matchers import Matcher

#: Version of the wire format; every payload carries it as ``v``.
CONTRACT_VERSION = 1

# The contract's limits, exported so that every check outside these structs (the gateway's
# fast decoder, query parameters, the agent's configuration) reads the same numbers.
# Bounds that keep one hostile payload from costing a service more than a busy host would.
MAX_SAMPLES_PER_BATCH = 100_000
MAX_EVENTS_PER_BATCH = 10_000
MAX_LABELS = 64
#: The latest time a payload may carry: 3000-01-01T00:00:00Z, in Unix seconds.
MAX_UNIX_TIME = 32_503_680_000
#: Lengths in characters: a host name (as DNS bounds it), a metric or event type name, a label
#: name, a label value, an event's message.
MAX_HOST_NAME_LENGTH = 253
MAX_METRIC_NAME_LENGTH = 200
MAX_LABEL_NAME_LENGTH = 100
MAX_LABEL_VALUE_LENGTH = 1024
MAX_EVENT_MESSAGE_LENGTH = 8192
#: The largest magnitude of a sample's value. Sums of samples (a rollup's, a rule window's, a
#: query's) must stay finite: two values near the float maximum (1.8e308) overflow, which
#: PostgreSQL refuses with an error (failing a whole merge or fold, every host's rows in it) and
#: ``math.fsum`` with an exception. 1e300 leaves room for sums of 1e8 such values.
MAX_SAMPLE_VALUE = 1e300

# Patterns end in `$(?!\n)`: msgspec tests them with Python's `re.search`, where a bare `$` also
# matches before a final newline (so `"cpu\n"` passed as a metric name); ECMAScript regexes
# (JSON Schema validators) read the same pattern the same way.
#: A host's real name: anything but `/`, control characters, `.` and `..`, because the name
#: is one segment of the host's page address (`/hosts/<name>`), which those would break.
HOST_NAME_PATTERN = r"^(?!\.\.?$)[^/\x00-\x1f\x7f-\x9f]+$(?!\n)"
METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]*$(?!\n)"
LABEL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$(?!\n)"

HostName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_HOST_NAME_LENGTH,
        pattern=HOST_NAME_PATTERN,
        description="The host's real name: any characters but `/` and control characters; not `.` or `..`",
    ),
]
MetricName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_METRIC_NAME_LENGTH,
        pattern=METRIC_NAME_PATTERN,
        description="Dotted metric name carrying its unit, e.g. `cpu.usage_percent`",
    ),
]
LabelName = Annotated[str, Meta(min_length=1, max_length=MAX_LABEL_NAME_LENGTH, pattern=LABEL_NAME_PATTERN)]
LabelValue = Annotated[str, Meta(max_length=MAX_LABEL_VALUE_LENGTH)]
Labels = Annotated[dict[LabelName, LabelValue], Meta(max_length=MAX_LABELS)]
UnixTime = Annotated[float, Meta(ge=0, le=MAX_UNIX_TIME, description="Unix time in seconds")]
# JSON integers have no size limit and msgspec reads any; these bounds are what the database
# (and most languages) can hold, so a huge number is refused here rather than by an INSERT.
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
SampleValue = Annotated[
    float,
    Meta(
        ge=-MAX_SAMPLE_VALUE,
        le=MAX_SAMPLE_VALUE,
        description="a finite number of magnitude at most 1e300 (sums of values must stay finite)",
    ),
]
Severity = Literal["critical", "high", "medium", "low"]
Version = Literal[1]

SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")


class Sample(Struct, omit_defaults=True, forbid_unknown_fields=False):
    """One measurement. ``time`` and ``labels`` are optional; a sample without ``time``
    was taken at its batch's ``time``."""

    name: MetricName
    value: SampleValue
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

    type: Annotated[str, Meta(min_length=1, max_length=MAX_METRIC_NAME_LENGTH, pattern=METRIC_NAME_PATTERN)]
    time: UnixTime | None = None
    message: Annotated[str, Meta(max_length=MAX_EVENT_MESSAGE_LENGTH)] = ""
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
    cpu_count: Count = 0
    memory_total_bytes: Count = 0
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
    seq: Count = 0
    v: Version = 1


class AlertAction(Struct, kw_only=True):
    """A person's action on an alert, on ``sf.actions.alerts``."""

    alert_id: Annotated[str, Meta(min_length=1, max_length=200)]
    action: Literal["ack", "unack", "resolve", "note"]
    actor: Annotated[str, Meta(min_length=1, max_length=200)]
    time: UnixTime
    note: Annotated[str, Meta(max_length=16384)] = ""
    fingerprint: str = ""
    #: Unique per action (the gateway's API gives each a UUID, also its ``Nats-Msg-Id``): the
    #: gateway stores an action with an id once, however often it is delivered. Empty in
    #: actions published before ids existed (those are told apart by alert, action and time).
    id: Annotated[str, Meta(max_length=200)] = ""
    v: Version = 1


class DeliveryResult(Struct, kw_only=True):
    """The outcome of one delivery attempt, on ``sf.notifications.<channel>``."""

    alert_id: Annotated[str, Meta(min_length=1, max_length=200)]
    channel: Annotated[str, Meta(min_length=1, max_length=200)]
    status: Literal["sent", "failed", "retrying", "suppressed"]
    attempt: Annotated[int, Meta(ge=1, le=2**31 - 1)]
    time: UnixTime
    transition: Literal["firing", "resolved", "acknowledged", "repeat", "escalation", "test"] = "firing"
    fingerprint: str = ""
    rule: str = ""
    host: str = ""
    error: str | None = None
    reason: str | None = None
    v: Version = 1


class Silence(Struct, kw_only=True, forbid_unknown_fields=True):
    """One silence, as the gateway writes it into the ``silences`` KV bucket (key: ``id``) and
    the notifier reads it: alerts that every matcher matches (their labels plus ``severity``,
    ``rule`` and ``host``) are not sent from ``starts_at`` until ``ends_at`` (unix seconds).
    Matchers are :class:`signalfire.matchers.Matcher` (docs/matchers.md)."""

    id: Annotated[str, Meta(min_length=1, max_length=200)]
    matchers: Annotated[list[Matcher], Meta(min_length=1, max_length=50)]
    starts_at: UnixTime
    ends_at: UnixTime
    author: str
    comment: str = ""
    #: When the silence was created (the gateway's API sets it; a silence put by other means
    #: without it counts as created when the gateway first saw it).
    created_at: UnixTime | None = None
    v: Version = 1

    def active(self, now: float) -> bool:
        """Whether the silence applies at ``now``."""
        return self.starts_at <= now < self.ends_at


#: Every payload type between services (on the bus, and ``Silence`` in the KV bucket), by
#: the name used for its JSON Schema file.
PAYLOADS: dict[str, type[Struct]] = {
    "MetricBatch": MetricBatch,
    "EventBatch": EventBatch,
    "AgentStatus": AgentStatus,
    "AlertEvent": AlertEvent,
    "AlertAction": AlertAction,
    "DeliveryResult": DeliveryResult,
    "Silence": Silence,
}

T = TypeVar("T", bound=Struct)


class PayloadError(ValueError):
    """A payload that does not match the contract. ``str()`` names the field and the reason."""


#: What each name pattern means, in the words an error message gives instead of the regex.
_PATTERN_WORDS = {
    HOST_NAME_PATTERN: "a host name without '/' or control characters (and not '.' or '..')",
    METRIC_NAME_PATTERN: "a name of letters, digits, '_', '.', ':' or '-' starting with a letter or '_'",
    LABEL_NAME_PATTERN: "a label name of letters, digits, '_', '.' or '-' starting with a letter or '_'",
}


def host_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a host name of the contract, or ``None`` when it can."""
    if not name or len(name) > MAX_HOST_NAME_LENGTH:
        return f"must be 1 to {MAX_HOST_NAME_LENGTH} characters long"
    if re.search(HOST_NAME_PATTERN, name) is None:
        return "must not contain '/' or control characters, nor be '.' or '..' (it names the host's page)"
    return None


_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def encode(payload: Struct) -> bytes:
    """The payload as compact JSON bytes."""
    return _encoder.encode(payload)


def decode(data: bytes, kind: type[T]) -> T:
    """Decode and validate one payload of type ``kind`` (any msgspec struct).

    Total over bytes: returns a valid ``kind`` or raises :class:`PayloadError`, whose text names
    the problem and, for a field, the field (e.g. ``$.samples[3].value``): malformed JSON, text
    that is not UTF-8, nesting too deep to decode, wrong types and out-of-range values (a
    number too large to be a finite float is out of every range).
    """
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        payload: T = decoder.decode(data)
    except msgspec.DecodeError as exc:  # also msgspec.ValidationError
        raise PayloadError(_in_words(str(exc))) from None
    except UnicodeDecodeError as exc:
        # msgspec meets bad UTF-8 inside a string (elsewhere it is malformed JSON); ``exc``
        # holds only that string, so its offset would mislead: name the string's text instead.
        text = exc.object[: exc.start].decode("utf-8", "replace")[-40:]
        bad = exc.object[exc.start : exc.end].hex()
        raise PayloadError(
            f"not UTF-8 JSON: a string has byte 0x{bad}, which is not UTF-8 (after {text!r})"
        ) from None
    except RecursionError:
        raise PayloadError("JSON is nested too deeply to decode") from None
    except ValueError as exc:  # anything else msgspec refuses; never expected, still a bad payload
        raise PayloadError(f"cannot decode: {exc}") from None
    return payload


def _in_words(message: str) -> str:
    if "matching regex" in message:
        for pattern, words in _PATTERN_WORDS.items():
            message = message.replace(f"`str` matching regex {pattern!r}", words)
    return message

"""The pure core: one alert state machine per (rule, series), without I/O or clock reads.

::

    inactive ──condition──► pending ──`for` elapsed──► firing ──resolve──► inactive
        ▲                      │      (and cooldown over)   (keep_firing_for   (event: resolved)
        └──condition fails─────┘ (no event)  (event: firing)  elapsed, not flapping)

``for: 0`` goes from inactive to firing on the first matching sample. While firing, a value
between the resolve condition and the condition keeps the alert firing (hysteresis); once
``resolve`` holds, the alert still fires for ``keep_firing_for``. After a resolve, the same
series does not fire again for ``cooldown`` (it waits in ``pending``). An alert that changed
state more than ``flap.changes`` times within ``flap.window`` is marked flapping and held
firing until its recent changes fall under the limit. Each alert instance yields exactly one
``firing`` and then exactly one ``resolved`` transition, both carrying the same ``alert_id``.

:func:`evaluate` takes whether the condition and the resolve condition hold, so every rule kind
(threshold, ratio, event count, absence, anomaly) shares this one machine; :func:`step` is the
shorthand for a plain value. The caller supplies ``now`` (the evaluator's clock at the time a
batch arrives), so the functions are deterministic and the rule tests and property tests
drive them with any sequence of values and times.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Literal

import msgspec

from signalfire.evaluator.rules import Rule

Status = Literal["inactive", "pending", "firing"]


class Series(msgspec.Struct, frozen=True, kw_only=True):
    """The series a sample belongs to.

    ``labels`` identify it (the sample's own labels: ``mount``, ``target``, …) together with
    ``host``; ``context`` are the batch's labels (``env``, ``role``), shown on alerts but not
    part of the identity, so re-labelling a host does not restart its alerts.
    """

    host: str
    labels: dict[str, str] = {}
    context: dict[str, str] = {}


class AlertState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where one (rule, series) pair is in its state machine; persisted in the KV bucket."""

    rule: str
    fingerprint: str
    host: str
    labels: dict[str, str] = {}
    context: dict[str, str] = {}
    status: Status = "inactive"
    #: The current (or last) alert instance; set when it fires.
    alert_id: str | None = None
    #: When the condition started holding (the start of ``pending``).
    active_since: float | None = None
    fired_at: float | None = None
    value: float | None = None
    #: Transitions emitted so far for this fingerprint; the last one's ``seq``.
    seq: int = 0
    last_seen: float | None = None
    #: While firing: when ``resolve`` started holding (``keep_firing_for`` and flap holds).
    clearing_since: float | None = None
    #: When the last instance resolved (``cooldown``).
    resolved_at: float | None = None
    #: Times of the transitions within the rule's flap window, oldest first.
    changes: tuple[float, ...] = ()
    flapping: bool = False
    #: A clean ``offline`` agent status retired the series (``absent`` rules stop watching it).
    retired: bool = False
    #: ``AlertAction`` ``ack`` on the current instance: who and when.
    acked_by: str | None = None
    acked_at: float | None = None
    #: The time (as the gateway stamped it) of the last ``ack`` or ``unack`` applied to the
    #: current instance: an older one, read back after it, does not undo it.
    ack_changed_at: float | None = None
    #: When a person resolved the last instance (``AlertAction`` ``resolve``), on the
    #: evaluator's clock: a sample taken before it starts no new instance.
    resolved_by_hand_at: float | None = None
    v: int = 1


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """An alert event to publish: the instance ``alert_id`` fired or resolved at ``time``."""

    status: Literal["firing", "resolved"]
    alert_id: str
    fingerprint: str
    time: float
    starts_at: float
    value: float
    seq: int
    ends_at: float | None = None
    flapping: bool = False


def fingerprint(rule: str, host: str, labels: Mapping[str, str]) -> str:
    """A stable id (20 hex characters of SHA-256) of a rule and a series' identifying labels."""
    canonical = json.dumps([rule, host, sorted(labels.items())], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def alert_id(fingerprint: str, fired_at: float, previous: str | None = None) -> str:
    """``<fingerprint>:<firing time in unix milliseconds>``.

    An instance that fires within the same millisecond as (or, after a clock step, before)
    the ``previous`` instance gets the next millisecond, so every instance has its own id
    and the stream's de-duplication never swallows a new alert.
    """
    ms = round(fired_at * 1000)
    if previous is not None:
        last = previous.rpartition(":")[2]
        if last.isdigit():
            ms = max(ms, int(last) + 1)
    return f"{fingerprint}:{ms}"


def initial_state(rule: Rule, series: Series) -> AlertState:
    """The inactive state of a series the rule has not seen before."""
    return AlertState(
        rule=rule.name,
        fingerprint=fingerprint(rule.name, series.host, series.labels),
        host=series.host,
        labels=series.labels,
        context=series.context,
    )


def step(
    rule: Rule, state: AlertState | None, value: float, now: float, series: Series
) -> tuple[AlertState, list[Transition]]:
    """Advance ``state`` (``None`` for a new series) by one sample of ``value`` at ``now``."""
    return evaluate(
        rule, state, value, now, series, holds=rule.condition.holds(value), clears=rule.resolve.holds(value)
    )


def evaluate(
    rule: Rule,
    state: AlertState | None,
    value: float,
    now: float,
    series: Series,
    *,
    holds: bool,
    clears: bool,
) -> tuple[AlertState, list[Transition]]:
    """Advance ``state`` by one observation: ``value`` (what events report), whether the
    rule's condition ``holds`` and whether its resolve condition ``clears`` (never both)."""
    if state is None:
        state = initial_state(rule, series)
    seen = msgspec.structs.replace(
        state, value=value, last_seen=now, host=series.host, labels=series.labels, context=series.context
    )
    if state.status == "firing":
        if not clears:
            if seen.clearing_since is not None:
                seen = msgspec.structs.replace(seen, clearing_since=None)
            return seen, []
        if seen.clearing_since is None:
            seen = msgspec.structs.replace(seen, clearing_since=now)
        return _resolve_if_due(rule, seen, now)
    if not holds:
        # Pending that stops holding before `for` goes back quietly: nothing was announced.
        return msgspec.structs.replace(seen, status="inactive", active_since=None), []
    if state.status == "inactive":
        seen = msgspec.structs.replace(seen, status="pending", active_since=now)
    return _fire_if_due(rule, seen, now)


def tick(rule: Rule, state: AlertState, now: float) -> tuple[AlertState, list[Transition]]:
    """Advance ``state`` to ``now`` without a new observation: a pending alert whose ``for``
    (and cooldown) has elapsed fires with the last value it saw; a firing alert whose resolve
    condition has held for ``keep_firing_for`` (and is not held by flap damping) resolves."""
    if state.status == "pending":
        return _fire_if_due(rule, state, now)
    if state.status == "firing" and state.clearing_since is not None:
        return _resolve_if_due(rule, state, now)
    return state, []


def waiting(state: AlertState) -> bool:
    """Whether :func:`tick` may change ``state`` as time passes."""
    return state.status == "pending" or (state.status == "firing" and state.clearing_since is not None)


def _recent(rule: Rule, changes: tuple[float, ...], now: float) -> tuple[float, ...]:
    if not rule.flap_changes:
        return ()
    return tuple(t for t in changes if now - t < rule.flap_window)


def _fire_if_due(rule: Rule, state: AlertState, now: float) -> tuple[AlertState, list[Transition]]:
    assert state.active_since is not None and state.value is not None
    if now - state.active_since < rule.for_:
        return state, []
    if state.resolved_at is not None and now - state.resolved_at < rule.cooldown:
        return state, []
    changes = (*_recent(rule, state.changes, now), now) if rule.flap_changes else ()
    flapping = bool(rule.flap_changes) and len(changes) > rule.flap_changes
    instance = alert_id(state.fingerprint, now, state.alert_id)
    fired = msgspec.structs.replace(
        state,
        status="firing",
        alert_id=instance,
        fired_at=now,
        seq=state.seq + 1,
        clearing_since=None,
        changes=changes,
        flapping=flapping,
        acked_by=None,
        acked_at=None,
        ack_changed_at=None,
        resolved_by_hand_at=None,
    )
    event = Transition(
        status="firing",
        alert_id=instance,
        fingerprint=state.fingerprint,
        time=now,
        starts_at=now,
        value=state.value,
        seq=fired.seq,
        flapping=flapping,
    )
    return fired, [event]


def _resolve_if_due(rule: Rule, state: AlertState, now: float) -> tuple[AlertState, list[Transition]]:
    assert state.alert_id is not None and state.fired_at is not None and state.value is not None
    assert state.clearing_since is not None
    if now - state.clearing_since < rule.keep_firing_for:
        return state, []
    recent = _recent(rule, state.changes, now)
    if rule.flap_changes and len(recent) + 1 > rule.flap_changes:
        # Resolving now would be one change too many: hold firing until old changes age out.
        held = msgspec.structs.replace(state, flapping=True, changes=recent)
        return held, []
    return _resolved(state, now, (*recent, now) if rule.flap_changes else ())


def _resolved(
    state: AlertState, now: float, changes: tuple[float, ...]
) -> tuple[AlertState, list[Transition]]:
    assert state.alert_id is not None and state.fired_at is not None and state.value is not None
    resolved = msgspec.structs.replace(
        state,
        status="inactive",
        active_since=None,
        fired_at=None,
        clearing_since=None,
        resolved_at=now,
        changes=changes,
        flapping=False,
        seq=state.seq + 1,
    )
    event = Transition(
        status="resolved",
        alert_id=state.alert_id,
        fingerprint=state.fingerprint,
        time=now,
        starts_at=state.fired_at,
        ends_at=now,
        value=state.value,
        seq=resolved.seq,
        flapping=state.flapping,
    )
    return resolved, [event]


def end(state: AlertState, now: float) -> tuple[AlertState, list[Transition]]:
    """Resolve a firing alert at once, whatever ``keep_firing_for`` or flap damping say: its
    rule was removed, or its host shut down cleanly."""
    if state.status != "firing":
        return state, []
    return _resolved(state, now, state.changes)

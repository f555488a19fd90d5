"""The evaluator's deterministic core: rules, arriving payloads and time in; alert events out.

:class:`Engine` holds what the rules need to remember between payloads (each series' window,
EWMA baseline, when it was last seen) and every alert's :class:`~.state.AlertState`, and turns
each payload or timer tick into an :class:`Output`: the alert events to publish and the
fingerprints whose stored state changed. It does no I/O and never reads a clock: the service
(:mod:`signalfire.evaluator.service`), ``signalfire rules test`` and the benchmarks feed it the
same way, so what the rule tests show is what production does.

Every alert decision goes through the one state machine, :func:`.state.evaluate`; the kinds
differ only in the value they compute and when:

- ``threshold``/``change``: the sample's value or a window aggregate, on each sample;
- ``anomaly``: the sample's distance from its series' EWMA baseline, in standard deviations;
- ``ratio``: sum of the numerator's samples over the denominator's, in the window;
- ``event_count``: events in the window, on each event batch and on ticks (the count decays);
- ``absent``: seconds since the series (or host) was last seen, on ticks.

Windows are judged again on ticks as samples slide out of them, not only when a sample
arrives; a window left with no value (empty, a ratio over nothing) is *no data*, which a
pending alert leaves for inactive and a firing one resolves from (:meth:`Engine._no_data`).

While the shell cannot see the bus (:meth:`Engine.disconnected` to :meth:`Engine.reconnected`)
nothing is decided by the passing of time alone, since agents replay what they could not send:
no absence, no ``for`` or ``keep_firing_for`` running out, no event count decaying. After it
sees again, each such wait counts from then at the earliest; samples decide as always.

Grouped rules (``group_by: host`` or ``fleet``) pool their samples and are judged once per
batch, after all of its samples are in, so a half-read batch never fires a ratio.

A partition taken over from another replica is rebuilt in an engine of its own from the
metrics stream's history (:meth:`Engine.replaying`, then :meth:`Engine.adopt` into the running
engine): history the previous owner judged only fills windows and baselines, the rest is
judged as it would have been live.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from signalfire.evaluator.rules import DEFAULT_MAX_SERIES, FLEET, Rule
from signalfire.evaluator.state import (
    AlertState,
    Series,
    Transition,
    end,
    evaluate,
    fingerprint,
    initial_state,
    tick,
    waiting,
)
from signalfire.events import AgentStatus, AlertAction, AlertEvent, EventBatch, MetricBatch

#: |z| of an anomaly is capped here so events always carry a finite value.
MAX_DEVIATION = 1e9
#: A host's payloads arrive at least its clock's offset from the engine's clock after the time
#: written in them; the least delay seen over the current and the previous window of this
#: many seconds stands for that offset (:class:`Lag`).
LAG_WINDOW = 60.0

Points = deque[tuple[float, float]]
Key = tuple[str, tuple[tuple[str, str], ...]]
#: Which rules a payload is judged by: all of them, those judged per host (every rule but
#: ``group_by: fleet``), or only the fleet-wide ones (partitioned evaluators, see
#: :mod:`signalfire.evaluator.partitions`).
Scope = Literal["all", "host", "fleet"]


@dataclass(slots=True)
class Lookup:
    """The rules that watch each metric, each event type, and every batch (``absent`` per
    host or fleet), for one :data:`Scope`."""

    by_metric: dict[str, list[tuple[Rule, str]]] = field(default_factory=dict)
    by_event: dict[str, list[Rule]] = field(default_factory=dict)
    absent_hosts: list[Rule] = field(default_factory=list)


@dataclass(slots=True)
class Track:
    """What one rule remembers about one series (or host, or the fleet) between samples."""

    fp: str
    series: Series
    #: The window: (time, value) of samples (numerator samples for ratios, 1.0 per event).
    points: Points = field(default_factory=deque)
    #: Denominator samples of a ratio rule.
    below: Points = field(default_factory=deque)
    mean: float = 0.0
    var: float = 0.0
    n: int = 0
    last_seen: float = 0.0
    #: Silence counts towards ``absent`` only from here on (the start that loaded the track:
    #: what was published before it may not have been seen).
    watched_from: float = 0.0
    #: An anomaly baseline restored from a snapshot holds the samples up to here already.
    baseline_as_of: float = -math.inf


@dataclass(slots=True)
class Lag:
    """The least delay (engine clock at arrival minus the payload's own time) of one host's
    payloads: its clock's offset from the engine's plus the quickest delivery. A payload's
    time plus it is when the payload was taken, on the engine's clock, whatever the host's
    clock says; one held back (an agent's outbox through an outage) arrives later than that.
    The least of the current and the previous window, so a host clock set back is followed
    within two windows."""

    since: float
    current: float
    previous: float = math.inf

    def see(self, delay: float, now: float) -> float:
        """Note a payload's ``delay`` at ``now``; the least delay."""
        if now - self.since >= LAG_WINDOW:
            self.previous = self.current if now - self.since < 2 * LAG_WINDOW else math.inf
            self.since, self.current = now, delay
        elif delay < self.current:
            self.current = delay
        return min(self.current, self.previous)


@dataclass(slots=True)
class Replay:
    """How an engine rebuilding a partition from history decides (:meth:`Engine.replaying`)."""

    #: Fingerprint → the last time its loaded state was decided by the previous owner.
    judged_from: dict[str, float]
    #: Fill windows, baselines and last-seen times only; decide nothing.
    warming: bool = False


@dataclass
class Output:
    """What one engine call decided."""

    events: list[AlertEvent] = field(default_factory=list)
    #: Fingerprints whose stored state changed (written, or deleted when no longer in
    #: :attr:`Engine.states`), in decision order.
    changed: dict[str, None] = field(default_factory=dict)
    #: Samples not evaluated because their rule tracks ``max_series`` series already.
    series_dropped: dict[str, int] = field(default_factory=dict)
    #: Rules that reached their series cap in this call (reported once until the next reload).
    limit_reached: list[str] = field(default_factory=list)
    #: Samples rejected because their value is NaN or infinite.
    rejected: int = 0
    #: Judgments (of a sample, or of a window on a payload's arrival) whose condition held on a
    #: series a person resolved after the payload was taken: no new alert started (see
    #: :meth:`Engine.action`).
    before_resolve: int = 0
    #: (rule, annotation) pairs whose template failed to render.
    template_errors: list[tuple[str, str]] = field(default_factory=list)


def aggregate(name: str, points: Points) -> float | None:
    """The window aggregate ``name`` of ``points``; ``None`` when it is undefined (no points,
    or a single point for ``rate``/``increase``/``delta``)."""
    if not points:
        return None
    if name == "last":
        return points[-1][1]
    values = [v for _, v in points]
    if name == "avg":
        return math.fsum(values) / len(values)
    if name == "min":
        return min(values)
    if name == "max":
        return max(values)
    if name == "sum":
        return math.fsum(values)
    if name == "count":
        return float(len(values))
    if name in ("rate", "increase", "delta"):
        if len(values) < 2:
            return None
        if name == "delta":
            return values[-1] - values[0]
        # A counter that went down was reset: the increase is its new value.
        increase = 0.0
        previous = values[0]
        for value in values[1:]:
            increase += value - previous if value >= previous else value
            previous = value
        if name == "increase":
            return increase
        elapsed = points[-1][0] - points[0][0]
        return increase / elapsed if elapsed > 0 else None
    quantile = {"p50": 0.50, "p95": 0.95, "p99": 0.99}[name]
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]  # nearest rank


def _digest(rule: Rule) -> str:
    """What identifies a rule's definition in a baseline snapshot."""
    return hashlib.sha256(msgspec.json.encode(msgspec.to_builtins(rule.spec, enc_hook=str))).hexdigest()[:16]


def _evict(points: Points, oldest: float) -> None:
    while points and points[0][0] <= oldest:
        points.popleft()


class Engine:
    """Rules and the state of every series and alert they watch. Not thread-safe."""

    def __init__(self, rules: Iterable[Rule] = (), *, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self.rules: list[Rule] = []
        #: Every alert state by fingerprint: what the service persists.
        self.states: dict[str, AlertState] = {}
        self._by_name: dict[str, Rule] = {}
        self._scoped: dict[Scope, Lookup] = {}
        self._tracks: dict[str, dict[Key, Track]] = {}
        self._timed: set[str] = set()
        self._limited: set[str] = set()
        #: Time alone decides only while the shell sees the bus, and its waits count from
        #: `_sight_since` at the earliest: what was not seen while blind may have been sent.
        self._blind = False
        self._sight_since = -math.inf
        #: The same, per alert handed over from another evaluator replica (:meth:`load` with
        #: ``handover``): it saw what this engine did not.
        self._handed_over: dict[str, float] = {}
        #: While rebuilding a partition from history (:meth:`replaying`): ``None`` otherwise.
        self._replay: Replay | None = None
        #: Each host's :class:`Lag`, and when hosts no longer heard from were last forgotten.
        self._lags: dict[str, Lag] = {}
        self._lags_swept = -math.inf
        #: When the payload being judged was taken, on this engine's clock (see :class:`Lag`;
        #: ``now`` for ticks): a series resolved by hand after it starts no new alert from it.
        self._taken = math.inf
        self.set_rules(list(rules), 0.0)

    # Rules and stored state --------------------------------------------------------------

    def set_rules(self, rules: list[Rule], now: float) -> Output:
        """Run ``rules`` from now on. Series and alerts of rules that stay continue (windows
        restart when a rule's definition changed); firing alerts of removed rules resolve."""
        out = Output()
        previous = self._by_name
        self.rules = list(rules)
        self._by_name = {rule.name: rule for rule in rules}
        self._scoped = {"all": Lookup(), "host": Lookup(), "fleet": Lookup()}
        for rule in rules:
            for scope in ("all", "fleet" if rule.group_by == FLEET else "host"):
                lookup = self._scoped[scope]
                by_metric = lookup.by_metric
                if rule.kind == "threshold" and not rule.window and rule.group_by == "series":
                    # The most common rule, on the hot path: judged inline in `metrics`.
                    by_metric.setdefault(rule.metric, []).append((rule, "last"))
                elif rule.kind in ("threshold", "change", "anomaly"):
                    by_metric.setdefault(rule.metric, []).append((rule, "value"))
                elif rule.kind == "ratio":
                    assert rule.numerator is not None and rule.denominator is not None
                    by_metric.setdefault(rule.numerator.metric, []).append((rule, "numerator"))
                    by_metric.setdefault(rule.denominator.metric, []).append((rule, "denominator"))
                elif rule.kind == "event_count":
                    lookup.by_event.setdefault(rule.event, []).append(rule)
                elif rule.metric:  # absent, per series of a metric
                    by_metric.setdefault(rule.metric, []).append((rule, "seen"))
                else:  # absent, per host or fleet-wide: any batch counts
                    lookup.absent_hosts.append(rule)
        for name in list(self._tracks):
            old, new = previous.get(name), self._by_name.get(name)
            if new is None or old is None or new.spec != old.spec:
                del self._tracks[name]
        for rule in rules:
            self._tracks.setdefault(rule.name, {})
        self._limited.clear()
        for fp, state in list(self.states.items()):
            if state.rule in self._by_name:
                continue
            gone = previous.get(state.rule)
            if gone is not None and state.status == "firing":
                resolved, transitions = end(state, now)
                self._emit(gone, resolved, transitions, out)
            del self.states[fp]
            self._timed.discard(fp)
            self._handed_over.pop(fp, None)
            out.changed[fp] = None
        return out

    def load(
        self,
        states: Iterable[AlertState],
        now: float,
        last_seen: Mapping[str, float] | None = None,
        *,
        handover: bool = False,
    ) -> None:
        """Adopt states read back from storage (at start). Series an ``absent`` rule watched
        are watched again: last seen at ``last_seen[fingerprint]`` when the shell knows it
        (from the stream's last message), else at ``now``. Either way their silence fires
        only once it has lasted the rule's ``for`` after ``now`` (what was published while
        no evaluator ran may be missing from what the shell knows), and then reports the
        whole silence.

        ``handover``: the states come from another replica that judged them until now (a
        partition moved). They are treated as just :meth:`reconnected` as of ``now``: a
        pending alert keeps its start (a sample that still holds fires it once ``for`` is
        over) but fires by time alone only ``for`` after ``now``; a clearing one resolves by
        time alone only ``keep_firing_for`` after ``now``."""
        seen = last_seen or {}
        for state in states:
            rule = self._by_name.get(state.rule)
            if rule is None:
                continue
            self.states[state.fingerprint] = state
            if handover:
                self._handed_over[state.fingerprint] = now
            if waiting(state):
                self._timed.add(state.fingerprint)
            if rule.kind == "absent" and state.retired:
                continue
            key: Key = (state.host, tuple(sorted(state.labels.items())))
            series = Series(host=state.host, labels=state.labels, context=state.context)
            self._tracks[rule.name][key] = Track(
                fp=state.fingerprint,
                series=series,
                last_seen=min(now, seen.get(state.fingerprint, now)),
                watched_from=now,
            )

    def forget(self, host: Callable[[str], bool], fleet: bool) -> dict[str, AlertState]:
        """Drop, without deciding anything, the alerts and series of hosts for which
        ``host(name)`` is true (rules judged per host), and those of the ``group_by: fleet``
        rules when ``fleet``: another replica judges them from now on. Returns the alert
        states dropped, by fingerprint."""
        for rule in self.rules:
            tracks = self._tracks[rule.name]
            if rule.group_by == FLEET:
                if fleet:
                    tracks.clear()
                continue
            for key in [k for k, t in tracks.items() if host(t.series.host)]:
                del tracks[key]
        for name in [name for name in self._lags if host(name)]:
            del self._lags[name]
        dropped: dict[str, AlertState] = {}
        for fp, state in list(self.states.items()):
            owner = self._by_name.get(state.rule)
            if owner is None:
                continue
            if fleet if owner.group_by == FLEET else host(state.host):
                del self.states[fp]
                self._timed.discard(fp)
                self._handed_over.pop(fp, None)
                dropped[fp] = state
        return dropped

    def replaying(self, judged_from: Mapping[str, float]) -> Replay:
        """Turn this engine into one that rebuilds a partition from history (the shell feeds
        it the stream's payloads in order, each at the time the stream stored it): while the
        returned :class:`Replay`'s ``warming`` is set, payloads only fill windows, baselines
        and last-seen times and decide nothing (the previous owner judged them); otherwise
        they are judged, except for an alert whose loaded state (``judged_from``, by
        fingerprint) was last decided at or after the payload's time: the previous owner saw
        that payload already, and judging it again on the newer state could repeat a
        transition under another alert id. Time alone decides nothing here (no :meth:`tick`)."""
        self._replay = Replay(judged_from=dict(judged_from))
        return self._replay

    def replayed(self) -> None:
        """The history is read (see :meth:`replaying`): decide as always from now on."""
        self._replay = None

    def adopt(self, other: Engine, now: float) -> None:
        """Take over ``other``'s series and alerts (a partition rebuilt in an engine of its
        own, see :meth:`replaying`) as of ``now``: from now on this engine judges them.
        ``other`` must hold nothing this engine holds; the series of a rule reloaded
        meanwhile start afresh. A series an ``absent`` rule watches counts its silence from
        ``now`` at the earliest, as after :meth:`load`: a history cut short by its bounds may
        lack the series' last samples."""
        for name, tracks in other._tracks.items():
            rule, theirs = self._by_name.get(name), other._by_name.get(name)
            mine = self._tracks.get(name)
            if mine is None or rule is None or theirs is None or rule.spec != theirs.spec:
                continue
            if rule.kind == "absent":
                for track in tracks.values():
                    track.watched_from = max(track.watched_from, now)
            mine.update(tracks)
        for fp, state in other.states.items():
            if state.rule in self._by_name:
                self.states[fp] = state
        self._timed |= {fp for fp in other._timed if fp in self.states}
        self._lags.update(other._lags)
        self._handed_over.update({fp: t for fp, t in other._handed_over.items() if fp in self.states})

    def _decides(self, fp: str, now: float) -> bool:
        """Whether a payload at ``now`` may change ``fp``'s alert (always, outside a replay)."""
        replay = self._replay
        if replay is None:
            return True
        if replay.warming:
            return False
        return now > replay.judged_from.get(fp, -math.inf)

    def baselines(self, host: Callable[[str], bool]) -> dict[str, Any]:
        """The anomaly baselines of the hosts for which ``host(name)`` is true, by rule:
        ``{rule: {"spec": <digest of its definition>, "series": [[host, labels, context, mean,
        var, n], …]}}`` (see :meth:`restore_baselines`)."""
        snapshot: dict[str, Any] = {}
        for rule in self.rules:
            if rule.kind != "anomaly" or rule.group_by == FLEET:
                continue
            series = [
                [t.series.host, t.series.labels, t.series.context, t.mean, t.var, t.n]
                for t in self._tracks[rule.name].values()
                if t.n and host(t.series.host)
            ]
            if series:
                snapshot[rule.name] = {"spec": _digest(rule), "series": series}
        return snapshot

    def restore_baselines(self, snapshot: Mapping[str, Any], as_of: float) -> int:
        """Take the anomaly baselines of a :meth:`baselines` snapshot taken at ``as_of`` (for
        the rules still defined the same way); samples up to ``as_of`` leave them as they are.
        Returns the series restored."""
        restored = 0
        for name, entry in snapshot.items():
            rule = self._by_name.get(name)
            if rule is None or rule.kind != "anomaly" or entry.get("spec") != _digest(rule):
                continue
            tracks = self._tracks[name]
            for host, labels, context, mean, var, n in entry.get("series", []):
                key: Key = (host, tuple(sorted(labels.items())))
                track = tracks.get(key)
                if track is None:
                    if len(tracks) >= (rule.max_series or self.max_series):
                        break
                    series = Series(host=host, labels=dict(labels), context=dict(context))
                    track = tracks[key] = Track(fp=fingerprint(name, host, series.labels), series=series)
                track.mean, track.var, track.n = float(mean), float(var), int(n)
                track.baseline_as_of = as_of
                restored += 1
        return restored

    def series_count(self, rule: str) -> int:
        """Series (or hosts, for grouped rules) ``rule`` tracks."""
        return len(self._tracks.get(rule, {}))

    # Payloads ----------------------------------------------------------------------------

    def metrics(self, batch: MetricBatch, now: float, scope: Scope = "all") -> Output:
        """Evaluate every rule (of ``scope``) that watches a sample of ``batch`` (or its host)
        at ``now``."""
        out = Output()
        host = batch.host
        context = batch.labels
        self._taken = self._taken_at(host, batch.time, now)
        grouped: dict[int, tuple[Rule, Track]] = {}
        lookup = self._scoped[scope]
        by_metric = lookup.by_metric
        all_tracks = self._tracks
        for sample in batch.samples:
            value = sample.value
            if not math.isfinite(value):
                out.rejected += 1
                continue
            entries = by_metric.get(sample.name)
            if entries is None:
                continue
            own = sample.labels
            # The series' key for per-series rules, and the labels matchers see: built once
            # per sample, the labels only when a rule has matchers.
            key: Key = (host, tuple(sorted(own.items())) if own else ())
            labels: dict[str, str] | None = None
            for rule, role in entries:
                if rule.where:
                    if labels is None:
                        labels = {**context, **own, "host": host}
                    if not rule.matches(labels):
                        continue
                if role == "last":  # as `_value` does for a last-value threshold per series
                    track = all_tracks[rule.name].get(key)
                    if track is None:
                        if not rule.condition.holds(value):
                            continue  # no history needed until the condition first holds
                        track = self._track(rule, host, own, context, out, key=key)
                        if track is None:
                            continue
                    self._judge(rule, track, value, now, out)
                elif role == "value":
                    self._value(
                        rule, host, own, key, context=context, value=value, now=now, out=out, grouped=grouped
                    )
                elif role == "seen":
                    self._seen(rule, host, own, context=context, now=now, out=out)
                else:
                    selector = rule.numerator if role == "numerator" else rule.denominator
                    assert selector is not None
                    if selector.matchers:
                        if labels is None:
                            labels = {**context, **own, "host": host}
                        if not selector.matches(labels):
                            continue
                    track = self._track(
                        rule, host, own, context, out, key=key if rule.group_by == "series" else None
                    )
                    if track is None:
                        continue
                    (track.points if role == "numerator" else track.below).append((now, value))
                    grouped[id(track)] = (rule, track)
        if lookup.absent_hosts:
            labels = {**context, "host": host}
            for rule in lookup.absent_hosts:
                if not rule.where or rule.matches(labels):
                    self._seen(rule, host, {}, context=context, now=now, out=out)
        for rule, track in grouped.values():
            self._judge_window(rule, track, now, out)
        return out

    def events(self, batch: EventBatch, now: float, scope: Scope = "all") -> Output:
        """Count ``batch``'s events for the ``event_count`` rules (of ``scope``) that watch them."""
        out = Output()
        self._taken = self._taken_at(batch.host, batch.time, now)
        grouped: dict[int, tuple[Rule, Track]] = {}
        by_event = self._scoped[scope].by_event
        for event in batch.events:
            rules = by_event.get(event.type)
            if not rules:
                continue
            labels = {**batch.labels, **event.labels, "host": batch.host}
            for rule in rules:
                if rule.where and not rule.matches(labels):
                    continue
                track = self._track(rule, batch.host, event.labels, batch.labels, out)
                if track is not None:
                    track.points.append((now, 1.0))
                    grouped[id(track)] = (rule, track)
        for rule, track in grouped.values():
            self._judge_window(rule, track, now, out)
        return out

    def agent(self, status: AgentStatus, now: float, scope: Scope = "all") -> Output:
        """``online`` counts as a sign of life for per-host ``absent`` rules; a clean
        ``offline`` retires the host from every ``absent`` rule (of ``scope``): no alert for
        its silence (one already firing resolves) until it reports again."""
        out = Output()
        host = status.host
        if status.status == "online":
            labels = {**status.labels, "host": host}
            for rule in self._scoped[scope].absent_hosts:
                if not rule.where or rule.matches(labels):
                    self._seen(rule, host, {}, context=status.labels, now=now, out=out)
            return out
        for rule in self.rules:
            if rule.kind != "absent" or (scope != "all" and (rule.group_by == FLEET) != (scope == "fleet")):
                continue
            tracks = self._tracks[rule.name]
            for key, track in list(tracks.items()):
                if track.series.host != host:
                    continue
                del tracks[key]
                state = self.states.get(track.fp)
                if state is None:
                    continue
                transitions: list[Transition] = []
                new = state
                if state.status == "firing":
                    new, transitions = end(state, now)
                new = msgspec.structs.replace(new, status="inactive", active_since=None, retired=True)
                self._apply(rule, state, new, transitions, out)
        return out

    def action(self, action: AlertAction, now: float) -> Output:
        """Apply a person's ``AlertAction`` to the current instance of an alert (actions on an
        older instance, and ``note``, change nothing here).

        - ``ack``/``unack``: recorded; later events of the instance carry
          ``acknowledged_by``/``acknowledged_at`` annotations. Of several, the newest by its
          ``time`` stands, in whatever order they are applied (the shell reads actions back
          from the stream after live ones: a start, a takeover, a reconnect).
        - ``resolve``: a firing instance resolves at once (whatever ``keep_firing_for`` or
          flap damping would hold), its ``resolved`` event annotated ``resolved_by``. The
          series starts over from inactive: if the condition still holds, the next sample
          starts a new instance with a new id, after ``for`` and ``cooldown`` as for any other
          resolve; but not a sample taken before the resolve that arrives after it (from an
          agent's outbox after an outage, see :class:`Lag`). An ``absent`` series is retired
          instead (as by a clean ``offline``): no alert for its silence until it reports again.
        """
        out = Output()
        if action.action not in ("ack", "unack", "resolve"):
            return out
        fp = action.fingerprint or action.alert_id.rpartition(":")[0]
        state = self.states.get(fp)
        if state is None or state.alert_id != action.alert_id:
            return out
        if action.action == "resolve":
            rule = self._by_name.get(state.rule)
            if rule is None or state.status != "firing":
                return out
            resolved, transitions = end(state, now)
            resolved = msgspec.structs.replace(resolved, resolved_by_hand_at=now)
            if rule.kind == "absent":
                # Silence would fire again on the next tick: retire the series instead, as a
                # clean shutdown does, until it reports again.
                tracks = self._tracks[rule.name]
                for key in [k for k, t in tracks.items() if t.fp == fp]:
                    del tracks[key]
                resolved = msgspec.structs.replace(resolved, retired=True)
            self._apply(rule, state, resolved, transitions, out)
            for event in out.events:
                event.annotations["resolved_by"] = action.actor
            return out
        if state.ack_changed_at is not None and action.time < state.ack_changed_at:
            return out  # an older ack or unack than the one applied: that one stands
        if action.action == "ack":
            new = msgspec.structs.replace(
                state, acked_by=action.actor, acked_at=action.time, ack_changed_at=action.time
            )
        else:
            new = msgspec.structs.replace(state, acked_by=None, acked_at=None, ack_changed_at=action.time)
        if new == state:
            return out  # applied already
        self.states[fp] = new
        out.changed[fp] = None
        return out

    # Sight of the bus ---------------------------------------------------------------------

    @property
    def blind(self) -> bool:
        """Whether decisions by time alone are suspended (between :meth:`disconnected` and
        :meth:`reconnected`)."""
        return self._blind

    def disconnected(self) -> None:
        """The shell no longer sees what is published (disconnected from the bus, or catching
        up after reconnecting). Agents buffer and replay what they could not send, so what the
        engine has not seen may well have happened: until :meth:`reconnected`, :meth:`tick`
        decides nothing from the passing of time alone. ``absent`` rules neither fire nor
        count towards firing, a pending alert does not fire when its ``for`` runs out, a
        firing one does not resolve when its ``keep_firing_for`` does, and event counts do
        not decay. Payloads, actions and reloads are handled as always."""
        self._blind = True

    def reconnected(self, now: float) -> None:
        """The shell sees everything published again as of ``now``. Each wait that
        :meth:`tick` judges then counts from the later of its own start and ``now``: a series
        fires for absence only if still silent for the rule's ``for`` after ``now`` (its
        ``value`` is still the seconds since it was last seen), a pending alert fires by time
        alone only ``for`` after ``now`` (a sample that arrives and still holds fires it as
        usual), a clearing alert resolves only ``keep_firing_for`` after ``now``."""
        self._blind = False
        self._sight_since = max(self._sight_since, now)

    def _waits_for_sight(self, rule: Rule, state: AlertState, now: float) -> bool:
        """Whether a decision by time alone on ``state`` must wait (see :meth:`reconnected`)."""
        if self._blind:
            return True
        if state.status == "pending":
            wait = rule.silence if rule.kind == "absent" else rule.for_
        else:
            wait = rule.keep_firing_for
        since = self._sight_since
        handed = self._handed_over.get(state.fingerprint)
        if handed is not None:
            if now - handed >= wait:
                del self._handed_over[state.fingerprint]  # served its purpose
            since = max(since, handed)
        return now - since < wait

    def tick(self, now: float) -> Output:
        """Advance time to ``now``: ``for`` and cooldown expiry, ``keep_firing_for``, flap
        holds, absence, and event counts sliding out of their window (none of it while
        :attr:`blind`, see :meth:`disconnected`)."""
        out = Output()
        self._taken = now
        if now - self._lags_swept >= LAG_WINDOW:
            self._lags_swept = now
            self._lags = {host: lag for host, lag in self._lags.items() if now - lag.since < 2 * LAG_WINDOW}
        for fp in list(self._timed):
            state = self.states.get(fp)
            rule = self._by_name.get(state.rule) if state is not None else None
            if state is None or rule is None:
                self._timed.discard(fp)
                continue
            if self._waits_for_sight(rule, state, now):
                continue
            new, transitions = tick(rule, state, now)
            if new is not state:
                self._apply(rule, state, new, transitions, out)
        for rule in self.rules:
            if rule.kind == "absent":
                if self._blind:
                    continue
                for track in self._tracks[rule.name].values():
                    if now - max(track.last_seen, track.watched_from, self._sight_since) < rule.silence:
                        continue
                    silent = now - track.last_seen
                    state = self.states.get(track.fp)
                    if state is None or state.status == "inactive":
                        new, transitions = evaluate(
                            rule, state, silent, now, track.series, holds=True, clears=False
                        )
                        self._apply(rule, state, new, transitions, out)
            elif rule.kind == "event_count" and not self._blind:
                tracks = self._tracks[rule.name]
                for key, track in list(tracks.items()):
                    _evict(track.points, now - rule.window)
                    state = self.states.get(track.fp)
                    if not track.points and (state is None or state.status == "inactive"):
                        del tracks[key]
                        continue
                    self._judge(rule, track, float(len(track.points)), now, out)
            elif rule.window and rule.kind in ("threshold", "change", "ratio") and not self._blind:
                self._slide(rule, now, out)
        return out

    def _slide(self, rule: Rule, now: float, out: Output) -> None:
        """Judge ``rule``'s windows again as samples slide out of them: a window judged only
        when a sample arrives would keep an alert firing forever once its samples stop. Only
        windows that lost a sample are judged (nothing else changed); an emptied window is
        no data (see :meth:`_no_data`), and its series is forgotten once no alert remains."""
        oldest = now - rule.window
        tracks = self._tracks[rule.name]
        for key, track in list(tracks.items()):
            points, below = track.points, track.below
            if (points and points[0][0] <= oldest) or (below and below[0][0] <= oldest):
                self._judge_window(rule, track, now, out)
            if not track.points and not track.below:
                state = self.states.get(track.fp)
                if state is None or state.status == "inactive":
                    del tracks[key]

    # Per kind ----------------------------------------------------------------------------

    def _value(
        self,
        rule: Rule,
        host: str,
        labels: Mapping[str, str],
        series_key: Key,
        *,
        context: Mapping[str, str],
        value: float,
        now: float,
        out: Output,
        grouped: dict[int, tuple[Rule, Track]],
    ) -> None:
        """One sample for a threshold, change or anomaly rule (``series_key``: the sample's
        per-series key, see :meth:`_key`)."""
        key = series_key if rule.group_by == "series" else self._key(rule, host, labels)
        if rule.kind == "anomaly":
            track = self._track(rule, host, labels, context, out, key=key)
            if track is None:
                return
            if track.n >= rule.warmup:
                spread = math.sqrt(track.var)
                deviation = value - track.mean
                if spread > 1e-12 * max(1.0, abs(track.mean)):
                    z = deviation / spread
                else:  # a flat baseline: any change is infinitely unusual
                    z = math.copysign(MAX_DEVIATION, deviation) if deviation else 0.0
                self._judge(rule, track, max(-MAX_DEVIATION, min(MAX_DEVIATION, z)), now, out)
            if now <= track.baseline_as_of:
                return  # in the restored snapshot already
            # West's exponentially weighted mean and variance.
            if track.n == 0:
                track.mean = value
            else:
                diff = value - track.mean
                step = rule.alpha * diff
                track.mean += step
                track.var = (1 - rule.alpha) * (track.var + diff * step)
            track.n += 1
            return
        if not rule.window:  # `last`: no history needed until the condition first holds
            existing = self._tracks[rule.name].get(key)
            if existing is None:
                if not rule.condition.holds(value):
                    return
                existing = self._track(rule, host, labels, context, out, key=key)
                if existing is None:
                    return
            self._judge(rule, existing, value, now, out)
            return
        track = self._track(rule, host, labels, context, out, key=key)
        if track is None:
            return
        track.points.append((now, value))
        if rule.group_by != "series":
            grouped[id(track)] = (rule, track)
            return
        _evict(track.points, now - rule.window)
        result = aggregate(rule.aggregate, track.points)
        if result is None:
            self._no_data(rule, track, now, out)
        else:
            self._judge(rule, track, result, now, out)

    def _seen(
        self,
        rule: Rule,
        host: str,
        labels: Mapping[str, str],
        *,
        context: Mapping[str, str],
        now: float,
        out: Output,
    ) -> None:
        """A sign of life for an ``absent`` rule."""
        track = self._track(rule, host, labels, context, out)
        if track is None:
            return
        silent = now - track.last_seen
        track.last_seen = max(track.last_seen, now) if self._replay is not None else now
        if self._replay is not None and not self._decides(track.fp, now):
            return
        state = self.states.get(track.fp)
        if state is None:
            # Remember the series in storage, so a restarted evaluator keeps watching it.
            self._apply(rule, None, initial_state(rule, track.series), [], out)
            return
        if state.retired or state.status != "inactive":
            new, transitions = evaluate(rule, state, silent, now, track.series, holds=False, clears=True)
            if new.retired:
                new = msgspec.structs.replace(new, retired=False)
            self._apply(rule, state, new, transitions, out)

    def _judge_window(self, rule: Rule, track: Track, now: float, out: Output) -> None:
        """Judge a pooled window once its batch is fully read."""
        oldest = now - rule.window
        _evict(track.points, oldest)
        value: float | None
        if rule.kind == "ratio":
            _evict(track.below, oldest)
            total = math.fsum(v for _, v in track.below)
            value = math.fsum(v for _, v in track.points) / total if total > 0 else None
        elif rule.kind == "event_count":
            value = float(len(track.points))
        else:
            value = aggregate(rule.aggregate, track.points)
        if value is None:
            self._no_data(rule, track, now, out)
        else:
            self._judge(rule, track, value, now, out)

    def _no_data(self, rule: Rule, track: Track, now: float, out: Output) -> None:
        """The window has no value (no samples, a ratio's denominator sums to 0, one sample
        for ``rate``): nothing says the condition holds, so a pending alert goes back to
        inactive and a firing one resolves as if ``resolve`` held (after ``keep_firing_for``,
        subject to flap damping), its events carrying the last value it had."""
        if self._replay is not None and not self._decides(track.fp, now):
            return
        state = self.states.get(track.fp)
        if state is None or state.status == "inactive" or state.value is None:
            return
        if state.status == "firing" and state.clearing_since is not None:
            return  # already clearing: the tick resolves it when keep_firing_for is over
        new, transitions = evaluate(rule, state, state.value, now, track.series, holds=False, clears=True)
        self._apply(rule, state, new, transitions, out)

    def _judge(self, rule: Rule, track: Track, value: float, now: float, out: Output) -> None:
        if self._replay is not None and not self._decides(track.fp, now):
            return
        state = self.states.get(track.fp)
        holds = rule.condition.holds(value)
        if state is None or state.status == "inactive":
            if not holds:
                return
            handled = state.resolved_by_hand_at if state is not None else None
            if handled is not None and self._taken < handled:
                # Taken before a person resolved the alert, arriving after (held in an agent's
                # outbox through an outage): what it shows was handled.
                out.before_resolve += 1
                return
        new, transitions = evaluate(
            rule, state, value, now, track.series, holds=holds, clears=rule.resolve.holds(value)
        )
        self._apply(rule, state, new, transitions, out)

    def unplaced(self, since: float) -> list[str]:
        """Hosts with an alert a person resolved by hand at ``since`` or later (newest first)
        whose delay this engine has not measured (see :class:`Lag`): a batch of theirs taken
        before the resolve would count as taken on arrival. The shell measures it elsewhere
        (:meth:`note_delay`) after a start or a takeover."""
        resolved: dict[str, float] = {}
        for state in self.states.values():
            handled = state.resolved_by_hand_at
            rule = self._by_name.get(state.rule)
            if handled is None or handled < since or state.status != "inactive" or rule is None:
                continue
            if rule.group_by != FLEET and state.host not in self._lags:
                resolved[state.host] = max(handled, resolved.get(state.host, handled))
        return sorted(resolved, key=lambda host: -resolved[host])

    def note_delay(self, host: str, delay: float, now: float) -> float:
        """Note a ``delay`` of ``host``'s payloads at ``now`` (a payload's, or one measured
        elsewhere: its last batch on the stream, stored at less its own time); the least
        delay known (see :class:`Lag`)."""
        lag = self._lags.get(host)
        if lag is None:
            self._lags[host] = Lag(since=now, current=delay)
            return delay
        return lag.see(delay, now)

    def _taken_at(self, host: str, stamped: float, now: float) -> float:
        """When ``host``'s payload stamped ``stamped`` (by the host's clock) and arriving at
        ``now`` was taken, on this engine's clock: ``now`` less how much later it arrived than
        the host's quickest (see :class:`Lag`); ``now`` for a host not seen before."""
        return min(now, stamped + self.note_delay(host, now - stamped, now))

    # Series ------------------------------------------------------------------------------

    @staticmethod
    def _key(rule: Rule, host: str, labels: Mapping[str, str]) -> Key:
        if rule.group_by == "series":
            return (host, tuple(sorted(labels.items())) if labels else ())
        if rule.group_by == "host":
            return (host, ())
        return (FLEET, ())

    def _track(
        self,
        rule: Rule,
        host: str,
        labels: Mapping[str, str],
        context: Mapping[str, str],
        out: Output,
        *,
        key: Key | None = None,
    ) -> Track | None:
        """The track of the series a sample belongs to (``key``: its :meth:`_key`, when the
        caller has it), created on first sight unless the rule already tracks its
        ``max_series``."""
        if key is None:
            key = self._key(rule, host, labels)
        tracks = self._tracks[rule.name]
        track = tracks.get(key)
        if track is not None:
            if rule.group_by != "fleet" and context != track.series.context:
                track.series = msgspec.structs.replace(track.series, context=dict(context))
            return track
        limit = rule.max_series or self.max_series
        if len(tracks) >= limit:
            out.series_dropped[rule.name] = out.series_dropped.get(rule.name, 0) + 1
            if rule.name not in self._limited:
                self._limited.add(rule.name)
                out.limit_reached.append(rule.name)
            return None
        series_host, series_labels = key[0], dict(key[1])
        series = Series(
            host=series_host, labels=series_labels, context={} if rule.group_by == "fleet" else dict(context)
        )
        track = Track(fp=fingerprint(rule.name, series_host, series_labels), series=series)
        tracks[key] = track
        return track

    # Decisions ---------------------------------------------------------------------------

    def _apply(
        self,
        rule: Rule,
        old: AlertState | None,
        new: AlertState,
        transitions: list[Transition],
        out: Output,
    ) -> None:
        fp = new.fingerprint
        if waiting(new):
            self._timed.add(fp)
        else:
            self._timed.discard(fp)
        if new.status == "inactive" and new.seq == 0 and rule.kind != "absent":
            # Never announced: nothing to remember (only forget what was stored).
            if old is not None:
                del self.states[fp]
                self._handed_over.pop(fp, None)
                out.changed[fp] = None
            return
        self._emit(rule, new, transitions, out)
        if (
            transitions
            or old is None
            or old.status != new.status
            or old.clearing_since != new.clearing_since
            or old.flapping != new.flapping
            or old.retired != new.retired
        ):
            out.changed[fp] = None

    def _emit(self, rule: Rule, state: AlertState, transitions: list[Transition], out: Output) -> None:
        self.states[state.fingerprint] = state
        for transition in transitions:
            out.events.append(self._event(rule, state, transition, out))
            out.changed[state.fingerprint] = None

    def _event(self, rule: Rule, state: AlertState, transition: Transition, out: Output) -> AlertEvent:
        labels = {**state.context, **state.labels, **rule.labels}
        if transition.flapping:
            labels["flapping"] = "true"
        context: dict[str, Any] = {
            "value": transition.value,
            "threshold": rule.condition.threshold,
            "host": state.host,
            "labels": labels,
            "rule": rule.name,
        }
        annotations, failed = rule.render_annotations(context)
        out.template_errors.extend((rule.name, key) for key in failed)
        if state.acked_by is not None and state.acked_at is not None:
            annotations["acknowledged_by"] = state.acked_by
            annotations["acknowledged_at"] = f"{state.acked_at:.3f}"
        return AlertEvent(
            id=transition.alert_id,
            fingerprint=transition.fingerprint,
            rule=rule.name,
            status=transition.status,
            severity=rule.severity,
            host=state.host,
            starts_at=transition.starts_at,
            time=transition.time,
            labels=labels,
            annotations=annotations,
            value=transition.value,
            threshold=rule.condition.threshold,
            ends_at=transition.ends_at,
            seq=transition.seq,
        )

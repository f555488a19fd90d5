"""The per-series state machine: inactive → pending → firing → resolved."""

from __future__ import annotations

import re

from signalfire.evaluator.rules import Rule
from signalfire.evaluator.state import AlertState, Series, Transition, fingerprint, step, tick
from tests.support.rules import parsed_rules

WEB1 = Series(host="web-1", labels={}, context={"env": "prod"})


def rule(
    condition: str = "> 80", for_: str = "0s", resolve: str | None = None, name: str = "HighCPU"
) -> Rule:
    extra = f"\n    resolve: '{resolve}'" if resolve else ""
    text = f"""rules:
  - name: {name}
    metric: cpu.usage_percent
    condition: '{condition}'
    for: {for_}{extra}
    severity: high
"""
    return parsed_rules(text)[0]


def feed(r: Rule, points: list[tuple[float, float]], state: AlertState | None = None, series: Series = WEB1):
    """Step through (time, value) points; returns the final state and every transition."""
    events: list[Transition] = []
    for now, value in points:
        state, out = step(r, state, value, now, series)
        events.extend(out)
    assert state is not None
    return state, events


def test_below_the_threshold_nothing_happens():
    state, events = feed(rule(), [(0, 10), (1, 80), (2, 79.9)])
    assert events == []
    assert state.status == "inactive"


def test_for_zero_fires_on_the_first_matching_sample():
    state, events = feed(rule(), [(100, 10), (101, 99)])
    assert [e.status for e in events] == ["firing"]
    assert state.status == "firing"
    fired = events[0]
    assert fired.time == fired.starts_at == 101
    assert fired.value == 99
    assert fired.seq == 1
    assert fired.alert_id == f"{state.fingerprint}:101000"


def test_staying_high_fires_once_and_dropping_resolves_once_with_the_same_id():
    state, events = feed(rule(), [(0, 99), (1, 98), (2, 97), (3, 10), (4, 5)])
    assert [e.status for e in events] == ["firing", "resolved"]
    firing, resolved = events
    assert resolved.alert_id == firing.alert_id
    assert resolved.starts_at == 0
    assert resolved.ends_at == resolved.time == 3
    assert resolved.value == 10
    assert resolved.seq == 2
    assert state.status == "inactive"


def test_a_new_instance_gets_a_new_id_and_seq_keeps_counting():
    _, events = feed(rule(), [(0, 99), (1, 10), (2, 99), (3, 10)])
    assert [e.status for e in events] == ["firing", "resolved", "firing", "resolved"]
    assert events[0].alert_id != events[2].alert_id
    assert [e.seq for e in events] == [1, 2, 3, 4]


def test_refiring_within_the_same_millisecond_still_gets_its_own_id():
    _, events = feed(rule(), [(5, 99), (5, 10), (5, 99)])
    assert events[0].alert_id != events[2].alert_id


def test_for_keeps_the_alert_pending_until_it_has_elapsed():
    r = rule(for_="60s")
    state, events = feed(r, [(0, 90), (30, 91), (59.9, 92)])
    assert events == []
    assert state.status == "pending"
    assert state.active_since == 0
    state, events = feed(r, [(60, 93)], state)
    assert [e.status for e in events] == ["firing"]
    assert events[0].value == 93
    assert events[0].starts_at == 60


def test_pending_returns_to_inactive_silently_and_the_timer_restarts():
    r = rule(for_="60s")
    state, events = feed(r, [(0, 90), (50, 50), (55, 90), (100, 90)])
    assert events == []
    assert state.status == "pending"
    assert state.active_since == 55
    state, events = feed(r, [(115, 90)], state)
    assert [e.status for e in events] == ["firing"]


def test_tick_fires_a_due_pending_alert_without_a_new_sample():
    r = rule(for_="60s")
    state, _ = feed(r, [(0, 90)])
    state, events = tick(r, state, 59)
    assert events == []
    state, events = tick(r, state, 60)
    assert [e.status for e in events] == ["firing"]
    assert events[0].value == 90
    assert state.status == "firing"
    # a firing alert is not fired again by later ticks
    assert tick(r, state, 1000) == (state, [])


def test_tick_leaves_inactive_states_alone():
    r = rule(for_="60s")
    state, _ = feed(r, [(0, 10)])
    assert tick(r, state, 1000) == (state, [])


def test_hysteresis_keeps_firing_between_resolve_and_condition():
    r = rule(resolve="< 75")
    state, events = feed(r, [(0, 90), (1, 78), (2, 75), (3, 80)])
    assert [e.status for e in events] == ["firing"]
    assert state.status == "firing"
    state, events = feed(r, [(4, 74.9)], state)
    assert [e.status for e in events] == ["resolved"]
    # back in the band after resolving is not a new alert either: 78 is not > 80
    state, events = feed(r, [(5, 78)], state)
    assert events == []
    assert state.status == "inactive"


def test_other_operators():
    _, events = feed(rule("== 0"), [(0, 1), (1, 0), (2, 0), (3, 1)])
    assert [e.status for e in events] == ["firing", "resolved"]
    _, events = feed(rule("< 10", resolve=">= 20"), [(0, 30), (1, 5), (2, 15), (3, 25)])
    assert [(e.status, e.time) for e in events] == [("firing", 1), ("resolved", 3)]


def test_the_state_remembers_the_series():
    series = Series(host="db-1", labels={"mount": "/var"}, context={"env": "prod"})
    state, _ = feed(rule(), [(0, 99)], series=series)
    assert (state.host, state.labels, state.context) == ("db-1", {"mount": "/var"}, {"env": "prod"})
    assert state.rule == "HighCPU"
    assert state.last_seen == 0
    assert state.value == 99


def test_fingerprint_is_stable_and_identifies_rule_host_and_series_labels():
    fp = fingerprint("HighCPU", "web-1", {"mount": "/", "a": "b"})
    assert re.fullmatch(r"[0-9a-f]{20}", fp)
    assert fp == fingerprint("HighCPU", "web-1", {"a": "b", "mount": "/"})
    assert fp != fingerprint("HighCPU", "web-2", {"mount": "/", "a": "b"})
    assert fp != fingerprint("HighMem", "web-1", {"mount": "/", "a": "b"})
    assert fp != fingerprint("HighCPU", "web-1", {"mount": "/var", "a": "b"})
    # batch labels (context) are not part of the identity
    a, _ = feed(rule(), [(0, 99)], series=Series(host="web-1", context={"env": "prod"}))
    b, _ = feed(rule(), [(0, 99)], series=Series(host="web-1", context={"env": "staging"}))
    assert a.fingerprint == b.fingerprint

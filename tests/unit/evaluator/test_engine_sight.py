"""While the evaluator cannot see the bus, time alone decides nothing: agents buffer and replay
what they could not send, so a silence it could not have seen is not absence, and a condition
it last saw holding may have cleared."""

from __future__ import annotations

from pathlib import Path

from signalfire.evaluator.engine import Engine
from signalfire.evaluator.rules import Rule, load_rules
from signalfire.events import AlertEvent, Event, EventBatch, MetricBatch, Sample
from tests.support.rules import parsed_rules

REPO = Path(__file__).resolve().parents[3]

PER_SERIES = """\
rules:
  - {name: NoCheck, kind: absent, metric: check.up, for: 30s, severity: low}
"""


def shipped_host_down() -> list[Rule]:
    """The shipped HostDown rule, as `rules/default.yaml` has it (`for: 30s`)."""
    return [rule for rule in load_rules([str(REPO / "rules" / "default.yaml")]) if rule.name == "HostDown"]


def batch(engine: Engine, host: str, now: float, metric: str = "cpu.usage_percent") -> list[AlertEvent]:
    return engine.metrics(
        MetricBatch(host=host, time=now, samples=[Sample(name=metric, value=1.0)]), now
    ).events


def ticks(engine: Engine, start: float, end: float, step: float = 1.0) -> list[AlertEvent]:
    events: list[AlertEvent] = []
    now = start
    while now <= end:
        events.extend(engine.tick(now).events)
        now += step
    return events


def test_without_an_outage_a_silent_host_fires_after_for():
    engine = Engine(shipped_host_down())
    batch(engine, "web-1", 0.0)
    assert ticks(engine, 1.0, 29.0) == []
    [fired] = ticks(engine, 30.0, 30.0)
    assert (fired.rule, fired.host, fired.status, fired.value) == ("HostDown", "web-1", "firing", 30.0)


def test_a_host_replayed_after_the_outage_never_fires():
    engine = Engine(shipped_host_down())
    batch(engine, "web-1", 0.0)
    engine.disconnected()
    assert engine.blind
    assert ticks(engine, 1.0, 60.0) == []  # twice `for` without seeing anything
    engine.reconnected(60.5)
    assert not engine.blind
    # The agent reconnects a few seconds later and replays its buffer, then goes on live.
    assert ticks(engine, 61.0, 64.0) == []
    for now in (64.2, 64.3, 64.4, 65.0, 70.0, 80.0):
        assert batch(engine, "web-1", now) == []
    assert ticks(engine, 65.0, 100.0, step=5.0) == []


def test_a_host_still_silent_for_the_whole_for_after_reconnecting_fires_then():
    engine = Engine(shipped_host_down())
    batch(engine, "web-1", 0.0)
    batch(engine, "db-1", 0.0)
    engine.disconnected()
    assert ticks(engine, 1.0, 40.0) == []
    engine.reconnected(40.0)
    batch(engine, "web-1", 41.0)  # replayed: web-1 was only unreachable
    assert ticks(engine, 41.0, 69.0) == []  # db-1: 29 s of silence since the evaluator saw again
    fired = ticks(engine, 70.0, 70.0)
    assert [(e.host, e.status) for e in fired] == [("db-1", "firing")]
    assert fired[0].value == 70.0  # the seconds since db-1 was last seen, not since the reconnect


def test_a_host_that_went_silent_after_the_reconnect_is_judged_from_its_last_sample():
    engine = Engine(shipped_host_down())
    batch(engine, "web-1", 0.0)
    engine.disconnected()
    engine.reconnected(10.0)
    batch(engine, "web-1", 20.0)
    assert ticks(engine, 21.0, 49.0) == []
    [fired] = ticks(engine, 50.0, 50.0)
    assert (fired.host, fired.value) == ("web-1", 30.0)


def test_per_series_absence_is_suspended_too():
    engine = Engine(parsed_rules(PER_SERIES))
    batch(engine, "web-1", 0.0, metric="check.up")
    engine.disconnected()
    assert ticks(engine, 1.0, 45.0) == []
    engine.reconnected(45.0)
    assert ticks(engine, 46.0, 74.0) == []
    [fired] = ticks(engine, 75.0, 75.0)
    assert (fired.rule, fired.status) == ("NoCheck", "firing")


def test_an_alert_firing_before_the_outage_stays_firing_and_resolves_when_data_returns():
    engine = Engine(shipped_host_down())
    batch(engine, "web-1", 0.0)
    [fired] = ticks(engine, 30.0, 30.0)
    engine.disconnected()
    assert ticks(engine, 31.0, 50.0) == []
    engine.reconnected(50.0)
    [resolved] = batch(engine, "web-1", 51.0)
    assert (resolved.id, resolved.status) == (fired.id, "resolved")


SPIKE = """\
rules:
  - {name: Spike, metric: spike, condition: "> 50", for: 10s, severity: critical}
  - {name: Sticky, metric: sticky, condition: "> 50", keep_firing_for: 20s, severity: high}
  - {name: Logins, kind: event_count, event: login_failed, window: 10s, condition: "> 2", severity: low}
"""


def value(engine: Engine, metric: str, v: float, now: float) -> list[AlertEvent]:
    return engine.metrics(
        MetricBatch(host="web-1", time=now, samples=[Sample(name=metric, value=v)]), now
    ).events


def test_a_pending_alert_whose_condition_cleared_during_the_outage_never_fires():
    engine = Engine(parsed_rules(SPIKE))
    assert value(engine, "spike", 60, 0.0) == []  # pending, `for` 10 s
    engine.disconnected()
    assert ticks(engine, 1.0, 33.0) == []  # its `for` ran out while blind: no decision
    engine.reconnected(33.0)
    assert ticks(engine, 33.0, 34.0) == []
    assert value(engine, "spike", 10, 34.5) == []  # the replay: it cleared at the outage
    assert ticks(engine, 35.0, 60.0) == []
    assert [s.status for s in engine.states.values() if s.rule == "Spike" and s.status != "inactive"] == []


def test_a_pending_alert_with_no_news_after_the_outage_fires_for_after_the_reconnect():
    engine = Engine(parsed_rules(SPIKE))
    value(engine, "spike", 60, 0.0)
    engine.disconnected()
    assert ticks(engine, 1.0, 33.0) == []
    engine.reconnected(33.0)
    assert ticks(engine, 33.0, 42.0) == []
    [fired] = ticks(engine, 43.0, 43.0)
    assert (fired.rule, fired.status) == ("Spike", "firing")


def test_a_replayed_sample_that_still_holds_fires_at_once():
    engine = Engine(parsed_rules(SPIKE))
    value(engine, "spike", 60, 0.0)
    engine.disconnected()
    ticks(engine, 1.0, 33.0)
    engine.reconnected(33.0)
    [fired] = value(engine, "spike", 70, 34.0)  # held all along: `for` is long over
    assert (fired.status, fired.value) == ("firing", 70.0)


def test_a_clearing_alert_does_not_resolve_while_blind_nor_before_keep_firing_for_after():
    engine = Engine(parsed_rules(SPIKE))
    [fired] = value(engine, "sticky", 60, 0.0)
    assert value(engine, "sticky", 10, 1.0) == []  # clearing: resolves 20 s later
    engine.disconnected()
    assert ticks(engine, 2.0, 40.0) == []
    engine.reconnected(40.0)
    assert ticks(engine, 40.0, 59.0) == []
    [resolved] = ticks(engine, 60.0, 60.0)
    assert (resolved.id, resolved.status) == (fired.id, "resolved")


def test_event_counts_do_not_decay_while_blind():
    engine = Engine(parsed_rules(SPIKE))
    events = EventBatch(host="web-1", time=0.0, events=[Event(type="login_failed") for _ in range(3)])
    [fired] = engine.events(events, 0.0).events
    engine.disconnected()
    assert ticks(engine, 1.0, 30.0) == []  # the window emptied, but the evaluator saw nothing
    engine.reconnected(30.0)
    [resolved] = ticks(engine, 31.0, 31.0)
    assert (resolved.id, resolved.status) == (fired.id, "resolved")

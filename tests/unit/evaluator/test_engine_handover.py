"""A partition handed from one evaluator replica to another: the new owner continues from
the stored states as if it had just reconnected, and the old one forgets without a word."""

from __future__ import annotations

from signalfire.evaluator.engine import Engine
from signalfire.events import AlertEvent, MetricBatch, Sample
from tests.support.rules import parsed_rules

RULES = """\
rules:
  - {name: Hot, metric: temp, condition: "> 50", resolve: "< 40", for: 10s, severity: high}
  - {name: Silent, kind: absent, for: 30s, severity: high}
  - {name: FleetHot, metric: temp, aggregate: max, window: 60s, group_by: fleet, condition: "> 90",
     severity: high}
"""


def sample(engine: Engine, host: str, value: float, now: float, scope: str = "all") -> list[AlertEvent]:
    batch = MetricBatch(host=host, time=now, samples=[Sample(name="temp", value=value)])
    return engine.metrics(batch, now, scope).events  # type: ignore[arg-type]


def ticks(engine: Engine, start: float, end: float) -> list[AlertEvent]:
    events: list[AlertEvent] = []
    now = start
    while now <= end:
        events.extend(engine.tick(now).events)
        now += 1.0
    return events


def handed_over(old: Engine, now: float, last_seen: dict[str, float] | None = None) -> Engine:
    new = Engine(parsed_rules(RULES))
    new.load(old.states.values(), now, last_seen, handover=True)
    return new


def test_a_pending_alert_keeps_its_start_when_a_sample_still_holds():
    old = Engine(parsed_rules(RULES))
    assert sample(old, "web-1", 60, 0.0) == []
    new = handed_over(old, 8.0)
    [fired] = sample(new, "web-1", 60, 10.5)
    assert (fired.status, fired.starts_at) == ("firing", 10.5)
    assert new.states[fired.fingerprint].active_since == 0.0


def test_a_pending_alert_does_not_fire_by_time_alone_until_for_after_the_handover():
    old = Engine(parsed_rules(RULES))
    sample(old, "web-1", 60, 0.0)
    new = handed_over(old, 8.0)
    hot = [e for e in ticks(new, 9.0, 17.0) if e.rule == "Hot"]
    assert hot == []  # the old owner may have seen it clear
    [fired] = [e for e in ticks(new, 18.0, 18.0) if e.rule == "Hot"]
    assert fired.status == "firing"


def test_a_silent_host_does_not_fire_absent_until_for_after_the_handover():
    old = Engine(parsed_rules(RULES))
    sample(old, "web-1", 1, 0.0)
    # The service reads when the host was last seen from the metrics stream.
    new = handed_over(old, 25.0, {fp: 0.0 for fp, s in old.states.items() if s.rule == "Silent"})
    assert [e for e in ticks(new, 26.0, 54.0) if e.rule == "Silent"] == []
    [fired] = [e for e in ticks(new, 55.0, 55.0) if e.rule == "Silent"]
    assert (fired.status, fired.value) == ("firing", 55.0)  # reports the whole silence


def test_a_firing_alert_stays_firing_and_resolves_once():
    old = Engine(parsed_rules(RULES))
    sample(old, "web-1", 60, 0.0)
    [fired] = sample(old, "web-1", 60, 10.0)
    new = handed_over(old, 12.0)
    assert sample(new, "web-1", 60, 13.0) == []
    [resolved] = sample(new, "web-1", 30, 14.0)
    assert (resolved.status, resolved.id) == ("resolved", fired.id)


def test_forgetting_a_partition_drops_its_hosts_silently_and_keeps_the_others():
    engine = Engine(parsed_rules(RULES))
    sample(engine, "web-1", 60, 0.0)
    sample(engine, "web-2", 60, 0.0)
    dropped = engine.forget(lambda host: host == "web-1", fleet=False)
    assert dropped and all(engine.states.get(fp) is None for fp in dropped)
    assert {s.host for s in engine.states.values()} == {"web-2"}
    events = ticks(engine, 1.0, 40.0)
    assert {e.host for e in events} == {"web-2"}


def test_a_scope_judges_only_its_rules():
    engine = Engine(parsed_rules(RULES))
    assert [e.rule for e in sample(engine, "web-1", 95, 0.0, "fleet")] == ["FleetHot"]
    assert {s.rule for s in engine.states.values()} == {"FleetHot"}
    sample(engine, "web-2", 95, 1.0, "host")
    assert {s.rule for s in engine.states.values()} == {"FleetHot", "Hot", "Silent"}
    assert engine.forget(lambda host: False, fleet=True)
    assert {s.rule for s in engine.states.values()} == {"Hot", "Silent"}

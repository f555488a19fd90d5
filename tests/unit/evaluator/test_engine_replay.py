"""A partition rebuilt from history on the replica that takes it over (``Engine.replaying``,
then ``adopt``): history the previous owner judged fills windows and decides nothing, the
rest is judged, never again for an alert whose stored state is newer than the sample, and
the running engine goes on from there as one replica judging every sample would have."""

from __future__ import annotations

from signalfire.evaluator.engine import Engine
from signalfire.events import AlertEvent, MetricBatch, Sample
from tests.support.rules import parsed_rules

RULES = """\
rules:
  - {name: AvgHot, metric: temp, aggregate: avg, window: 20s, condition: "> 50", resolve: "<= 50",
     severity: high}
  - {name: Spike, metric: spike, condition: "> 90", severity: high}
  - {name: Silent, kind: absent, for: 30s, severity: high}
"""


def batch(host: str, now: float, temp: float, spike: float = 0.0) -> MetricBatch:
    return MetricBatch(
        host=host, time=now, samples=[Sample(name="temp", value=temp), Sample(name="spike", value=spike)]
    )


def feed(engine: Engine, samples: list[tuple[float, float, float]]) -> list[AlertEvent]:
    events: list[AlertEvent] = []
    for now, temp, spike in samples:
        events += engine.metrics(batch("web-1", now, temp, spike), now).events
        events += engine.tick(now).events
    return events


def take_over(
    old: Engine, history: list[tuple[float, float, float]], judged_until: float, now: float
) -> tuple[Engine, list[AlertEvent]]:
    """What the service does on taking the partition at ``now``: the stored states, the history
    (warm up to ``judged_until``, judged after), then the running engine adopts it all."""
    scratch = Engine(parsed_rules(RULES))
    states = list(old.states.values())
    scratch.load(states, now, handover=True)
    guard = scratch.replaying({s.fingerprint: s.last_seen or 0.0 for s in states})
    events: list[AlertEvent] = []
    for t, temp, spike in history:
        guard.warming = t <= judged_until
        events += scratch.metrics(batch("web-1", t, temp, spike), t).events
    scratch.replayed()
    running = Engine(parsed_rules(RULES))
    running.adopt(scratch, now)
    return running, events


# 4 samples a second: 10 s cold, then hot. One replica fires when hot samples outnumber cold
# ones in the 20 s window.
COLD = [(i / 4, 30.0, 0.0) for i in range(40)]
HOT = [(10 + i / 4, 70.0, 0.0) for i in range(80)]


def test_the_window_carries_over_and_fires_when_one_replica_would_have():
    [alone] = [e for e in feed(Engine(parsed_rules(RULES)), COLD + HOT) if e.rule == "AvgHot"]
    old = Engine(parsed_rules(RULES))
    assert feed(old, COLD + HOT[:12]) == []  # killed 3 s into the heat, window avg ~42
    # Taken over at 16 s; the previous owner judged up to its last renewal at 12.5 s.
    new, replayed = take_over(old, COLD + HOT[:24], judged_until=12.5, now=16.0)
    assert replayed == []
    [fired] = [e for e in feed(new, HOT[24:]) if e.rule == "AvgHot"]
    assert (fired.status, fired.starts_at) == ("firing", alone.starts_at)


def test_without_the_warm_history_the_window_would_fire_early():
    old = Engine(parsed_rules(RULES))
    feed(old, COLD + HOT[:12])
    new, _ = take_over(old, [], judged_until=12.5, now=16.0)
    [fired] = [e for e in feed(new, HOT[24:]) if e.rule == "AvgHot"]
    assert fired.starts_at == HOT[24][0]  # the first sample it sees: a window of heat only


def test_a_sample_nobody_judged_is_judged_once():
    old = Engine(parsed_rules(RULES))
    feed(old, COLD[:20])
    gap = [(5.5, 30.0, 99.0), (5.75, 30.0, 0.0)]
    new, replayed = take_over(old, COLD[:20] + gap, judged_until=5.0, now=8.0)
    assert [(e.rule, e.status, e.starts_at) for e in replayed] == [
        ("Spike", "firing", 5.5),
        ("Spike", "resolved", 5.5),
    ]
    assert [e for e in feed(new, [(8.0, 30.0, 0.0)]) if e.rule == "Spike"] == []


def test_history_the_previous_owner_judged_is_never_judged_again():
    old = Engine(parsed_rules(RULES))
    history = [*COLD[:20], (5.0, 30.0, 99.0), (5.25, 30.0, 0.0), (5.5, 30.0, 99.0)]
    events = feed(old, history)
    assert [e.status for e in events] == ["firing", "resolved", "firing"]
    # Its last renewal was before the spikes (the cut is a poll early), so the history after
    # it is judged; but the stored state was decided at the second spike: judged again on
    # that newer state, the first spike's end would resolve the second alert and the second
    # spike fire a third one.
    new, replayed = take_over(old, history, judged_until=4.0, now=8.0)
    assert replayed == []
    [resolved] = [e for e in feed(new, [(8.0, 30.0, 0.0)]) if e.rule == "Spike"]
    assert (resolved.status, resolved.id) == ("resolved", events[-1].id)


def test_warm_history_decides_nothing():
    old = Engine(parsed_rules(RULES))
    feed(old, COLD[:4])
    _, replayed = take_over(old, [*COLD[:4], (1.0, 99.0, 99.0)], judged_until=2.0, now=5.0)
    assert replayed == []


def test_a_series_seen_only_in_the_history_is_not_absent_before_for_after_the_takeover():
    old = Engine(parsed_rules(RULES))  # never saw web-1 (no state stored)
    new, _ = take_over(old, [(0.0, 30.0, 0.0)], judged_until=-1.0, now=10.0)
    silent = [e for t in range(11, 40) for e in new.tick(float(t)).events if e.rule == "Silent"]
    assert silent == []
    [fired] = [e for e in new.tick(40.0).events if e.rule == "Silent"]
    assert (fired.status, fired.value) == ("firing", 40.0)  # the whole silence, from the history


ANOMALY = """\
rules:
  - {name: Odd, kind: anomaly, metric: temp, condition: "> 4", warmup: 20, severity: high}
"""


def anomaly_samples(engine: Engine, start: float, values: list[float]) -> list[AlertEvent]:
    events: list[AlertEvent] = []
    for i, v in enumerate(values):
        now = start + i
        events += engine.metrics(
            MetricBatch(host="web-1", time=now, samples=[Sample(name="temp", value=v)]), now
        ).events
    return events


def test_an_anomaly_baseline_carries_over_through_a_snapshot_and_counts_each_sample_once():
    old = Engine(parsed_rules(ANOMALY))
    steady = [50.0 + (i % 3) for i in range(30)]
    anomaly_samples(old, 0.0, steady)
    snapshot = old.baselines(lambda host: host == "web-1")
    assert snapshot["Odd"]["series"][0][5] == 30
    new = Engine(parsed_rules(ANOMALY))
    assert new.restore_baselines(snapshot, as_of=29.0) == 1
    # The history read back holds samples the snapshot counted already: they leave it be.
    anomaly_samples(new, 20.0, steady[20:])
    assert new.baselines(lambda host: True) == snapshot
    [fired] = anomaly_samples(new, 31.0, [500.0])  # judged at once: no warm-up again
    assert fired.status == "firing"
    assert anomaly_samples(Engine(parsed_rules(ANOMALY)), 31.0, [500.0]) == []  # afresh: warming up


def test_a_snapshot_of_a_rule_defined_otherwise_since_is_not_restored():
    old = Engine(parsed_rules(ANOMALY))
    anomaly_samples(old, 0.0, [50.0] * 30)
    snapshot = old.baselines(lambda host: True)
    changed = Engine(parsed_rules(ANOMALY.replace("warmup: 20", "warmup: 10")))
    assert changed.restore_baselines(snapshot, as_of=29.0) == 0
    assert old.baselines(lambda host: host == "web-2") == {}

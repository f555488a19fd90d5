"""People's actions on alerts (ack, unack, resolve by hand) and bad sample values, through
the engine the service runs."""

from __future__ import annotations

import math

from signalfire.evaluator.engine import Engine
from signalfire.events import AlertAction, AlertEvent, MetricBatch, Sample
from tests.support.rules import parsed_rules

HOT = """\
rules:
  - name: Hot
    metric: temp
    condition: "> 50"
    severity: high
"""


def sample(
    engine: Engine, value: float, now: float, host: str = "web-1", *, stamped: float | None = None
) -> list[AlertEvent]:
    """A batch of one ``temp`` sample arriving at ``now``, stamped ``stamped`` by the host's
    clock (``now``: a clock in step, delivered at once)."""
    batch = MetricBatch(
        host=host, time=now if stamped is None else stamped, samples=[Sample(name="temp", value=value)]
    )
    return engine.metrics(batch, now).events


def act(engine: Engine, kind: str, alert_id: str, now: float, actor: str = "ana") -> list[AlertEvent]:
    action = AlertAction(alert_id=alert_id, action=kind, actor=actor, time=now)  # type: ignore[arg-type]
    return engine.action(action, now).events


def test_resolve_by_hand_ends_the_instance_and_a_still_hot_series_fires_anew():
    engine = Engine(parsed_rules(HOT))
    [firing] = sample(engine, 60, 10.0)
    assert sample(engine, 70, 11.0) == []  # still firing: nothing new

    [resolved] = act(engine, "resolve", firing.id, 12.0)
    assert (resolved.status, resolved.id) == ("resolved", firing.id)
    assert resolved.ends_at == 12.0
    assert resolved.annotations["resolved_by"] == "ana"
    assert resolved.seq == firing.seq + 1

    # The condition still holds: the next sample is a new alert instance.
    [again] = sample(engine, 70, 13.0)
    assert again.status == "firing"
    assert again.id != firing.id and again.fingerprint == firing.fingerprint
    assert "resolved_by" not in again.annotations
    # ... which then resolves normally, once.
    [end] = sample(engine, 10, 14.0)
    assert (end.status, end.id) == ("resolved", again.id)


def test_resolve_twice_or_of_an_old_instance_changes_nothing():
    engine = Engine(parsed_rules(HOT))
    [firing] = sample(engine, 60, 10.0)
    assert len(act(engine, "resolve", firing.id, 11.0)) == 1
    assert act(engine, "resolve", firing.id, 11.5) == []  # a repeated action
    [again] = sample(engine, 60, 12.0)
    assert act(engine, "resolve", firing.id, 12.5) == []  # the old instance is over
    assert engine.states[again.fingerprint].status == "firing"
    assert act(engine, "resolve", "nosuchalert:1", 13.0) == []


def test_resolve_by_hand_beats_keep_firing_for_and_honours_cooldown():
    engine = Engine(
        parsed_rules("""\
rules:
  - name: Hot
    metric: temp
    condition: "> 50"
    keep_firing_for: 5m
    cooldown: 60s
    severity: high
""")
    )
    [firing] = sample(engine, 60, 0.0)
    assert sample(engine, 10, 1.0) == []  # kept firing
    [resolved] = act(engine, "resolve", firing.id, 2.0)
    assert resolved.status == "resolved"
    assert engine.tick(30.0).events == []
    assert sample(engine, 90, 30.0) == []  # hot again, but within the cooldown
    [again] = engine.tick(62.0).events  # cooldown over, still hot: a new instance
    assert again.status == "firing" and again.id != firing.id


def test_an_ack_rides_on_the_instance_and_not_on_the_next_one():
    engine = Engine(parsed_rules(HOT))
    [firing] = sample(engine, 60, 10.0)
    assert act(engine, "ack", firing.id, 11.0, actor="bo") == []  # no event of its own
    [resolved] = sample(engine, 10, 12.0)
    assert resolved.annotations["acknowledged_by"] == "bo"
    [again] = sample(engine, 60, 13.0)
    assert "acknowledged_by" not in again.annotations


def test_unack_removes_the_acknowledgement():
    engine = Engine(parsed_rules(HOT))
    [firing] = sample(engine, 60, 10.0)
    act(engine, "ack", firing.id, 11.0)
    act(engine, "unack", firing.id, 12.0)
    [resolved] = sample(engine, 10, 13.0)
    assert "acknowledged_by" not in resolved.annotations


def test_an_absent_alert_resolved_by_hand_stays_quiet_until_the_host_reports_again():
    engine = Engine(
        parsed_rules("""\
rules:
  - {name: Silent, kind: absent, for: 30s, severity: critical}
""")
    )
    assert sample(engine, 1, 0.0) == []
    [firing] = engine.tick(31.0).events
    [resolved] = act(engine, "resolve", firing.id, 40.0)
    assert resolved.status == "resolved"
    assert engine.tick(600.0).events == []  # still silent: the person said it is over
    assert sample(engine, 1, 601.0) == []  # back: watched again
    [again] = engine.tick(632.0).events  # and silent again for `for`: a new instance
    assert again.status == "firing" and again.id != firing.id


def test_nan_and_infinite_values_are_rejected_and_counted_the_rest_of_the_batch_counts():
    engine = Engine(parsed_rules(HOT))
    batch = MetricBatch(
        host="web-1",
        time=1.0,
        samples=[
            Sample(name="temp", value=math.nan),
            Sample(name="temp", value=math.inf, labels={"zone": "a"}),
            Sample(name="temp", value=-math.inf, labels={"zone": "b"}),
            Sample(name="temp", value=99.0, labels={"zone": "c"}),
        ],
    )
    out = engine.metrics(batch, 1.0)
    assert out.rejected == 3
    [firing] = out.events
    assert firing.labels["zone"] == "c" and firing.value == 99.0


def test_of_acks_and_unacks_applied_out_of_order_the_newest_stands():
    """The service reads actions back from the stream after applying newer ones live (a start,
    a takeover, a reconnect): an older ack must not undo a newer unack, nor the reverse."""
    engine = Engine(parsed_rules(HOT))
    [firing] = sample(engine, 60, 10.0)
    fp = firing.fingerprint
    unack = AlertAction(alert_id=firing.id, action="unack", actor="ana", time=12.0)
    ack = AlertAction(alert_id=firing.id, action="ack", actor="bo", time=11.0)
    assert engine.action(unack, 12.5).changed  # live: the newer one first
    assert not engine.action(ack, 13.0).changed  # read back: older, it changes nothing
    assert engine.states[fp].acked_by is None
    assert not engine.action(unack, 13.0).changed  # and the newer again, nothing either
    later = AlertAction(alert_id=firing.id, action="ack", actor="cy", time=14.0)
    assert engine.action(later, 14.0).changed
    assert not engine.action(ack, 14.5).changed
    assert (engine.states[fp].acked_by, engine.states[fp].acked_at) == ("cy", 14.0)
    [end] = sample(engine, 10, 15.0)
    assert end.annotations["acknowledged_by"] == "cy"

    # A new instance starts unacknowledged, and an ack older than the last instance's counts.
    [again] = sample(engine, 60, 16.0)
    assert "acknowledged_by" not in again.annotations
    early = AlertAction(alert_id=again.id, action="ack", actor="di", time=13.0)
    assert engine.action(early, 16.5).changed
    assert engine.states[fp].acked_by == "di"


HOT_FOR = """\
rules:
  - name: Hot
    metric: temp
    condition: "> 50"
    for: 1s
    severity: high
"""


def fire(engine: Engine, start: float, offset: float, delay: float = 0.02) -> AlertEvent:
    """Hot samples every second from ``start`` (engine clock) from a host whose clock is
    ``offset`` behind, each delivered ``delay`` after it is taken, until the alert fires."""
    for n in range(5):
        t = start + n
        events = sample(engine, 60, t + delay, stamped=t - offset)
        if events:
            [firing] = events
            assert firing.status == "firing"
            return firing
    raise AssertionError("did not fire")


def test_samples_taken_before_a_resolve_by_hand_and_arriving_after_it_start_no_new_alert():
    """An agent's batches held in its outbox through a NATS election arrive after the person
    resolved the alert, though taken before it: what they show was handled. Fresh samples
    that still hold start a new instance after `for`, as always."""
    engine = Engine(parsed_rules(HOT_FOR))
    firing = fire(engine, 100.0, offset=0.0)
    # Taken at 102 and 103, held back; the person resolves at 105.5 (engine clock).
    [resolved] = act(engine, "resolve", firing.id, 105.5)
    assert resolved.status == "resolved"
    out = engine.metrics(
        MetricBatch(host="web-1", time=102.0, samples=[Sample(name="temp", value=60)]), 105.6
    )
    assert (out.events, out.before_resolve) == ([], 1)
    out = engine.metrics(
        MetricBatch(host="web-1", time=103.0, samples=[Sample(name="temp", value=60)]), 106.7
    )
    assert (out.events, out.before_resolve) == ([], 1)
    assert engine.tick(107.0).events == []
    assert engine.states[firing.fingerprint].status == "inactive"  # nothing pending either
    # Taken after the resolve and still hot: a new instance, `for` after its first sample.
    assert sample(engine, 60, 107.02, stamped=107.0) == []
    [again] = sample(engine, 60, 108.02, stamped=108.0)
    assert again.status == "firing" and again.id != firing.id and again.time == 108.02


def test_a_host_whose_clock_is_off_fires_again_after_a_resolve_by_hand_as_one_in_step_does():
    """Samples are placed in time by the host's own delivery delay, not by its clock: a host
    five minutes behind (or ahead) still starts a new instance from samples taken after the
    resolve, and held-back ones taken before it still start nothing."""
    for offset in (300.0, -300.0):
        engine = Engine(parsed_rules(HOT_FOR))
        firing = fire(engine, 1000.0, offset=offset)
        [resolved] = act(engine, "resolve", firing.id, 1004.5)
        assert resolved.status == "resolved"
        held = engine.metrics(
            MetricBatch(host="web-1", time=1003.0 - offset, samples=[Sample(name="temp", value=60)]), 1004.6
        )
        assert (held.events, held.before_resolve) == ([], 1), offset
        assert sample(engine, 60, 1005.02, stamped=1005.0 - offset) == []
        [again] = sample(engine, 60, 1006.02, stamped=1006.0 - offset)
        assert again.status == "firing" and again.id != firing.id, offset


def test_a_host_clock_set_back_delays_a_new_alert_after_a_resolve_by_two_minutes_at_most():
    """A host clock stepped back makes its samples look older than they are until the least
    delivery delay is measured anew (each minute, the last two minutes' least)."""
    engine = Engine(parsed_rules(HOT_FOR))
    firing = fire(engine, 0.0, offset=0.0)
    [resolved] = act(engine, "resolve", firing.id, 3.5)
    assert resolved.status == "resolved"
    # From 4 s on the host's clock is 30 minutes behind: a new instance waits ...
    fired = None
    for n in range(4, 200):
        events = sample(engine, 60, n + 0.02, stamped=n - 1800.0)
        if events:
            fired = n + 0.02
            break
    # ... until the delay of before the step has left the windows (60 s each), then `for`.
    assert fired is not None and 60.0 < fired <= 2 * 60.0 + 1.0 + 2.0, fired


def test_the_first_sample_of_a_host_counts_as_taken_when_it_arrives():
    """Nothing is known yet of the host's delay: its first batch counts as taken on arrival,
    as every batch did before (the service measures the delay of a host resolved by hand
    from the stream first, see the next test)."""
    engine = Engine(parsed_rules(HOT_FOR))
    firing = fire(engine, 0.0, offset=0.0)
    assert len(act(engine, "resolve", firing.id, 3.5)) == 1
    restarted = Engine(parsed_rules(HOT_FOR))
    restarted.load(list(engine.states.values()), 4.0)
    assert sample(restarted, 60, 5.0, stamped=2.0) == []  # stamped before the resolve, first seen
    [again] = sample(restarted, 60, 6.0, stamped=3.0)  # ... so this one is 1 s after it
    assert again.status == "firing" and again.id != firing.id


def test_a_resolve_the_rule_decided_itself_lets_the_next_hot_batch_start_at_once():
    """Only a person's resolve holds older batches back: one the rule decided on a cool sample
    was decided in the order the host took its batches, so a hot batch queued behind that
    cool one (the evaluator busy for 0.3 s) is newer and starts the next instance."""
    engine = Engine(parsed_rules(HOT_FOR))
    firing = fire(engine, 0.0, offset=0.0)
    [resolved] = sample(engine, 10, 10.3, stamped=10.0)  # processed 0.3 s late
    assert resolved.status == "resolved"
    assert engine.states[firing.fingerprint].resolved_by_hand_at is None
    assert sample(engine, 60, 10.31, stamped=10.1) == []
    assert engine.states[firing.fingerprint].status == "pending"
    [again] = sample(engine, 60, 11.32, stamped=11.1)
    assert again.status == "firing" and again.id != firing.id


def test_the_resolve_by_hand_is_kept_with_the_state_and_forgotten_when_a_new_instance_fires():
    """Stored with the alert's state, the person's resolve holds older batches back in an
    evaluator that loads it (a restart, a partition taken over), until a new instance fires."""
    engine = Engine(parsed_rules(HOT_FOR))
    firing = fire(engine, 0.0, offset=0.0)
    assert len(act(engine, "resolve", firing.id, 5.5)) == 1
    stored = engine.states[firing.fingerprint]
    assert stored.resolved_by_hand_at == 5.5
    taken_over = Engine(parsed_rules(HOT_FOR))
    taken_over.load([stored], 6.0, handover=True)
    assert sample(taken_over, 10, 6.0, stamped=6.0) == []  # cool: the host's delay measured
    held = taken_over.metrics(
        MetricBatch(host="web-1", time=4.0, samples=[Sample(name="temp", value=60)]), 6.5
    )
    assert (held.events, held.before_resolve) == ([], 1)
    assert taken_over.states[firing.fingerprint].status == "inactive"
    assert sample(taken_over, 60, 7.0, stamped=7.0) == []
    [again] = sample(taken_over, 60, 8.0, stamped=8.0)
    assert again.status == "firing" and again.id != firing.id
    assert taken_over.states[firing.fingerprint].resolved_by_hand_at is None


def test_a_host_resolved_by_hand_is_placed_by_a_delay_measured_elsewhere():
    """After a start the shell asks which hosts resolved by hand the engine has not heard
    from (the newest resolve first, none older than asked, no fleet-wide alert) and gives
    their delay measured from the stream: then the first held batch is held back too."""
    rules = parsed_rules(
        HOT_FOR + "  - {name: Fleet, metric: temp, aggregate: max, window: 10s, group_by: fleet, "
        'condition: "> 50", severity: high}\n'
    )
    engine = Engine(rules)
    fired: dict[tuple[str, str], AlertEvent] = {}
    for n in range(3):
        for host in ("web-1", "web-2", "web-3"):
            for event in sample(engine, 60, n + 0.02, host=host, stamped=float(n)):
                fired[(event.rule, event.host)] = event
    hot = {host: fired[("Hot", host)] for host in ("web-1", "web-2", "web-3")}
    [fleet] = [e for (rule, _), e in fired.items() if rule == "Fleet"]
    for host, at in (("web-3", 2.5), ("web-1", 5.5), ("web-2", 6.5)):
        assert len(act(engine, "resolve", hot[host].id, at)) == 1
    assert len(act(engine, "resolve", fleet.id, 6.6)) == 1  # no host of its own to measure
    restarted = Engine(rules)
    restarted.load(list(engine.states.values()), 7.0)
    assert restarted.unplaced(since=3.0) == ["web-2", "web-1"]
    restarted.note_delay("web-1", 0.02, 7.0)
    assert restarted.unplaced(since=3.0) == ["web-2"]
    held = restarted.metrics(
        MetricBatch(host="web-1", time=4.0, samples=[Sample(name="temp", value=60)]), 7.5
    )
    # held back for its host's alert and for the fleet's, both resolved after it was taken
    assert (held.events, held.before_resolve) == ([], 2)

"""Windows are judged as time passes, not only when a sample arrives: once samples stop, a
window empties and its alert resolves (driven by a fake clock: `now` is whatever the test says)."""

from __future__ import annotations

from signalfire.evaluator.engine import Engine
from signalfire.events import AlertEvent, MetricBatch, Sample
from tests.support.rules import parsed_rules

ERROR_RATE = """\
rules:
  - name: ErrorRate
    kind: ratio
    numerator: http.errors
    denominator: http.requests
    condition: "> 0.1"
    window: 2m
    severity: high
"""


def send(engine: Engine, now: float, **values: float) -> list[AlertEvent]:
    samples = [Sample(name=name.replace("_", "."), value=value) for name, value in values.items()]
    return engine.metrics(MetricBatch(host="web-1", time=now, samples=samples), now).events


def ticks(engine: Engine, start: float, end: float) -> list[tuple[float, AlertEvent]]:
    events: list[tuple[float, AlertEvent]] = []
    now = start
    while now <= end:
        events.extend((now, event) for event in engine.tick(now).events)
        now += 1.0
    return events


def test_an_error_rate_alert_resolves_when_its_window_empties():
    engine = Engine(parsed_rules(ERROR_RATE))
    [fired] = send(engine, 0.0, http_errors=5.0, http_requests=10.0)
    assert fired.status == "firing"
    for now in (10.0, 20.0, 30.0):  # the service goes on failing, then stops reporting
        assert send(engine, now, http_errors=5.0, http_requests=10.0) == []
    assert ticks(engine, 31.0, 149.0) == []  # the last sample (t=30) is still in the 2 min window
    [(when, resolved)] = ticks(engine, 150.0, 400.0)
    assert when == 150.0  # t=30 left the window: 2.5 min after the first sample, not never
    assert (resolved.status, resolved.id, resolved.value) == ("resolved", fired.id, 0.5)
    assert engine.series_count("ErrorRate") == 0  # nothing left to watch


def test_a_ratio_whose_failures_slide_out_resolves_though_requests_go_on():
    engine = Engine(parsed_rules(ERROR_RATE))
    [fired] = send(engine, 0.0, http_errors=50.0, http_requests=100.0)
    # Healthy traffic from now on, only denominators: at t=80 50/500 is no longer > 0.1.
    events = [e for now in (20.0, 40.0, 60.0, 80.0, 100.0) for e in send(engine, now, http_requests=100.0)]
    assert [(e.status, e.id) for e in events] == [("resolved", fired.id)]
    # A new burst (110/610) fires; as the old requests slide out its ratio only grows ...
    [again] = send(engine, 110.0, http_errors=60.0, http_requests=10.0)
    assert again.status == "firing"
    assert ticks(engine, 111.0, 229.0) == []
    # ... until its own samples leave the window too.
    [(when, cleared)] = ticks(engine, 230.0, 300.0)
    assert (when, cleared.status, cleared.id) == (230.0, "resolved", again.id)


def test_a_windowed_threshold_resolves_when_its_high_samples_slide_out():
    engine = Engine(
        parsed_rules(
            """\
rules:
  - {name: HighAvg, kind: threshold, metric: cpu, aggregate: avg, window: 1m, condition: "> 80",
     severity: low}
"""
        )
    )
    [fired] = send(engine, 0.0, cpu=95.0)
    assert send(engine, 30.0, cpu=90.0) == []
    assert ticks(engine, 31.0, 89.0) == []
    [(when, resolved)] = ticks(engine, 90.0, 200.0)
    assert (when, resolved.status, resolved.id) == (90.0, "resolved", fired.id)


def test_a_pending_window_alert_goes_back_quietly_when_its_window_empties():
    engine = Engine(
        parsed_rules(
            """\
rules:
  - {name: HighAvg, kind: threshold, metric: cpu, aggregate: avg, window: 1m, condition: "> 80",
     for: 5m, severity: low}
"""
        )
    )
    assert send(engine, 0.0, cpu=95.0) == []
    assert [s.status for s in engine.states.values()] == ["pending"]
    assert ticks(engine, 1.0, 400.0) == []  # never fires: its only sample left the window at t=60
    assert engine.states == {}


def test_keep_firing_for_still_holds_an_emptied_window():
    engine = Engine(
        parsed_rules(
            """\
rules:
  - {name: HighAvg, kind: threshold, metric: cpu, aggregate: max, window: 1m, condition: "> 80",
     keep_firing_for: 30s, severity: low}
"""
        )
    )
    [fired] = send(engine, 0.0, cpu=95.0)
    [(when, resolved)] = ticks(engine, 1.0, 200.0)
    assert (when, resolved.id) == (90.0, fired.id)  # emptied at 60, held for 30 s


def test_no_window_is_judged_by_time_while_the_bus_is_out_of_sight():
    engine = Engine(parsed_rules(ERROR_RATE))
    send(engine, 0.0, http_errors=5.0, http_requests=10.0)
    engine.disconnected()
    assert ticks(engine, 1.0, 300.0) == []
    engine.reconnected(300.0)
    [(when, resolved)] = ticks(engine, 301.0, 301.0)
    assert (when, resolved.status) == (301.0, "resolved")

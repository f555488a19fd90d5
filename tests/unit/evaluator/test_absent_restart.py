"""An ``absent`` series loaded at start keeps the time it was last seen, when the shell knows
it: the alert reports the whole silence, and still fires only ``for`` after the start."""

from __future__ import annotations

from signalfire.evaluator.engine import Engine
from signalfire.events import AlertEvent, MetricBatch, Sample
from tests.support.rules import parsed_rules

RULES = """\
rules:
  - {name: HostDown, kind: absent, for: 15s, severity: critical}
"""


def ticks(engine: Engine, start: float, end: float) -> list[AlertEvent]:
    return [e for now in range(int(start), int(end) + 1) for e in engine.tick(float(now)).events]


def stored_states(seen_at: float) -> Engine:
    first = Engine(parsed_rules(RULES))
    first.metrics(MetricBatch(host="web-1", time=0.0, samples=[Sample(name="cpu", value=1.0)]), seen_at)
    return first


def test_a_restarted_evaluator_reports_the_silence_since_the_host_was_last_seen():
    before = stored_states(100.0)
    engine = Engine(parsed_rules(RULES))
    engine.load(before.states.values(), 110.0, {fp: 100.0 for fp in before.states})
    assert ticks(engine, 111.0, 124.0) == []  # `for` counts from the restart ...
    [fired] = ticks(engine, 125.0, 125.0)
    assert (fired.host, fired.status, fired.value) == ("web-1", "firing", 25.0)  # ... the value is all of it


def test_without_a_known_last_seen_the_silence_counts_from_the_restart():
    before = stored_states(100.0)
    engine = Engine(parsed_rules(RULES))
    engine.load(before.states.values(), 110.0)
    [fired] = ticks(engine, 111.0, 125.0)
    assert fired.value == 15.0

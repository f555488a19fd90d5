"""Properties of the state machine for any sequence of samples and timer ticks."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from signalfire.evaluator.rules import Rule
from signalfire.evaluator.state import AlertState, Series, Transition, step, tick
from tests.support.rules import parsed_rules

SERIES = Series(host="web-1", labels={"mount": "/"})

# (condition, resolve or None): plain rules and rules with a hysteresis band
RULE_SHAPES = [
    ("> 80", None),
    ("> 80", "< 75"),
    (">= 50", "<= 40"),
    ("< 10", "> 20"),
    ("== 0", None),
    ("!= 1", None),
    ("<= 5", None),
]


def make_rule(condition: str, resolve: str | None, for_: float) -> Rule:
    extra = f"\n    resolve: '{resolve}'" if resolve else ""
    text = (
        f"rules:\n  - name: R\n    metric: m\n    condition: '{condition}'\n"
        f"    for: {for_}{extra}\n    severity: low\n"
    )
    return parsed_rules(text, "property.yaml")[0]


@dataclass
class Sample:
    dt: float
    value: float


@dataclass
class Tick:
    dt: float


values = st.one_of(
    st.sampled_from([0.0, 1.0, 5.0, 10.0, 20.0, 40.0, 50.0, 75.0, 78.0, 80.0, 81.0, 99.0]),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
steps_dt = st.integers(0, 40).map(lambda n: n * 0.5)
actions = st.lists(
    st.one_of(st.builds(Sample, steps_dt, values), st.builds(Tick, steps_dt)), min_size=1, max_size=60
)


@settings(max_examples=400, deadline=None)
@given(
    shape=st.sampled_from(RULE_SHAPES),
    for_=st.sampled_from([0.0, 0.5, 5.0, 30.0, 60.0]),
    actions=actions,
)
def test_events_alternate_carry_ids_and_respect_for(shape, for_, actions):
    rule = make_rule(shape[0], shape[1], for_)
    state: AlertState | None = None
    now = 1_700_000_000.0
    events: list[Transition] = []
    history: list[tuple[float, float]] = []  # samples seen, (time, value)

    for action in actions:
        now += action.dt
        if isinstance(action, Sample):
            history.append((now, action.value))
            was_firing = state is not None and state.status == "firing"
            state, out = step(rule, state, action.value, now, SERIES)
            # a firing alert resolves exactly when the resolve condition holds (hysteresis)
            if was_firing:
                assert (state.status != "firing") == rule.resolve.holds(action.value)
        elif state is not None:
            state, out = tick(rule, state, now)
        else:
            continue
        for event in out:
            if event.status == "firing":
                # the condition held on every sample of an unbroken run lasting at least `for`
                run = _holding_run(rule, history)
                assert run is not None, "fired without a sample satisfying the condition"
                assert event.time - run >= for_, "fired before `for` elapsed"
        events.extend(out)

        # liveness: once the condition has held for `for`, the alert is firing
        run = _holding_run(rule, history)
        if run is not None and now - run >= for_:
            assert state is not None and state.status == "firing"

    statuses = [e.status for e in events]
    assert statuses == ["firing", "resolved"] * (len(statuses) // 2) + ["firing"] * (len(statuses) % 2)
    for firing, resolved in zip(events[::2], events[1::2], strict=False):
        assert resolved.alert_id == firing.alert_id
        assert resolved.starts_at == firing.starts_at
        assert resolved.ends_at is not None and resolved.ends_at >= firing.starts_at
    firing_ids = [e.alert_id for e in events if e.status == "firing"]
    assert len(firing_ids) == len(set(firing_ids)), "two alert instances share an id"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    if state is not None:
        assert (state.status == "firing") == (statuses[-1:] == ["firing"])


def _holding_run(rule: Rule, history: list[tuple[float, float]]) -> float | None:
    """Start time of the latest unbroken run of samples that satisfy the condition."""
    start = None
    for when, value in reversed(history):
        if not rule.condition.holds(value):
            break
        start = when
    return start

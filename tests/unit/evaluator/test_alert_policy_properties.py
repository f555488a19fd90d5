"""Properties of `for`, keep_firing_for, cooldown and flap damping together, through the engine,
for any stream of samples and timer ticks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from signalfire.evaluator.engine import Engine
from signalfire.evaluator.rules import Rule
from signalfire.events import AlertEvent, MetricBatch, Sample
from tests.support.rules import parsed_rules

START = 1_700_000_000.0


def make_rule(for_: float, keep: float, cooldown: float, flap: int, resolve: str | None) -> Rule:
    extra = f"\n    resolve: '{resolve}'" if resolve else ""
    if flap:
        extra += f"\n    flap: {{changes: {flap}, window: 60s}}"
    text = (
        "rules:\n  - name: R\n    metric: m\n    condition: '> 80'\n"
        f"    for: {for_}\n    keep_firing_for: {keep}\n    cooldown: {cooldown}\n    severity: low{extra}\n"
    )
    return parsed_rules(text, "property.yaml")[0]


# (seconds since the previous action, value or None for a tick)
actions = st.lists(
    st.tuples(
        st.integers(0, 20).map(lambda n: n * 0.5),
        st.one_of(st.none(), st.sampled_from([10.0, 50.0, 76.0, 80.0, 81.0, 99.0])),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    policy=st.tuples(
        st.sampled_from([0.0, 1.0, 5.0, 30.0]),  # for
        st.sampled_from([0.0, 2.0, 10.0]),  # keep_firing_for
        st.sampled_from([0.0, 3.0, 20.0]),  # cooldown
        st.sampled_from([0, 2, 3]),  # flap changes
        st.sampled_from([None, "< 75"]),  # resolve
    ),
    actions=actions,
)
def test_transitions_alternate_and_respect_for_and_cooldown(policy, actions):
    for_, _, cooldown, _, _ = policy
    rule = make_rule(*policy)
    engine = Engine([rule])
    now = START
    events: list[AlertEvent] = []
    holding_since: float | None = None  # start of the current unbroken run of samples > 80
    for dt, value in actions:
        now += dt
        if value is None:
            out = engine.tick(now)
        else:
            holding_since = (now if holding_since is None else holding_since) if value > 80 else None
            out = engine.metrics(
                MetricBatch(host="h", time=now, samples=[Sample(name="m", value=value)]), now
            )
        for event in out.events:
            if event.status == "firing":
                # `for` honoured to the tick: the condition has held at least `for` by now
                assert holding_since is not None, "fired without the condition holding"
                assert event.time - holding_since >= for_
                # no event during cooldown
                previous = [e for e in events if e.status == "resolved"]
                if previous:
                    assert event.time - previous[-1].time >= cooldown
            events.append(event)
        # liveness: held for `for`, cooldown over, and a tick came: the alert fires
        state = next(iter(engine.states.values()), None)
        if value is None and holding_since is not None and now - holding_since >= for_:
            resolved = [e.time for e in events if e.status == "resolved"]
            if not resolved or now - resolved[-1] >= cooldown:
                assert state is not None and state.status == "firing"

    statuses = [e.status for e in events]
    # never two firing without a resolved between; resolved only after firing
    assert statuses == ["firing", "resolved"] * (len(statuses) // 2) + ["firing"] * (len(statuses) % 2)
    for firing, resolved_event in zip(events[::2], events[1::2], strict=False):
        assert resolved_event.id == firing.id
        assert resolved_event.time >= firing.time
    assert len({e.id for e in events if e.status == "firing"}) == len(statuses) - len(statuses) // 2
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

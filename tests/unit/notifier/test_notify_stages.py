"""The pure stages: escalation, repeat, grouping and digests, inhibition, silences, the rate
limit — driven by explicit times, no clock of their own."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalfire.config import Duration
from signalfire.events import AlertEvent, Silence
from signalfire.matchers import Matcher
from signalfire.notifier.config import EscalationStep, InhibitRule, Route
from signalfire.notifier.escalate import due_steps, next_step_at
from signalfire.notifier.group import add, batch_key, batched, due_at, group_of, remove
from signalfire.notifier.inhibit import inhibited_by
from signalfire.notifier.repeat import due_repeat
from signalfire.notifier.silence import reason, silenced_by
from signalfire.notifier.tracking import Track
from tests.support.alerts import firing_alert


def alert(**overrides: Any) -> AlertEvent:
    fields: dict[str, Any] = {"fingerprint": "f1", "severity": "critical", "labels": {"team": "ops"}}
    return firing_alert(overrides.pop("id", "a1"), now=0.0, **(fields | overrides))


CRITICAL = Route(
    channels=["pagerduty", "ops-slack"],
    escalate=[
        EscalationStep(after=Duration(300), channels=["oncall-sms"]),
        EscalationStep(after=Duration(900), channels=["manager-sms"]),
    ],
)
HIGH = Route(channels=["team-lead-slack"], group_wait=Duration(300), repeat=Duration(3600))
LOW = Route(channels=["team-email"], digest=Duration(3600))


def track(**overrides: Any) -> Track:
    fields: dict[str, Any] = {"alert": alert(), "route": 0, "since": 1000.0}
    fields.update(overrides)
    return Track(**fields)


# --- escalation --------------------------------------------------------------------------


def test_escalation_steps_come_due_after_their_delay() -> None:
    t = track()
    assert due_steps(t, CRITICAL, 1000.0 + 299) == []
    assert next_step_at(t, CRITICAL) == 1300.0
    assert due_steps(t, CRITICAL, 1300.0) == [0]
    stepped = msgspec.structs.replace(t, steps_done=1)
    assert due_steps(stepped, CRITICAL, 1899.0) == []
    assert next_step_at(stepped, CRITICAL) == 1900.0
    assert due_steps(stepped, CRITICAL, 1900.0) == [1]
    assert next_step_at(msgspec.structs.replace(t, steps_done=2), CRITICAL) is None


def test_a_notifier_down_for_a_while_sends_every_missed_step_once() -> None:
    assert due_steps(track(), CRITICAL, 5000.0) == [0, 1]
    assert due_steps(track(steps_done=2), CRITICAL, 5000.0) == []


def test_acknowledged_or_resolved_alerts_do_not_escalate() -> None:
    assert due_steps(track(acknowledged=True), CRITICAL, 5000.0) == []
    assert next_step_at(track(acknowledged=True), CRITICAL) is None
    assert due_steps(track(alert=alert(status="resolved")), CRITICAL, 5000.0) == []


@given(st.floats(min_value=0, max_value=1e6), st.integers(min_value=0, max_value=2))
def test_steps_are_due_exactly_when_their_time_has_come(elapsed: float, done: int) -> None:
    t = track(steps_done=done)
    due = due_steps(t, CRITICAL, t.since + elapsed)
    expected = [i for i, step in enumerate(CRITICAL.escalate) if i >= done and elapsed >= float(step.after)]
    assert due == expected


# --- repeat ------------------------------------------------------------------------------


def test_repeat_every_period_while_unacknowledged() -> None:
    t = track(route=1)
    assert due_repeat(t, HIGH, 1000.0 + 3599) is None
    assert due_repeat(t, HIGH, 1000.0 + 3600) == 1
    assert due_repeat(msgspec.structs.replace(t, repeats_done=1), HIGH, 1000.0 + 7199) is None
    assert due_repeat(msgspec.structs.replace(t, repeats_done=1), HIGH, 1000.0 + 7200) == 2


def test_repeat_after_a_long_outage_is_one_reminder() -> None:
    assert due_repeat(track(), HIGH, 1000.0 + 5 * 3600 + 1) == 5
    assert due_repeat(track(repeats_done=5), HIGH, 1000.0 + 5 * 3600 + 1) is None


def test_no_repeat_when_acknowledged_resolved_or_not_configured() -> None:
    assert due_repeat(track(acknowledged=True), HIGH, 1e9) is None
    assert due_repeat(track(alert=alert(status="resolved")), HIGH, 1e9) is None
    assert due_repeat(track(), CRITICAL, 1e9) is None


# --- grouping and digests ----------------------------------------------------------------


def test_group_wait_collects_alerts_until_due() -> None:
    route = Route(channels=["c"], group_wait=Duration(300), group_by=["rule"])
    assert batched(route) and not batched(CRITICAL)
    first = add(None, alert(id="a"), 1, route, now=1000.0)
    assert first.due == 1300.0 and [a.id for a in first.alerts] == ["a"]
    second = add(first, alert(id="b", host="web-2"), 1, route, now=1100.0)
    assert second.due == 1300.0 and [a.id for a in second.alerts] == ["a", "b"]
    again = add(second, alert(id="a", value=99.0), 1, route, now=1200.0)
    assert [(a.id, a.value) for a in again.alerts] == [("b", None), ("a", 99.0)]
    assert [a.id for a in remove(again, "b").alerts] == ["a"]
    assert group_of(alert(), route) == {"rule": "HighCPU"}
    assert batch_key(1, {"rule": "HighCPU"}) != batch_key(1, {"rule": "DiskFull"})
    assert batch_key(1, {"rule": "HighCPU"}) == batch_key(1, {"rule": "HighCPU"})


def test_digest_is_due_at_the_end_of_its_clock_aligned_period() -> None:
    assert due_at(LOW, 7200.0) == 10800.0
    assert due_at(LOW, 7200.0 + 3599) == 10800.0
    assert group_of(alert(), LOW) == {}
    batch = add(None, alert(), 2, LOW, now=9000.0)
    assert batch.digest and batch.due == 10800.0


def test_route_timing_is_validated() -> None:
    with pytest.raises(ValueError, match="digest: a digest route has no group_wait"):
        Route(channels=["c"], digest=Duration(3600), group_wait=Duration(60))
    with pytest.raises(ValueError, match="repeat: must be at least 1s"):
        Route(channels=["c"], repeat=Duration(0.5))


# --- inhibition --------------------------------------------------------------------------

HOST_DOWN = InhibitRule(source={"rule": "HostDown"}, equal=["host"])


def test_a_down_host_mutes_its_other_alerts() -> None:
    down = alert(id="d", fingerprint="fd", rule="HostDown")
    cpu = alert(id="c", fingerprint="fc")
    other_host = alert(id="o", fingerprint="fo", host="web-2")
    assert inhibited_by(cpu, [down], [HOST_DOWN]) == down
    assert inhibited_by(other_host, [down], [HOST_DOWN]) is None
    assert inhibited_by(down, [down], [HOST_DOWN]) is None
    assert inhibited_by(cpu, [msgspec.structs.replace(down, status="resolved")], [HOST_DOWN]) is None
    assert inhibited_by(cpu, [down], []) is None


def test_inhibition_target_narrows_what_is_muted() -> None:
    rule = InhibitRule(source={"rule": "HostDown"}, target={"severity": "low"}, equal=["host"])
    down = alert(id="d", fingerprint="fd", rule="HostDown")
    assert inhibited_by(alert(id="c", fingerprint="fc", severity="critical"), [down], [rule]) is None
    assert inhibited_by(alert(id="c", fingerprint="fc", severity="low"), [down], [rule]) == down


# --- silences ----------------------------------------------------------------------------


def silence(*matchers: Matcher, start: float = 100.0, end: float = 200.0) -> Silence:
    return Silence(
        id="s1", matchers=list(matchers), starts_at=start, ends_at=end, author="ana", comment="maintenance"
    )


def test_silence_matches_while_active() -> None:
    s = silence(Matcher(name="host", value="web-1"))
    assert silenced_by(alert(), [s], 99.0) is None
    assert silenced_by(alert(), [s], 100.0) == s
    assert silenced_by(alert(), [s], 200.0) is None
    assert silenced_by(alert(host="web-2"), [s], 150.0) is None
    assert reason(s) == "silenced by s1 (ana: maintenance)"


def test_silence_matchers_regex_and_negation() -> None:
    regex = silence(Matcher(name="host", op="=~", value="web-[0-9]+"), Matcher(name="team", value="ops"))
    assert silenced_by(alert(host="web-12"), [regex], 150.0) == regex
    assert silenced_by(alert(host="db-1"), [regex], 150.0) is None
    assert silenced_by(alert(labels={"team": "dev"}), [regex], 150.0) is None
    negated = silence(Matcher(name="severity", op="!=", value="critical"))
    assert silenced_by(alert(severity="low"), [negated], 150.0) == negated
    assert silenced_by(alert(), [negated], 150.0) is None


def test_bad_silences_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="not a regular expression"):
        msgspec.json.decode(
            b'{"id":"s","matchers":[{"name":"host","value":"(","regex":true}],'
            b'"starts_at":0,"ends_at":1,"author":"a"}',
            type=Silence,
        )
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"id":"s","matchers":[],"starts_at":0,"ends_at":1,"author":"a"}', type=Silence)


def test_a_catastrophic_silence_regex_does_not_freeze_the_notifier() -> None:
    # `(a+)+$` on a 40-character host took Python's re hours (8 s at 30 characters).
    evil = silence(Matcher(name="host", op="=~", value="(a+)+$"))
    assert silenced_by(alert(host="a" * 39 + "b"), [evil], 150.0) is None
    assert silenced_by(alert(host="aaaa"), [evil], 150.0) == evil


@pytest.mark.parametrize(
    ("pattern", "reason"), [(r"(a)\1", "backreferences are not supported"), ("web(?=-1)", "lookahead")]
)
def test_a_silence_regex_re2_cannot_run_is_refused_with_the_reason(pattern: str, reason: str) -> None:
    data = msgspec.json.encode(
        {
            "id": "s",
            "matchers": [{"name": "host", "value": pattern, "regex": True}],
            "starts_at": 0,
            "ends_at": 1,
            "author": "a",
        }
    )
    with pytest.raises(msgspec.ValidationError, match=f"value: not a regular expression: .*{reason}") as info:
        msgspec.json.decode(data, type=Silence)
    assert "$.matchers[0]" in str(info.value)

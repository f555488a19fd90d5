"""Redelivery and claim timings follow from ``ack_wait``; settings that would let JetStream
or another replica act on a live notifier's work are refused, naming the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from signalfire.config import ConfigError, Duration
from signalfire.notifier.config import NotifyConfig, Timings, load_notify_config


def test_the_lease_follows_ack_wait_and_one_heartbeat_serves_both() -> None:
    timings = NotifyConfig(ack_wait=Duration(30)).timings
    assert (timings.ack_wait, timings.heartbeat, timings.lease) == (30.0, 10.0, 30.0)
    # a dead notifier's messages go out again within about half a minute, not two minutes
    assert timings.takeover == 31.5


def test_an_explicit_claim_lease_is_kept() -> None:
    timings = NotifyConfig(ack_wait=Duration(30), claim_lease=Duration(45)).timings
    assert (timings.lease, timings.takeover) == (45.0, 46.5)


def test_a_busy_message_is_looked_at_again_when_the_claim_could_have_expired_or_within_a_second() -> None:
    timings = Timings(ack_wait=3.0, heartbeat=1.0, lease=3.0)
    assert timings.busy_wait(0.2) == pytest.approx(0.7)  # remaining lease + margin
    assert timings.busy_wait(25.0) == 1.0  # a live holder is usually done sooner: look again
    assert timings.busy_wait(-4.0) == 0.5  # expired already: after the margin for clock skew


def test_the_default_timings_are_consistent() -> None:
    assert NotifyConfig().problems() == []


@pytest.mark.parametrize(
    ("settings", "field", "reason"),
    [
        (
            {"ack_wait": Duration(30), "claim_lease": Duration(10)},
            "claim_lease",
            "must be at least 2/3 of ack_wait (20s)",
        ),
        ({"max_deliver": 1}, "max_deliver", "must be at least 2"),
        ({"ack_wait": Duration(0.5)}, "ack_wait", "must be at least 1s"),
    ],
)
def test_inconsistent_timings_are_refused_naming_the_field(
    settings: dict[str, object], field: str, reason: str
) -> None:
    problems = NotifyConfig(**settings).problems()  # type: ignore[arg-type]
    assert [f for f, _ in problems] == [field]
    assert problems[0][1].startswith(reason)


def test_a_notify_yaml_with_a_too_short_lease_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(textwrap.dedent("ack_wait: 30s\nclaim_lease: 5s\n"))
    with pytest.raises(ConfigError) as info:
        load_notify_config(path, environ={})
    assert str(info.value).startswith(f"{path}:2: claim_lease: must be at least 2/3 of ack_wait (20s)")

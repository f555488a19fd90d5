from __future__ import annotations

import pytest

from signalfire.subjects import Subjects, subject_token


@pytest.mark.parametrize(
    ("host", "token"),
    [
        ("web-1", "web-1"),
        ("web-1.example.com", "web-1_example_com"),
        ("db*>", "db__"),
        ("ünïcode host", "_n_code_host"),
        ("", "_"),
    ],
)
def test_host_names_become_one_safe_token(host: str, token: str) -> None:
    assert subject_token(host) == token


def test_subjects_follow_the_contract() -> None:
    s = Subjects()
    assert s.metrics("web-1.example.com") == "sf.metrics.web-1_example_com"
    assert s.alerts("h") == "sf.alerts.h"
    assert s.actions == "sf.actions.alerts"
    assert s.notifications("ops slack") == "sf.notifications.ops_slack"
    assert s.control("evaluator", "reload") == "sf.control.evaluator.reload"
    assert (s.metrics_stream, s.alerts_stream) == ("SF_METRICS", "SF_ALERTS")
    assert s.bucket("alert_state") == "sf_alert_state"


def test_prefix_is_configurable_and_checked() -> None:
    s = Subjects("acme.mon")
    assert s.metrics("h") == "acme.mon.metrics.h"
    assert s.metrics_stream == "ACME_MON_METRICS"
    assert s.kind_of("acme.mon.alerts.h") == "alerts"
    with pytest.raises(ValueError, match="prefix"):
        Subjects("bad prefix>")

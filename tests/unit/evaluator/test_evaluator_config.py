"""The evaluator's config: each wrong value is refused with the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalfire.config import ConfigError, load_config
from signalfire.evaluator.service import EvaluatorConfig


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tick_interval: 0s\n", ":1: tick_interval: must be greater than zero"),
        ("watch_interval: -1\n", ":1: watch_interval: a duration cannot be negative, got -1"),
        ("max_series_per_rule: 0\n", ":1: max_series_per_rule: must be at least 1"),
        ("rules: []\n", ":1: rules: name at least one rule file, directory or glob"),
        ("metrics_listen: localhost\n", ":1: metrics_listen: "),
    ],
)
def test_bad_values_name_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "evaluator.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(EvaluatorConfig, path, environ={})
    assert str(caught.value).startswith(f"{path}{message}")


def test_watching_can_be_turned_off_and_the_defaults_need_no_file() -> None:
    assert float(load_config(EvaluatorConfig, None, environ={"SF_WATCH_INTERVAL": "0"}).watch_interval) == 0.0
    config = load_config(EvaluatorConfig, None, environ={})
    assert config.rules == ["rules/default.yaml"]
    assert config.metrics_listen is None


def test_evaluators_are_partitioned_unless_told_not_to_be() -> None:
    assert load_config(EvaluatorConfig, None, environ={}).partitions == 16
    assert load_config(EvaluatorConfig, None, environ={"SF_PARTITIONS": "0"}).partitions == 0

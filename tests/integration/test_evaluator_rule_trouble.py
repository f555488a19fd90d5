"""Rules in trouble while the evaluator runs: a template that fails at run time, a rule file
that disappears. The alerts go on; the operator is told what went wrong and where."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.evaluator.service import EvaluatorConfig
from signalfire.events import AlertEvent, MetricBatch, Sample, decode, encode
from tests.support.evaluator import running_evaluator
from tests.support.polling import wait_until


def _config(nats_config: NatsConfig, rules: Path, watch: float = 0) -> EvaluatorConfig:
    return EvaluatorConfig(
        nats=nats_config, rules=[str(rules)], tick_interval=Duration(0.05), watch_interval=Duration(watch)
    )


async def _hot(nc, nats_config: NatsConfig, host: str = "h1") -> None:
    batch = MetricBatch(host=host, time=1.0, samples=[Sample(name="temp", value=60.0)])
    await nc.publish(nats_config.subjects.metrics(host), encode(batch))
    await nc.flush()


async def test_a_template_that_fails_at_run_time_sends_the_raw_text_and_says_so(
    nc, nats_config: NatsConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "rules.yaml"
    # `round` of a host name: valid Jinja, a TypeError only when rendered.
    rules.write_text(
        "rules:\n  - {name: Hot, metric: temp, condition: '> 50', severity: low,\n"
        "     annotations: {summary: '{{ host | round }} is hot', runbook_url: 'https://wiki/{{ host }}'}}\n"
    )
    sub = await nc.jetstream().subscribe(nats_config.subjects.all_alerts, ordered_consumer=True)
    caplog.set_level(logging.WARNING, logger="signalfire.evaluator")
    async with running_evaluator(_config(nats_config, rules)):
        await _hot(nc, nats_config)
        alert = decode((await sub.next_msg(timeout=10)).data, AlertEvent)
    assert alert.annotations == {"summary": "{{ host | round }} is hot", "runbook_url": "https://wiki/h1"}
    [warning] = [r for r in caplog.records if "template" in r.getMessage()]
    assert warning.getMessage() == "annotation template failed; sent the raw template"
    assert (warning.rule, warning.annotation) == ("Hot", "summary")  # type: ignore[attr-defined]


async def test_a_rule_file_that_disappears_keeps_the_rules_running(
    nc, nats_config: NatsConfig, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: Hot, metric: temp, condition: '> 50', severity: low}\n")
    sub = await nc.jetstream().subscribe(nats_config.subjects.all_alerts, ordered_consumer=True)
    async with running_evaluator(_config(nats_config, rules, watch=0.05)) as service:
        rules.unlink()
        await wait_until(
            lambda: (service.describe()["last_reload"] or {}).get("ok") is False, "the failed reload"
        )
        assert str(rules) in service.describe()["last_reload"]["error"]
        await _hot(nc, nats_config)
        alert = decode((await sub.next_msg(timeout=10)).data, AlertEvent)
        assert (alert.rule, alert.status) == ("Hot", "firing")
        assert [r.name for r in service.rules] == ["Hot"]

"""``kind: event_count``: how many events of one type arrived within ``window``."""

from __future__ import annotations

from signalfire.config import Duration
from signalfire.evaluator.rules.base import ConditionRuleSpec, RuleCheck
from signalfire.evaluator.rules.rule import Rule
from signalfire.events import MetricName


class EventCountSpec(ConditionRuleSpec, tag="event_count", kw_only=True):
    """An event_count rule as written."""

    groups = ("host", "series", "fleet")

    event: MetricName
    window: Duration

    def compile(self, check: RuleCheck) -> Rule | None:
        window = check.window(self.window)
        group_by = check.group_by(self)
        condition, resolve = self.conditions(check)
        return check.build(self, condition, resolve, event=self.event, window=window, group_by=group_by)

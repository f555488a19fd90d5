"""``kind: threshold`` (the default): a series' value, or its aggregate over ``window``,
judged by ``condition``."""

from __future__ import annotations

from signalfire.config import Duration
from signalfire.evaluator.rules.base import AGGREGATES, ConditionRuleSpec, RuleCheck
from signalfire.evaluator.rules.rule import Rule
from signalfire.events import MetricName


class ThresholdSpec(ConditionRuleSpec, tag="threshold", kw_only=True):
    """A threshold rule as written."""

    groups = ("series", "host", "fleet")

    metric: MetricName
    aggregate: str | None = None
    window: Duration | None = None

    def compile(self, check: RuleCheck) -> Rule | None:
        aggregate = check.aggregate(self, self.aggregate, AGGREGATES, default="last")
        window = check.window(self.window)
        if aggregate != "last" and self.window is None:
            check.add("window", f"aggregate {aggregate} needs a `window` (e.g. window: 1m)")
        group_by = check.group_by(self)
        condition, resolve = self.conditions(check)
        return check.build(
            self,
            condition,
            resolve,
            metric=self.metric,
            aggregate=aggregate,
            window=window,
            group_by=group_by,
        )

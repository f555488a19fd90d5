"""``kind: change``: how much a series grew (``increase``, counter-aware), how fast
(``rate``) or by how much it moved (``delta``) over ``window``."""

from __future__ import annotations

from signalfire.config import Duration
from signalfire.evaluator.rules.base import ConditionRuleSpec, RuleCheck
from signalfire.evaluator.rules.rule import Rule
from signalfire.events import MetricName

#: Aggregates a ``change`` rule takes; the first is its default.
CHANGE_AGGREGATES: tuple[str, ...] = ("increase", "rate", "delta")


class ChangeSpec(ConditionRuleSpec, tag="change", kw_only=True):
    """A change rule as written."""

    groups = ("series", "host", "fleet")

    metric: MetricName
    window: Duration
    aggregate: str | None = None

    def compile(self, check: RuleCheck) -> Rule | None:
        aggregate = check.aggregate(self, self.aggregate, CHANGE_AGGREGATES, default=CHANGE_AGGREGATES[0])
        window = check.window(self.window)
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

"""``kind: absent``: a host, or a series of ``metric``, silent for ``for``."""

from __future__ import annotations

import msgspec

from signalfire.config import Duration
from signalfire.evaluator.rules.base import BaseRuleSpec, RuleCheck
from signalfire.evaluator.rules.conditions import Condition
from signalfire.evaluator.rules.rule import Rule
from signalfire.events import MetricName


class AbsentSpec(BaseRuleSpec, tag="absent", kw_only=True):
    """An absent rule as written. It has no ``condition``: the silence ``for`` is its threshold."""

    groups = ("host", "series", "fleet")

    #: Without a metric the rule watches hosts (any batch counts as data).
    metric: MetricName | None = None
    #: The silence that fires; required here, as 0 would fire at once.
    for_: Duration = msgspec.field(name="for")

    def default_group(self) -> str:
        return "series" if self.metric is not None else "host"

    def compile(self, check: RuleCheck) -> Rule | None:
        if not self.for_:
            check.add("", "an absent rule needs `for`")
        group_by = check.group_by(self)
        if group_by == "series" and self.metric is None:
            check.add("group_by", "an absent rule grouped by series needs a `metric`")
        silence = float(self.for_)
        # The state machine's `for` is 0: the silence itself is the condition.
        return check.build(
            self,
            Condition(">=", silence),
            None,
            metric=self.metric or "",
            for_=0.0,
            silence=silence,
            group_by=group_by,
        )

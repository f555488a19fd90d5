"""``kind: ratio``: the sum of the numerator's samples over the sum of the denominator's
within ``window``, per host or fleet-wide."""

from __future__ import annotations

from signalfire.config import Duration
from signalfire.evaluator.rules.base import ConditionRuleSpec, RuleCheck
from signalfire.evaluator.rules.rule import Rule


class RatioSpec(ConditionRuleSpec, tag="ratio", kw_only=True):
    """A ratio rule as written; ``numerator`` and ``denominator`` are selectors
    (``http.requests{status=~"5.."}``)."""

    # The two sides are different series, so there is no one series to group by.
    groups = ("host", "fleet")

    numerator: str
    denominator: str
    window: Duration

    def compile(self, check: RuleCheck) -> Rule | None:
        window = check.window(self.window)
        group_by = check.group_by(self)
        numerator = check.selector("numerator", self.numerator)
        denominator = check.selector("denominator", self.denominator)
        condition, resolve = self.conditions(check)
        return check.build(
            self,
            condition,
            resolve,
            numerator=numerator,
            denominator=denominator,
            window=window,
            group_by=group_by,
        )

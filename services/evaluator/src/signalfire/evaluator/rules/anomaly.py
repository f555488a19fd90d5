"""``kind: anomaly``: how many standard deviations a sample lies from its series' EWMA
baseline, judged once ``warmup`` samples have built the baseline."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from signalfire.evaluator.rules.base import ConditionRuleSpec, RuleCheck
from signalfire.evaluator.rules.rule import Rule
from signalfire.events import MetricName

DEFAULT_ALPHA = 0.1
DEFAULT_WARMUP = 30


class AnomalySpec(ConditionRuleSpec, tag="anomaly", kw_only=True):
    """An anomaly rule as written."""

    # A baseline belongs to one series: pooling hosts would mix unrelated baselines.
    groups = ("series",)

    metric: MetricName
    #: EWMA smoothing factor: the weight of each new sample in the baseline. ``None`` (or
    #: ``alpha: null``) is :data:`DEFAULT_ALPHA`, so a rule reads back as it was written.
    alpha: Annotated[float, Meta(gt=0, le=1)] | None = None
    #: Samples that build the baseline before any is judged; ``None`` is :data:`DEFAULT_WARMUP`.
    warmup: Annotated[int, Meta(ge=1)] | None = None

    def compile(self, check: RuleCheck) -> Rule | None:
        group_by = check.group_by(self)
        condition, resolve = self.conditions(check)
        return check.build(
            self,
            condition,
            resolve,
            metric=self.metric,
            alpha=self.alpha if self.alpha is not None else DEFAULT_ALPHA,
            warmup=self.warmup if self.warmup is not None else DEFAULT_WARMUP,
            group_by=group_by,
        )

"""The rule file format (``docs/rules.md``): YAML in, validated and compiled :class:`Rule` out.

One module per rule kind (``threshold``, ``change``, ``anomaly``, ``ratio``, ``event_count``,
``absent``), each with its spec struct, its checks and its compile step; :mod:`.kinds` joins
them in the tagged union a rule is decoded into. What the kinds share: :mod:`.base` (the
common fields and checks), :mod:`.conditions`, :mod:`.matchers`, :mod:`.templates`,
:mod:`.rule` (the compiled :class:`Rule`) and :mod:`.files` (loading rule files).
"""

from __future__ import annotations

from signalfire.evaluator.rules.absent import AbsentSpec
from signalfire.evaluator.rules.anomaly import AnomalySpec
from signalfire.evaluator.rules.base import (
    AGGREGATES,
    DEFAULT_MAX_SERIES,
    FLEET,
    BaseRuleSpec,
    ConditionRuleSpec,
    FlapSpec,
)
from signalfire.evaluator.rules.change import CHANGE_AGGREGATES, ChangeSpec
from signalfire.evaluator.rules.conditions import Condition, parse_condition
from signalfire.evaluator.rules.event_count import EventCountSpec
from signalfire.evaluator.rules.files import RuleErrors, RuleFile, expand_paths, load_rules, parse_rule_text
from signalfire.evaluator.rules.kinds import KINDS, RuleSpec
from signalfire.evaluator.rules.matchers import Matcher, Selector, parse_matcher, parse_selector
from signalfire.evaluator.rules.ratio import RatioSpec
from signalfire.evaluator.rules.rule import Rule
from signalfire.evaluator.rules.templates import (
    MAX_ANNOTATION_CHARS,
    TEMPLATE_VARIABLES,
    template_environment,
)
from signalfire.evaluator.rules.threshold import ThresholdSpec

__all__ = [
    "AGGREGATES",
    "CHANGE_AGGREGATES",
    "DEFAULT_MAX_SERIES",
    "FLEET",
    "KINDS",
    "MAX_ANNOTATION_CHARS",
    "TEMPLATE_VARIABLES",
    "AbsentSpec",
    "AnomalySpec",
    "BaseRuleSpec",
    "ChangeSpec",
    "Condition",
    "ConditionRuleSpec",
    "EventCountSpec",
    "FlapSpec",
    "Matcher",
    "RatioSpec",
    "Rule",
    "RuleErrors",
    "RuleFile",
    "RuleSpec",
    "Selector",
    "ThresholdSpec",
    "expand_paths",
    "load_rules",
    "parse_condition",
    "parse_matcher",
    "parse_rule_text",
    "parse_selector",
    "template_environment",
]

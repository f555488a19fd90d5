"""What every rule kind shares: the fields every rule takes and the checks every kind's
compile step builds on.

A kind is a :class:`BaseRuleSpec` subclass in a module of its own (``threshold.py``, …): its
msgspec ``tag`` is the ``kind:`` it is written with, its fields are the ones only it takes,
``groups`` the groupings it allows, and its :meth:`~BaseRuleSpec.compile` checks what a type
cannot say and hands its own :class:`Rule` fields to :meth:`RuleCheck.build`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import jinja2
import msgspec
from jinja2.sandbox import SandboxedEnvironment
from msgspec import Meta

from signalfire.config import ConfigError, Duration, line_of
from signalfire.evaluator.rules.conditions import Condition, parse_condition
from signalfire.evaluator.rules.matchers import Matcher, Selector, parse_matcher, parse_selector
from signalfire.evaluator.rules.rule import Rule
from signalfire.evaluator.rules.templates import compile_templates
from signalfire.events import SEVERITIES, LabelName, LabelValue

#: Window aggregates; ``last`` (the default) needs no window.
AGGREGATES: tuple[str, ...] = (
    "last",
    "avg",
    "min",
    "max",
    "sum",
    "count",
    "rate",
    "increase",
    "delta",
    "p50",
    "p95",
    "p99",
)

#: The host name of fleet-wide alerts (``group_by: fleet``).
FLEET = "fleet"

#: Series one rule may track unless the rule or the evaluator's config says otherwise.
DEFAULT_MAX_SERIES = 100_000

RuleName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")]
AnnotationName = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class FlapSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``flap: {changes: 4, window: 10m}``: more than ``changes`` transitions within ``window``
    hold the alert firing, labelled ``flapping: "true"``."""

    changes: Annotated[int, Meta(ge=1)]
    window: Duration


class BaseRuleSpec(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, tag_field="kind"
):
    """The fields every kind of rule takes. Field meanings are in ``docs/rules.md``."""

    #: The ``group_by`` values this kind takes; the first is its default.
    groups: ClassVar[tuple[str, ...]] = ("series",)

    name: RuleName
    severity: str
    where: dict[LabelName, str] = {}
    group_by: str | None = None
    for_: Duration = msgspec.field(default=Duration(0), name="for")
    keep_firing_for: Duration = Duration(0)
    cooldown: Duration = Duration(0)
    flap: FlapSpec | None = None
    max_series: Annotated[int, Meta(ge=1)] | None = None
    labels: dict[LabelName, LabelValue] = {}
    annotations: dict[AnnotationName, str] = {}

    @property
    def kind(self) -> str:
        """The ``kind:`` this rule is written with (its struct's tag)."""
        return str(type(self).__struct_config__.tag)

    def default_group(self) -> str:
        """``group_by`` when the rule does not say."""
        return self.groups[0]

    def compile(self, check: RuleCheck) -> Rule | None:
        """The runtime rule, or ``None`` when ``check`` was given errors."""
        raise NotImplementedError(f"{type(self).__name__} has no compile step")


class ConditionRuleSpec(BaseRuleSpec, kw_only=True):
    """Kinds that judge a value against a ``condition`` (all but ``absent``)."""

    condition: str
    resolve: str | None = None

    def conditions(self, check: RuleCheck) -> tuple[Condition | None, Condition | None]:
        """``condition`` and ``resolve`` parsed; each ``None`` when absent or wrong."""
        condition = check.condition("condition", self.condition)
        resolve = check.condition("resolve", self.resolve) if self.resolve is not None else None
        if condition is not None and resolve is not None and condition.overlaps(resolve):
            check.add(
                "resolve",
                f"{resolve} overlaps the condition {condition}: a value could both fire and resolve; "
                "use a resolve condition on the other side of the threshold",
            )
        return condition, resolve


def a_kind(kind: str) -> str:
    """``"a threshold"``, ``"an absent"``: how messages name a kind of rule."""
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


class FileErrors:
    """Collects errors of one file with the line of each field."""

    def __init__(self, source: str, lines: Mapping[str, int]) -> None:
        self.source = source
        self.lines = lines
        self.errors: list[ConfigError] = []

    def add(self, path: str, message: str) -> None:
        """``path`` is a field path like ``rules[2].condition``."""
        line = line_of(f"$.{path}", self.lines)
        self.errors.append(ConfigError(message, source=self.source, line=line, field=path))


class RuleCheck:
    """Compiling rule number ``index`` of a file: errors go to ``file``, each at its field."""

    def __init__(self, file: FileErrors, index: int, env: SandboxedEnvironment) -> None:
        self.file = file
        self.index = index
        self.env = env
        self.where = f"rules[{index}]"
        self._before = len(file.errors)

    @property
    def failed(self) -> bool:
        """Whether this rule has errors."""
        return len(self.file.errors) > self._before

    def add(self, field: str, message: str) -> None:
        """An error at ``field`` of this rule (``""``: the rule itself)."""
        self.file.add(f"{self.where}.{field}" if field else self.where, message)

    def condition(self, field: str, text: str) -> Condition | None:
        """``text`` parsed as a condition, or ``None`` after an error at ``field``."""
        try:
            return parse_condition(text)
        except ValueError as exc:
            self.add(field, str(exc))
            return None

    def selector(self, field: str, text: str) -> Selector | None:
        """``text`` parsed as a selector, or ``None`` after an error at ``field``."""
        try:
            return parse_selector(text)
        except ValueError as exc:
            self.add(field, str(exc))
            return None

    def window(self, window: Duration | None) -> float:
        """``window`` in seconds (0 when not written); it must be longer than 0s."""
        seconds = float(window) if window is not None else 0.0
        if window is not None and seconds <= 0:
            self.add("window", "must be longer than 0s")
        return seconds

    def aggregate(
        self, spec: BaseRuleSpec, written: str | None, allowed: tuple[str, ...], default: str
    ) -> str:
        """The aggregate ``written`` (``default`` when not), which must be one of ``allowed``."""
        aggregate = written or default
        if written is not None and aggregate not in allowed:
            self.add(
                "aggregate",
                f"unknown aggregate {aggregate!r}; {a_kind(spec.kind)} rule takes {', '.join(allowed)}",
            )
        return aggregate

    def group_by(self, spec: BaseRuleSpec) -> str:
        """The rule's grouping, which must be one its kind takes."""
        group_by = spec.group_by or spec.default_group()
        if group_by not in spec.groups:
            self.add(
                "group_by",
                f"unknown group {group_by!r}; {a_kind(spec.kind)} rule takes {', '.join(spec.groups)}",
            )
        return group_by

    def build(
        self, spec: BaseRuleSpec, condition: Condition | None, resolve: Condition | None, **kind: Any
    ) -> Rule | None:
        """Check what every kind shares and compile the rule; ``None`` when it has errors.

        ``kind`` holds the :class:`Rule` fields the kind sets (``metric``, ``window``, …); a
        kind without a written ``resolve`` resolves on the negated ``condition``.
        """
        if spec.severity not in SEVERITIES:
            self.add("severity", f"unknown severity {spec.severity!r}; allowed: {', '.join(SEVERITIES)}")
        flap_changes, flap_window = self._flap(spec.flap)
        matchers = self._matchers(spec.where)
        annotations = self._annotations(spec.annotations)
        if self.failed or condition is None:
            return None
        fields: dict[str, Any] = {
            "metric": "",
            "for_": float(spec.for_),
            "resolve": resolve if resolve is not None else condition.negated(),
            **kind,
        }
        return Rule(
            name=spec.name,
            kind=spec.kind,
            where=matchers,
            condition=condition,
            severity=spec.severity,  # type: ignore[arg-type]  # checked against SEVERITIES above
            labels=dict(spec.labels),
            annotations=annotations,
            spec=spec,
            source=self.file.source,
            line=line_of(f"$.{self.where}", self.file.lines),
            index=self.index,
            keep_firing_for=float(spec.keep_firing_for),
            cooldown=float(spec.cooldown),
            flap_changes=flap_changes,
            flap_window=flap_window,
            max_series=spec.max_series,
            **fields,
        )

    def _flap(self, flap: FlapSpec | None) -> tuple[int, float]:
        """Flap damping's (changes, window); (0, 0.0) when off."""
        if flap is None:
            return 0, 0.0
        if flap.window <= 0:
            self.add("flap.window", "must be longer than 0s")
        return flap.changes, float(flap.window)

    def _annotations(self, texts: Mapping[str, str]) -> dict[str, jinja2.Template]:
        templates, refused = compile_templates(texts, self.env)
        for key, message in refused.items():
            self.add(f"annotations.{key}", message)
        return templates

    def _matchers(self, where: Mapping[str, str]) -> tuple[Matcher, ...]:
        matchers: list[Matcher] = []
        for label, written in where.items():
            try:
                matchers.append(parse_matcher(label, written))
            except ValueError as exc:
                self.add(f"where.{label}", str(exc))
        return tuple(matchers)

"""The rule file format (``docs/rules.md``): YAML in, validated and compiled :class:`Rule` out.

Loading happens in two steps. msgspec checks the shape of each rule against
:class:`RuleSpec` (types, unknown fields); then :func:`compile_rule` checks what a type cannot
say (the condition's syntax, the kind, the severity, matchers, templates) and builds the
:class:`Rule` the engine runs. Every error names the file, the line and the field::

    rules/default.yaml:14: rules[2].condition: expected an operator and a number like "> 80", got '>> 80'

All errors of a file are reported together, not only the first.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import jinja2
import jinja2.meta
import msgspec
from jinja2.sandbox import SandboxedEnvironment
from msgspec import Meta

from signalfire.config import ConfigError, Duration, convert, line_of, parse_yaml
from signalfire.events import SEVERITIES, LabelName, LabelValue, MetricName, Severity
from signalfire.matchers import Matcher as SharedMatcher
from signalfire.matchers import matches
from signalfire.regex import RegexError, compile_regex

#: Rule kinds this evaluator runs; :mod:`signalfire.evaluator.engine` has one branch each.
KINDS: tuple[str, ...] = ("threshold", "change", "anomaly", "ratio", "event_count", "absent")

#: The fields each kind requires (beyond name and severity).
_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "threshold": ("metric", "condition"),
    "change": ("metric", "condition", "window"),
    "anomaly": ("metric", "condition"),
    "ratio": ("numerator", "denominator", "condition", "window"),
    "event_count": ("event", "condition", "window"),
    "absent": ("for_",),
}

#: Fields that only some kinds take; any other kind rejects them, so a setting is never ignored.
_KIND_ONLY: dict[str, tuple[str, ...]] = {
    "metric": ("threshold", "change", "anomaly", "absent"),
    "aggregate": ("threshold", "change"),
    "window": ("threshold", "change", "ratio", "event_count"),
    "numerator": ("ratio",),
    "denominator": ("ratio",),
    "event": ("event_count",),
    "alpha": ("anomaly",),
    "warmup": ("anomaly",),
    "condition": ("threshold", "change", "anomaly", "ratio", "event_count"),
    "resolve": ("threshold", "change", "anomaly", "ratio", "event_count"),
}

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
#: Aggregates a ``change`` rule takes (``increase`` is its default).
CHANGE_AGGREGATES: tuple[str, ...] = ("increase", "rate", "delta")

#: How series are grouped into alerts, per kind; the first is the kind's default.
GROUPS: dict[str, tuple[str, ...]] = {
    "threshold": ("series", "host", "fleet"),
    "change": ("series", "host", "fleet"),
    "anomaly": ("series",),
    "ratio": ("host", "fleet"),
    "event_count": ("host", "series", "fleet"),
    "absent": ("host", "series", "fleet"),
}

#: The host name of fleet-wide alerts (``group_by: fleet``).
FLEET = "fleet"

#: Series one rule may track unless the rule or the evaluator's config says otherwise.
DEFAULT_MAX_SERIES = 100_000

#: Variables a template may use; anything else is a load error (a typo would render empty).
TEMPLATE_VARIABLES: tuple[str, ...] = ("value", "threshold", "host", "labels", "rule")

#: AlertEvent annotations are capped at this many characters (see ``signalfire.events``).
MAX_ANNOTATION_CHARS = 16384

RuleName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")]
AnnotationName = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class FlapSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``flap: {changes: 4, window: 10m}``: more than ``changes`` transitions within ``window``
    hold the alert firing, labelled ``flapping: "true"``."""

    changes: Annotated[int, Meta(ge=1)]
    window: Duration


class RuleSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One rule as written in the file. Field meanings are in ``docs/rules.md``."""

    name: RuleName
    severity: str
    kind: str = "threshold"
    metric: MetricName | None = None
    where: dict[LabelName, str] = {}
    aggregate: str | None = None
    window: Duration | None = None
    group_by: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    event: MetricName | None = None
    alpha: Annotated[float, Meta(gt=0, le=1)] | None = None
    warmup: Annotated[int, Meta(ge=1)] | None = None
    condition: str | None = None
    for_: Duration = msgspec.field(default=Duration(0), name="for")
    resolve: str | None = None
    keep_firing_for: Duration = Duration(0)
    cooldown: Duration = Duration(0)
    flap: FlapSpec | None = None
    max_series: Annotated[int, Meta(ge=1)] | None = None
    labels: dict[LabelName, LabelValue] = {}
    annotations: dict[AnnotationName, str] = {}


class RuleFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A whole rule file: ``rules:`` and a list of rules."""

    rules: list[RuleSpec] = []


# Conditions --------------------------------------------------------------------------------

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_NEGATION = {">": "<=", ">=": "<", "<": ">=", "<=": ">", "==": "!=", "!=": "=="}
_CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Condition:
    """A comparison of a sample's value with a threshold: ``> 80``, ``<= 0.5``, ``!= 1``."""

    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.threshold)

    def negated(self) -> Condition:
        return Condition(_NEGATION[self.op], self.threshold)

    def overlaps(self, other: Condition) -> bool:
        """Whether some value satisfies both conditions.

        Both conditions change truth only at their thresholds, so testing the thresholds,
        the point between them and a point outside each end covers every region.
        """
        low, high = sorted((self.threshold, other.threshold))
        candidates = (low - 1.0, low, (low + high) / 2, high, high + 1.0)
        return any(self.holds(x) and other.holds(x) for x in candidates)

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


def parse_condition(text: str) -> Condition:
    """``"> 80"`` → ``Condition(">", 80.0)``; raises ``ValueError`` saying what is expected."""
    match = _CONDITION.match(text)
    threshold = None
    if match:
        try:
            threshold = float(match.group(2))
        except ValueError:
            threshold = None
    if match is None or threshold is None or not math.isfinite(threshold):
        raise ValueError(
            f'expected an operator (>, >=, <, <=, ==, !=) and a number like "> 80", got {text!r}'
        )
    return Condition(match.group(1), threshold)


# Label matchers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    """One ``where`` entry. A label the series lacks is matched as the empty string."""

    label: str
    written: str
    negate: bool
    test: Callable[[str], bool] = field(repr=False, compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.test(labels.get(self.label, "")) != self.negate


def parse_matcher(label: str, written: str) -> Matcher:
    """``"web-1"`` exact, ``"web-*"`` glob, ``"~^db-"`` regex (RE2, searched), ``"!…"`` negates any.

    Raises ``ValueError`` for a regular expression RE2 refuses (see :mod:`signalfire.regex`).
    """
    negate = written.startswith("!")
    pattern = written[1:] if negate else written
    test: Callable[[str], bool]
    if pattern.startswith("~"):
        try:
            test = compile_regex(pattern[1:]).search
        except RegexError as exc:
            raise ValueError(f"invalid regular expression {exc}") from None
    elif any(c in pattern for c in "*?["):
        test = lambda value: fnmatch.fnmatchcase(value, pattern)  # noqa: E731
    else:
        test = pattern.__eq__
    return Matcher(label, written, negate, test)


_SELECTOR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.:-]*)\s*(?:\{(.*)\})?\s*$")
_SELECTOR_MATCHER = re.compile(
    r'\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)'
)


@dataclass(frozen=True)
class Selector:
    """A metric and label matchers, written like PromQL: ``http.requests{status=~"5.."}``.

    The matchers are the shared ones (:mod:`signalfire.matchers`, docs/matchers.md): ``=`` and
    ``!=`` compare exactly; ``=~`` and ``!~`` match the whole value (RE2 syntax); a missing
    label is the empty string.
    """

    metric: str
    matchers: tuple[SharedMatcher, ...]
    written: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return matches(self.matchers, labels)


def parse_selector(text: str) -> Selector:
    """``name{label="v", label=~"re", label!="v", label!~"re"}``; raises ``ValueError``.

    Inside the quotes only ``\\"`` is an escape (every other backslash is kept as written),
    as selectors always read it: a rule file keeps its meaning.
    """
    match = _SELECTOR.match(text)
    if match is None:
        raise ValueError(
            f'expected a metric and optional matchers like http.requests{{status=~"5.."}}, got {text!r}'
        )
    body = match.group(2) or ""
    matchers: list[SharedMatcher] = []
    pos = 0
    while pos < len(body.rstrip()):
        item = _SELECTOR_MATCHER.match(body, pos)
        if item is None:
            raise ValueError(
                f'cannot read the label matchers at {body[pos:]!r}; write label="value" or label=~"regex"'
            )
        label, op, value = item.group(1), item.group(2), item.group(3).replace('\\"', '"')
        try:
            matchers.append(SharedMatcher(name=label, op=op, value=value))  # type: ignore[arg-type]
        except ValueError as exc:  # only a regex RE2 refuses: the op and label are read above
            reason = str(exc).removeprefix("value: not a regular expression: ")
            raise ValueError(f"invalid regular expression {reason}") from None
        pos = item.end()
    return Selector(match.group(1), tuple(matchers), text.strip())


# Templates ---------------------------------------------------------------------------------


def template_environment() -> SandboxedEnvironment:
    """The sandbox annotations render in: no attribute access to internals, no I/O."""
    return SandboxedEnvironment(autoescape=False, keep_trailing_newline=False)


# Rules -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Rule:
    """A validated, compiled rule: what the state machine and the service run."""

    name: str
    kind: str
    #: The metric a sample must have; empty for kinds without one (ratio, event_count, absent
    #: per host).
    metric: str
    where: tuple[Matcher, ...]
    #: What holds while the alert is active. For ``absent`` it is ``>= <for>`` on the seconds
    #: since the series was last seen.
    condition: Condition
    resolve: Condition
    #: How long ``condition`` must hold before firing (the state machine's ``for``); 0 for
    #: ``absent``, whose ``for`` is :attr:`silence`.
    for_: float
    severity: Severity
    labels: dict[str, str]
    annotations: dict[str, jinja2.Template]
    spec: RuleSpec
    aggregate: str = "last"
    window: float = 0.0
    group_by: str = "series"
    numerator: Selector | None = None
    denominator: Selector | None = None
    event: str = ""
    alpha: float = 0.1
    warmup: int = 30
    #: ``absent``: seconds without data before the alert fires.
    silence: float = 0.0
    keep_firing_for: float = 0.0
    cooldown: float = 0.0
    #: Flap damping: more than ``flap_changes`` transitions within ``flap_window`` (0: off).
    flap_changes: int = 0
    flap_window: float = 0.0
    max_series: int | None = None
    #: The file the rule comes from, the line it starts on and its index in ``rules:``.
    source: str = ""
    line: int | None = None
    index: int = 0

    @property
    def origin(self) -> str:
        """``file:line`` where the rule is defined."""
        return f"{self.source}:{self.line}" if self.line is not None else self.source

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a series with these labels (``host`` included) is one this rule watches."""
        return all(m.matches(labels) for m in self.where)

    def render_annotations(self, context: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
        """Rendered annotations and the names of those that failed to render.

        A template that fails at run time (a filter given a wrong type, …) yields its raw
        text, so an alert always goes out; the caller counts the failures.
        """
        rendered: dict[str, str] = {}
        failed: list[str] = []
        for key, template in self.annotations.items():
            try:
                text = template.render(context)
            except Exception:  # any template error must not stop an alert
                text = self.spec.annotations[key]
                failed.append(key)
            rendered[key] = text[:MAX_ANNOTATION_CHARS]
        return rendered, failed

    def describe(self) -> dict[str, Any]:
        """The rule as written (JSON-ready), with its effective resolve condition and origin."""
        data: dict[str, Any] = msgspec.to_builtins(self.spec, enc_hook=_plain)
        data["kind"] = self.kind
        if self.kind != "absent":
            data["resolve"] = str(self.resolve)
        data["for"] = float(self.spec.for_)
        data["group_by"] = self.group_by
        if self.kind in ("threshold", "change"):
            data["aggregate"] = self.aggregate
        data["origin"] = self.origin
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, float):  # Duration
        return float(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


class RuleErrors(ConfigError):
    """One or more rule files are invalid; ``errors`` has one :class:`ConfigError` each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


def _reason(error: ConfigError) -> str:
    """The message of ``error`` without its ``file:line: field:`` prefix."""
    prefix = str(ConfigError("", source=error.source, line=error.line, field=error.field))
    return str(error)[len(prefix) :]


class _FileErrors:
    """Collects errors of one file with the line of each field."""

    def __init__(self, source: str, lines: Mapping[str, int]) -> None:
        self.source = source
        self.lines = lines
        self.errors: list[ConfigError] = []

    def add(self, path: str, message: str) -> None:
        """``path`` is a field path like ``rules[2].condition``."""
        line = line_of(f"$.{path}", self.lines)
        self.errors.append(ConfigError(message, source=self.source, line=line, field=path))


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def compile_rule(spec: RuleSpec, index: int, errors: _FileErrors, env: SandboxedEnvironment) -> Rule | None:
    """Check and compile rule number ``index`` of a file; ``None`` (and ``errors``) when invalid."""
    where = f"rules[{index}]"
    count = len(errors.errors)
    kind = spec.kind
    if kind not in KINDS:
        errors.add(f"{where}.kind", f"unknown kind {kind!r}; allowed kinds: {', '.join(KINDS)}")
        return None
    if spec.severity not in SEVERITIES:
        errors.add(
            f"{where}.severity", f"unknown severity {spec.severity!r}; allowed: {', '.join(SEVERITIES)}"
        )
    for name in _KIND_FIELDS[kind]:
        value = getattr(spec, name)
        if value is None or (name == "for_" and not value):
            written = "for" if name == "for_" else name
            errors.add(f"{where}", f"{_a(kind)} rule needs `{written}`")
    for name, kinds in _KIND_ONLY.items():
        if getattr(spec, name) is not None and kind not in kinds:
            errors.add(f"{where}.{name}", f"`{name}` applies to {', '.join(kinds)} rules, not {kind}")

    aggregate = spec.aggregate or ("increase" if kind == "change" else "last")
    allowed = CHANGE_AGGREGATES if kind == "change" else AGGREGATES
    if spec.aggregate is not None and aggregate not in allowed:
        errors.add(
            f"{where}.aggregate",
            f"unknown aggregate {aggregate!r}; {_a(kind)} rule takes {', '.join(allowed)}",
        )
    window = float(spec.window) if spec.window is not None else 0.0
    if spec.window is not None and window <= 0:
        errors.add(f"{where}.window", "must be longer than 0s")
    if kind == "threshold" and aggregate != "last" and spec.window is None:
        errors.add(f"{where}.window", f"aggregate {aggregate} needs a `window` (e.g. window: 1m)")
    groups = GROUPS[kind]
    group_by = spec.group_by or groups[0]
    if kind == "absent" and spec.group_by is None and spec.metric is not None:
        group_by = "series"
    if group_by not in groups:
        errors.add(
            f"{where}.group_by", f"unknown group {group_by!r}; {_a(kind)} rule takes {', '.join(groups)}"
        )
    if kind == "absent" and group_by == "series" and spec.metric is None:
        errors.add(f"{where}.group_by", "an absent rule grouped by series needs a `metric`")

    selectors: dict[str, Selector] = {}
    for side in ("numerator", "denominator"):
        text = getattr(spec, side)
        if text is not None:
            try:
                selectors[side] = parse_selector(text)
            except ValueError as exc:
                errors.add(f"{where}.{side}", str(exc))

    flap_changes, flap_window = 0, 0.0
    if spec.flap is not None:
        flap_changes, flap_window = spec.flap.changes, float(spec.flap.window)
        if flap_window <= 0:
            errors.add(f"{where}.flap.window", "must be longer than 0s")

    condition = resolve = None
    if spec.condition is not None:
        try:
            condition = parse_condition(spec.condition)
        except ValueError as exc:
            errors.add(f"{where}.condition", str(exc))
    if spec.resolve is not None:
        try:
            resolve = parse_condition(spec.resolve)
        except ValueError as exc:
            errors.add(f"{where}.resolve", str(exc))
    if condition is not None and resolve is not None and condition.overlaps(resolve):
        errors.add(
            f"{where}.resolve",
            f"{resolve} overlaps the condition {condition}: a value could both fire and resolve; "
            "use a resolve condition on the other side of the threshold",
        )

    matchers: list[Matcher] = []
    for label, written in spec.where.items():
        try:
            matchers.append(parse_matcher(label, written))
        except ValueError as exc:
            errors.add(f"{where}.where.{label}", str(exc))

    annotations: dict[str, jinja2.Template] = {}
    for key, text in spec.annotations.items():
        path = f"{where}.annotations.{key}"
        try:
            unknown = sorted(jinja2.meta.find_undeclared_variables(env.parse(text)) - set(TEMPLATE_VARIABLES))
            annotations[key] = env.from_string(text)
        except jinja2.TemplateSyntaxError as exc:
            errors.add(path, f"template error: {exc.message} (template line {exc.lineno})")
            continue
        if unknown:
            errors.add(
                path,
                f"unknown template variable {', '.join(unknown)}; "
                f"templates may use {', '.join(TEMPLATE_VARIABLES)}",
            )

    silence = 0.0
    for_ = float(spec.for_)
    if kind == "absent":
        silence, for_ = for_, 0.0
        condition = Condition(">=", silence)
    if len(errors.errors) > count or condition is None:
        return None
    return Rule(
        name=spec.name,
        kind=kind,
        metric=spec.metric or "",
        where=tuple(matchers),
        condition=condition,
        resolve=resolve if resolve is not None else condition.negated(),
        for_=for_,
        severity=spec.severity,  # type: ignore[arg-type]  # checked against SEVERITIES above
        labels=dict(spec.labels),
        annotations=annotations,
        spec=spec,
        source=errors.source,
        line=line_of(f"$.{where}", errors.lines),
        index=index,
        aggregate=aggregate,
        window=window,
        group_by=group_by,
        numerator=selectors.get("numerator"),
        denominator=selectors.get("denominator"),
        event=spec.event or "",
        alpha=spec.alpha if spec.alpha is not None else 0.1,
        warmup=spec.warmup if spec.warmup is not None else 30,
        silence=silence,
        keep_firing_for=float(spec.keep_firing_for),
        cooldown=float(spec.cooldown),
        flap_changes=flap_changes,
        flap_window=flap_window,
        max_series=spec.max_series,
    )


# An unquoted value starting with ">" (a block scalar) or "!" (a tag): a YAML error users meet.
_UNQUOTED = re.compile(r":\s*[>!]")
_YAML_HINT = ' (quote conditions and matchers that start with > or !, e.g. condition: "> 80")'


def parse_rule_text(text: str, source: str) -> tuple[list[Rule], list[ConfigError]]:
    """Rules of one file's text and every error found in it (``source`` names the file)."""
    try:
        data, lines = parse_yaml(text, source)
    except ConfigError as exc:
        text_lines = text.splitlines()
        if (
            exc.line is not None
            and exc.line <= len(text_lines)
            and _UNQUOTED.search(text_lines[exc.line - 1])
        ):
            exc = ConfigError(_reason(exc) + _YAML_HINT, source=exc.source, line=exc.line, field=exc.field)
        return [], [exc]
    errors = _FileErrors(source, lines)
    if data is None:
        return [], []
    if not isinstance(data, dict):
        errors.add("", "expected a mapping with a `rules:` list at the top level")
        return [], errors.errors
    items = data.get("rules")
    if items is None:
        items = []
    try:
        # Check the top level alone; each rule is converted on its own so one bad rule does
        # not hide the errors of the others.
        convert({**data, "rules": []}, RuleFile, source=source, lines=lines)
    except ConfigError as exc:
        errors.errors.append(exc)
    if not isinstance(items, list):
        errors.add("rules", "expected a list of rules")
        return [], errors.errors

    env = template_environment()
    rules: list[Rule] = []
    for i, item in enumerate(items):
        where = f"rules[{i}]"
        prefix = f"$.{where}"
        own_lines = {"$" + k[len(prefix) :]: v for k, v in lines.items() if k.startswith(prefix)}
        try:
            spec = convert(item, RuleSpec, source=source, lines=own_lines)
        except ConfigError as exc:
            path = f"{where}.{exc.field}" if exc.field else where
            reason = _reason(exc)
            if reason.startswith("unknown field"):  # convert() names the field at its own line
                allowed = ", ".join(f.encode_name for f in msgspec.structs.fields(RuleSpec))
                reason = f"unknown field; a rule takes {allowed}"
            errors.errors.append(ConfigError(reason, source=source, line=exc.line, field=path))
            continue
        rule = compile_rule(spec, i, errors, env)
        if rule is not None:
            rules.append(rule)
    return rules, sorted(errors.errors, key=lambda e: e.line or 0)


def expand_paths(paths: Iterable[str]) -> tuple[list[Path], list[ConfigError]]:
    """Files named by ``paths``: a file, a directory (its ``*.yaml``/``*.yml``) or a glob."""
    files: list[Path] = []
    errors: list[ConfigError] = []
    for entry in paths:
        path = Path(entry)
        if any(c in entry for c in "*?["):
            matched = sorted(Path(p) for p in glob.glob(entry, recursive=True) if Path(p).is_file())
            if not matched:
                errors.append(ConfigError("no rule files match this pattern", source=entry))
            files.extend(matched)
        elif path.is_dir():
            matched = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not matched:
                errors.append(ConfigError("no *.yaml rule files in this directory", source=entry))
            files.extend(matched)
        else:
            files.append(path)
    unique = list(dict.fromkeys(files))
    return unique, errors


def load_rules(paths: Iterable[str]) -> list[Rule]:
    """Load, validate and compile the rules of ``paths`` (files, directories, globs).

    Raises :class:`RuleErrors` (a :class:`ConfigError`) listing every problem as
    ``file:line: field: reason``, including rule names defined twice across files.
    """
    files, errors = expand_paths(paths)
    rules: list[Rule] = []
    first: dict[str, Rule] = {}
    for path in files:
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            errors.append(ConfigError(f"cannot read rule file: {exc.strerror}", source=source))
            continue
        except UnicodeDecodeError:
            errors.append(ConfigError("rule file is not UTF-8 text", source=source))
            continue
        file_rules, file_errors = parse_rule_text(text, source)
        errors.extend(file_errors)
        for rule in file_rules:
            seen = first.get(rule.name)
            if seen is not None:
                errors.append(
                    ConfigError(
                        f"duplicate rule name {rule.name!r} (first defined at {seen.origin})",
                        source=source,
                        line=rule.line,
                        field=f"rules[{rule.index}].name",
                    )
                )
                continue
            first[rule.name] = rule
            rules.append(rule)
    if errors:
        raise RuleErrors(errors)
    return rules

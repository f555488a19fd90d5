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

#: Rule kinds this evaluator runs. Later kinds (absent, ratio, event_count, …) add an entry to
#: :data:`_KIND_FIELDS` and a branch in :mod:`signalfire.evaluator.state`.
KINDS: tuple[str, ...] = ("threshold",)

#: The fields each kind requires (beyond name and severity).
_KIND_FIELDS: dict[str, tuple[str, ...]] = {"threshold": ("metric", "condition")}

#: Variables a template may use; anything else is a load error (a typo would render empty).
TEMPLATE_VARIABLES: tuple[str, ...] = ("value", "threshold", "host", "labels", "rule")

#: AlertEvent annotations are capped at this many characters (see ``signalfire.events``).
MAX_ANNOTATION_CHARS = 16384

RuleName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")]
AnnotationName = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class RuleSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One rule as written in the file. Field meanings are in ``docs/rules.md``."""

    name: RuleName
    severity: str
    kind: str = "threshold"
    metric: MetricName | None = None
    where: dict[LabelName, str] = {}
    condition: str | None = None
    for_: Duration = msgspec.field(default=Duration(0), name="for")
    resolve: str | None = None
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
    """``"web-1"`` exact, ``"web-*"`` glob, ``"~^db-"`` regex (searched), ``"!…"`` negates any.

    Raises ``ValueError`` for an invalid regular expression.
    """
    negate = written.startswith("!")
    pattern = written[1:] if negate else written
    test: Callable[[str], bool]
    if pattern.startswith("~"):
        try:
            regex = re.compile(pattern[1:])
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern[1:]!r}: {exc}") from None
        test = lambda value: regex.search(value) is not None  # noqa: E731
    elif any(c in pattern for c in "*?["):
        test = lambda value: fnmatch.fnmatchcase(value, pattern)  # noqa: E731
    else:
        test = pattern.__eq__
    return Matcher(label, written, negate, test)


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
    metric: str
    where: tuple[Matcher, ...]
    condition: Condition
    resolve: Condition
    for_: float
    severity: Severity
    labels: dict[str, str]
    annotations: dict[str, jinja2.Template]
    spec: RuleSpec
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
        data["resolve"] = str(self.resolve)
        data["for"] = self.for_
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


def compile_rule(spec: RuleSpec, index: int, errors: _FileErrors, env: SandboxedEnvironment) -> Rule | None:
    """Check and compile rule number ``index`` of a file; ``None`` (and ``errors``) when invalid."""
    where = f"rules[{index}]"
    count = len(errors.errors)
    if spec.kind not in KINDS:
        errors.add(f"{where}.kind", f"unknown kind {spec.kind!r}; allowed kinds: {', '.join(KINDS)}")
        return None
    if spec.severity not in SEVERITIES:
        errors.add(
            f"{where}.severity", f"unknown severity {spec.severity!r}; allowed: {', '.join(SEVERITIES)}"
        )
    for name in _KIND_FIELDS[spec.kind]:
        if getattr(spec, name) is None:
            errors.add(f"{where}", f"a {spec.kind} rule needs `{name}`")

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

    if len(errors.errors) > count or condition is None or spec.metric is None:
        return None
    return Rule(
        name=spec.name,
        kind=spec.kind,
        metric=spec.metric,
        where=tuple(matchers),
        condition=condition,
        resolve=resolve if resolve is not None else condition.negated(),
        for_=float(spec.for_),
        severity=spec.severity,  # type: ignore[arg-type]  # checked against SEVERITIES above
        labels=dict(spec.labels),
        annotations=annotations,
        spec=spec,
        source=errors.source,
        line=line_of(f"$.{where}", errors.lines),
        index=index,
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

"""Rule files: YAML in, every rule decoded into its kind's spec and compiled, errors collected.

Loading happens in two steps. msgspec decodes each rule into the spec struct of its
``kind:`` (:data:`~signalfire.evaluator.rules.kinds.RuleSpec`: types, unknown fields); then
the spec's ``compile`` checks what a type cannot say (the condition's syntax, the severity,
matchers, templates) and builds the :class:`Rule` the engine runs. Every error names the
file, the line and the field::

    rules/default.yaml:14: rules[2].condition: expected an operator and a number like "> 80", got '>> 80'

All errors of a file are reported together, not only the first.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from signalfire.config import ConfigError, convert, parse_yaml
from signalfire.evaluator.rules.base import BaseRuleSpec, FileErrors, RuleCheck, a_kind
from signalfire.evaluator.rules.kinds import DEFAULT_KIND, KINDS, SPECS, RuleSpec, field_names, kinds_taking
from signalfire.evaluator.rules.rule import Rule
from signalfire.evaluator.rules.templates import template_environment


class RuleFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A whole rule file: ``rules:`` and a list of rules."""

    rules: list[RuleSpec] = []


class RuleErrors(ConfigError):
    """One or more rule files are invalid; ``errors`` has one :class:`ConfigError` each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


def _reason(error: ConfigError) -> str:
    """The message of ``error`` without its ``file:line: field:`` prefix."""
    prefix = str(ConfigError("", source=error.source, line=error.line, field=error.field))
    return str(error)[len(prefix) :]


#: Fields every kind requires; msgspec names them when missing, as for any config file.
_COMMON_REQUIRED = frozenset(f.encode_name for f in msgspec.structs.fields(BaseRuleSpec) if f.required)


def _without_fields_of_other_kinds(item: dict[Any, Any], kind: str, check: RuleCheck) -> dict[Any, Any]:
    """``item`` without the keys another kind takes, each reported: a setting is never ignored."""
    own = field_names(SPECS[kind])
    kept: dict[Any, Any] = {}
    for key, value in item.items():
        others = () if key in own else kinds_taking(key)
        if not others:
            kept[key] = value
        elif value is not None:  # a null setting is no setting, as for the kinds that take it
            check.add(key, f"`{key}` applies to {', '.join(others)} rules, not {kind}")
    return kept


def _report_missing(item: dict[Any, Any], kind: str, check: RuleCheck) -> bool:
    """Report every field the kind requires that ``item`` lacks; whether there was one."""
    missing = [
        f.encode_name
        for f in msgspec.structs.fields(SPECS[kind])
        if f.required and f.encode_name not in _COMMON_REQUIRED and item.get(f.encode_name) is None
    ]
    for name in missing:
        check.add("", f"{a_kind(kind)} rule needs `{name}`")
    return bool(missing)


def decode_rule(item: Any, check: RuleCheck, source: str, lines: Mapping[str, int]) -> BaseRuleSpec | None:
    """Rule number ``check.index`` of a file as its kind's spec; ``None`` after errors.

    ``lines`` maps the whole file's field paths to lines.
    """
    kind = DEFAULT_KIND
    if isinstance(item, dict):
        # msgspec cannot default the tag of a tagged union: a rule without `kind:` is a
        # threshold rule, as it always was.
        item = {"kind": DEFAULT_KIND, **item}
        if item["kind"] is None:  # msgspec would name the tag's type `NoneType`
            check.add("kind", "Expected `str`, got `null`")
            return None
        if isinstance(item["kind"], str):
            kind = item["kind"]
            if kind not in SPECS:
                check.add("kind", f"unknown kind {kind!r}; allowed kinds: {', '.join(KINDS)}")
                return None
            item = _without_fields_of_other_kinds(item, kind, check)
            if _report_missing(item, kind, check):
                return None
    prefix = f"$.{check.where}"
    own_lines = {"$" + k[len(prefix) :]: v for k, v in lines.items() if k.startswith(prefix)}
    try:
        # msgspec picks the member by `kind`; convert() is typed for one class, not a union.
        spec: BaseRuleSpec = convert(item, RuleSpec, source=source, lines=own_lines)  # type: ignore[arg-type]
    except ConfigError as exc:
        path = f"{check.where}.{exc.field}" if exc.field else check.where
        reason = _reason(exc)
        if reason.startswith("unknown field"):  # convert() names the field at its own line
            reason = f"unknown field; {a_kind(kind)} rule takes {', '.join(field_names(SPECS[kind]))}"
        check.file.errors.append(ConfigError(reason, source=source, line=exc.line, field=path))
        return None
    return spec


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
    errors = FileErrors(source, lines)
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
        check = RuleCheck(errors, i, env)
        spec = decode_rule(item, check, source, lines)
        rule = spec.compile(check) if spec is not None else None
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

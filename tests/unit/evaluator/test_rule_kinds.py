"""Rule kinds: each is a module of its own and a member of the union a rule is decoded into,
and the kinds fixture runs a rule of every kind through the engine."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import get_args

import msgspec

from signalfire.config import parse_yaml
from signalfire.evaluator import rules as rules_package
from signalfire.evaluator.rules import (
    KINDS,
    BaseRuleSpec,
    ConditionRuleSpec,
    RuleSpec,
    load_rules,
    parse_rule_text,
)
from signalfire.evaluator.ruletests import run_file

REPO = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).parent / "rules"


def spec_structs_by_module() -> dict[str, list[type[BaseRuleSpec]]]:
    """Every module of the rules package with the spec structs it defines."""
    found: dict[str, list[type[BaseRuleSpec]]] = {}
    for info in pkgutil.iter_modules(rules_package.__path__):
        module = importlib.import_module(f"{rules_package.__name__}.{info.name}")
        found[info.name] = [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, BaseRuleSpec)
            and value.__module__ == module.__name__
            and value not in (BaseRuleSpec, ConditionRuleSpec)
        ]
    return found


def test_every_kind_module_defines_one_spec_and_it_is_in_the_union():
    members = get_args(RuleSpec)
    by_module = {name: specs for name, specs in spec_structs_by_module().items() if specs}
    assert sorted(by_module) == sorted(KINDS)
    for module, specs in by_module.items():
        assert len(specs) == 1, module
        assert specs[0] in members, f"{specs[0].__name__} is not in RuleSpec"
        assert specs[0].__struct_config__.tag == module  # `kind: <module name>`
    assert len(members) == len(KINDS)


def test_the_docs_describe_every_kind():
    doc = (REPO / "docs" / "rules.md").read_text()
    for kind in KINDS:
        assert f"| `{kind}` |" in doc, kind


def test_a_rule_without_a_kind_is_a_threshold_rule():
    text = "rules:\n  - {name: A, metric: m, condition: '> 1', severity: low}\n"
    (rule,) = parse_rule_text(text, "f.yaml")[0]
    assert rule.kind == "threshold"
    assert msgspec.to_builtins(rule.spec)["kind"] == "threshold"


def test_the_kinds_fixture_has_every_kind_and_the_engine_fires_each():
    rules = load_rules([str(FIXTURES / "kinds.yaml")])
    kind_of = {rule.name: rule.kind for rule in rules}
    assert set(kind_of.values()) == set(KINDS)
    data, _ = parse_yaml((FIXTURES / "kinds_test.yaml").read_text(), "kinds_test.yaml")
    fired = {kind_of[e["rule"]] for test in data["tests"] for e in test["expect"] if e["status"] == "firing"}
    assert fired == set(KINDS)
    results = run_file(str(FIXTURES / "kinds_test.yaml"))
    assert [r.name for r in results if not r.passed] == []


def test_a_rule_of_every_kind_reads_back_as_it_was_written():
    rules = load_rules([str(FIXTURES / "kinds.yaml")])
    written = msgspec.json.encode({"rules": [rule.spec for rule in rules]}, enc_hook=float).decode()
    again, errors = parse_rule_text(written, "again.yaml")  # JSON is YAML
    assert errors == []
    assert [r.spec for r in again] == [r.spec for r in rules]
    assert [r.describe() | {"origin": ""} for r in again] == [r.describe() | {"origin": ""} for r in rules]

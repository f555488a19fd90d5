"""Rules from a rule file's text, as the evaluator loads them."""

from __future__ import annotations

from signalfire.evaluator.rules import Rule, parse_rule_text


def parsed_rules(text: str, origin: str = "test.yaml") -> list[Rule]:
    """The rules of ``text`` (a rule file named ``origin``); fails on any load error."""
    rules, errors = parse_rule_text(text, origin)
    assert errors == []
    return rules

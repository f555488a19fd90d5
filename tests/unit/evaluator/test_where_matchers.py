"""``where`` label matchers: exact, glob, regex and negation of each."""

from __future__ import annotations

import pytest

from signalfire.evaluator.rules import parse_matcher


@pytest.mark.parametrize(
    ("written", "value", "expected"),
    [
        # exact
        ("web-1", "web-1", True),
        ("web-1", "web-10", False),
        ("web-1", "", False),
        # glob
        ("web-*", "web-1", True),
        ("web-*", "web-", True),
        ("web-*", "db-1", False),
        ("web-?", "web-12", False),
        ("web-[12]", "web-2", True),
        ("web-*", "WEB-1", False),
        # regex: searched, anchor it with ^ and $ when needed
        ("~^db-", "db-7", True),
        ("~^db-", "old-db-7", False),
        ("~db", "old-db-7", True),
        ("~^(web|api)-[0-9]+$", "api-12", True),
        ("~^(web|api)-[0-9]+$", "api-12x", False),
        # negation of each form
        ("!web-1", "web-1", False),
        ("!web-1", "web-2", True),
        ("!web-*", "db-1", True),
        ("!web-*", "web-1", False),
        ("!~^db-", "db-1", False),
        ("!~^db-", "web-1", True),
    ],
)
def test_matcher_semantics(written, value, expected):
    assert parse_matcher("host", written).matches({"host": value}) is expected


def test_a_missing_label_is_the_empty_string():
    assert parse_matcher("role", "web").matches({}) is False
    assert parse_matcher("role", "!web").matches({}) is True
    assert parse_matcher("role", "*").matches({}) is True
    assert parse_matcher("role", "~.").matches({}) is False


def test_invalid_regex_is_rejected():
    with pytest.raises(ValueError, match="invalid regular expression"):
        parse_matcher("host", "~[")

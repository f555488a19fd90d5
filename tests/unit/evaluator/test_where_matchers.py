"""``where`` label matchers: exact, glob, regex and negation of each."""

from __future__ import annotations

import pytest

from signalfire.evaluator.rules import parse_matcher, parse_selector


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


EVIL_SUBJECT = "a" * 39 + "b"  # `(a+)+$` backtracks ~2^40 steps on it in Python's re


def test_a_catastrophic_where_regex_answers_at_once():
    assert parse_matcher("host", "~(a+)+$").matches({"host": EVIL_SUBJECT}) is False
    assert parse_matcher("host", "!~(a+)+$").matches({"host": EVIL_SUBJECT}) is True


def test_a_catastrophic_selector_regex_answers_at_once():
    selector = parse_selector('http.requests{path=~"(a+)+$"}')
    assert selector.matches({"path": EVIL_SUBJECT}) is False
    assert selector.matches({"path": "aaaa"}) is True


@pytest.mark.parametrize(("pattern", "reason"), [(r"(a)\1", "backreferences"), ("a(?=b)", "lookahead")])
def test_what_re2_cannot_do_is_refused_with_the_reason(pattern, reason):
    with pytest.raises(ValueError, match=f"invalid regular expression .*{reason} are|is not supported"):
        parse_matcher("host", "~" + pattern)
    with pytest.raises(ValueError, match=reason):
        parse_selector(f'm{{host=~"{pattern}"}}')


def test_selectors_use_the_shared_matchers_and_keep_their_meaning() -> None:
    selector = parse_selector(r'http.requests{status=~"5..", path!~"/health", path!="\\x"}')
    assert [str(m) for m in selector.matchers] == ['status=~"5.."', 'path!~"/health"', r'path!="\\\\x"']
    assert selector.matches({"status": "503", "path": "/api"})
    assert not selector.matches({"status": "5030", "path": "/api"})  # whole value, not searched
    assert not selector.matches({"path": "/api"})  # a missing label is "", which 5.. does not match
    assert not selector.matches({"status": "500", "path": "/health"})
    # A backslash other than before a quote is kept as written, as selectors always read it.
    assert not selector.matches({"status": "500", "path": "\\\\x"})
    assert selector.matches({"status": "500", "path": "\\x"})

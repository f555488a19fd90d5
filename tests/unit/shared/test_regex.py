"""User regular expressions compile with RE2: linear-time matching, and a clear refusal of what
RE2 cannot do."""

from __future__ import annotations

import pytest

from signalfire.regex import RegexError, compile_regex

#: The pattern that froze the notifier, and a subject Python's ``re`` needs ~2^40 steps for.
EVIL = "(a+)+$"
SUBJECT = "a" * 39 + "b"


def test_the_catastrophic_pattern_answers_at_once():
    regex = compile_regex(EVIL)
    assert regex.search(SUBJECT) is False
    assert regex.fullmatch(SUBJECT) is False
    assert regex.search(SUBJECT[:-1]) is True


def test_search_finds_anywhere_and_fullmatch_needs_the_whole_value():
    regex = compile_regex("db-[0-9]+")
    assert regex.search("old-db-7") is True
    assert regex.fullmatch("old-db-7") is False
    assert regex.fullmatch("db-7") is True
    assert compile_regex("^db-").search("old-db-7") is False


def test_non_ascii_and_lone_surrogates_do_not_raise():
    assert compile_regex("^h.st$").search("höst") is True
    assert compile_regex("web").search("web-\ud800") is True
    assert compile_regex("^.$").fullmatch("\ud800") is True  # one character, as in Python


def test_results_are_the_same_from_the_cache():
    regex = compile_regex("5..")
    assert [regex.fullmatch(v) for v in ("503", "200", "503", "5030")] == [True, False, True, False]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "backreferences are not supported"),
        ("(?P<x>a)(?P=x)", "backreferences are not supported"),
        ("foo(?=bar)", "lookahead"),
        ("foo(?!bar)", "lookahead"),
        ("(?<=a)b", "lookbehind"),
        ("(?>a)", "atomic groups"),
        ("a++", "possessive quantifiers"),
        (r"end\Z", r"use \z"),
        ("a{2000}", "repetition counts above 1000"),
        ("(", "missing )"),
    ],
)
def test_what_re2_cannot_do_is_refused_with_the_pattern_and_why(pattern, reason):
    with pytest.raises(RegexError) as info:
        compile_regex(pattern)
    message = str(info.value)
    assert message.startswith(repr(pattern) + ": ")
    assert reason in message
    assert "RE2 syntax, see docs/rules.md" in message


def test_a_pattern_beyond_the_memory_bound_is_refused():
    huge = "|".join(f"{i:08d}" * 8 for i in range(40000))
    with pytest.raises(RegexError, match="too large"):
        compile_regex(huge)


def test_the_public_wrapper_path_answers_the_same(monkeypatch):
    # RE2's own Match is used when the wrapper's internals answer a probe; else its public calls.
    fast = compile_regex("db-[0-9]+")
    monkeypatch.setattr("signalfire.regex._RAW_MATCH", False)
    public = compile_regex("db-[0-9]+")
    for text in ("db-7", "old-db-7", "db-", "", "héllo db-1 \ud800"):
        assert (public.search(text), public.fullmatch(text)) == (fast.search(text), fast.fullmatch(text))
    assert compile_regex("(a+)+$").search(SUBJECT) is False

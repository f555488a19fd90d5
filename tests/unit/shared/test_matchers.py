"""The one label matcher (signalfire.matchers): its text form, its meaning, and silences as
the gateway wrote them before matchers had ``op``."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalfire.events import Silence
from signalfire.matchers import (
    OPS,
    Matcher,
    MatcherError,
    format_matcher,
    matches,
    parse_matcher,
)

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
# Regexes that RE2 compiles: literals (escaped), alternations and classes of them.
patterns = st.one_of(
    st.lists(st.from_regex(r"[a-z0-9\-]{0,6}", fullmatch=True), min_size=1, max_size=3).map("|".join),
    st.sampled_from([".*", "web-[0-9]+", "db-.*", "", "(a+)+$", r"\d+", "a\\.b"]),
)
labels = st.dictionaries(st.sampled_from(["host", "rule", "team", "severity"]), texts, max_size=4)


@st.composite
def any_matcher(draw: st.DrawFn) -> Matcher:
    op = draw(st.sampled_from(OPS))
    value = draw(patterns if op in ("=~", "!~") else texts)
    return Matcher(name=draw(names), op=op, value=value)


@given(any_matcher())
def test_the_text_form_reads_back_to_the_same_matcher(matcher: Matcher) -> None:
    assert parse_matcher(format_matcher(matcher)) == matcher


@given(any_matcher())
def test_the_json_form_reads_back_to_the_same_matcher(matcher: Matcher) -> None:
    assert msgspec.json.decode(msgspec.json.encode(matcher), type=Matcher) == matcher


@given(names, texts, labels)
def test_not_equal_is_the_negation_of_equal(name: str, value: str, fields: dict[str, str]) -> None:
    equal = Matcher(name=name, op="=", value=value)
    assert Matcher(name=name, op="!=", value=value).matches(fields) is not equal.matches(fields)


@given(st.sampled_from(["host", "team"]), patterns, labels)
def test_not_regex_is_the_negation_of_regex(name: str, value: str, fields: dict[str, str]) -> None:
    regex = Matcher(name=name, op="=~", value=value)
    assert Matcher(name=name, op="!~", value=value).matches(fields) is not regex.matches(fields)


def test_regex_matchers_match_the_whole_value_and_a_missing_label_is_empty() -> None:
    web = parse_matcher('host=~"web-[0-9]+"')
    assert web.matches({"host": "web-12"})
    assert not web.matches({"host": "old-web-12"})  # anchored: not a search
    assert not web.matches({"host": "web-12x"})
    assert parse_matcher('team=""').matches({"host": "web-1"})
    assert not parse_matcher('team!=""').matches({"host": "web-1"})
    assert parse_matcher('team=~"ops|"').matches({})
    assert matches([], {}) and matches([web, parse_matcher("team=ops")], {"host": "web-1", "team": "ops"})


def test_the_text_form_reads_quoted_escapes_and_unquoted_values() -> None:
    assert parse_matcher(r'path=~"C:\\\\tmp\\d"').value == r"C:\\tmp\d"
    assert parse_matcher('comment="say \\"hi\\""').value == 'say "hi"'
    assert parse_matcher(" host = web-1 ") == Matcher(name="host", op="=", value="web-1")
    expected = Matcher(name="severity", op="!~", value="high|critical")
    assert parse_matcher("severity!~high|critical") == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("host", "is not a matcher"),
        ('host=="x"', "is not a matcher"),
        ('1host="x"', "is not a matcher"),
        ('host=~"(a)\\1"', "backreferences are not supported"),
        ('host=~"("', "not a regular expression"),
    ],
)
def test_text_that_is_not_a_matcher_is_refused_saying_why(text: str, reason: str) -> None:
    with pytest.raises(MatcherError, match=reason):
        parse_matcher(text)


def test_a_silence_as_the_old_gateway_wrote_it_still_decodes() -> None:
    # Byte for byte what the gateway put in the silences bucket before matchers had `op`.
    old = (
        b'{"id":"0f3a","matchers":[{"name":"host","value":"web-1","regex":false,"equal":true},'
        b'{"name":"rule","value":"High.*","regex":true,"equal":true},'
        b'{"name":"severity","value":"low","regex":false,"equal":false},'
        b'{"name":"team","value":"ops|dev","regex":true,"equal":false}],'
        b'"starts_at":1700000000.5,"ends_at":1700007200.5,"author":"ana","comment":"maintenance","v":1}'
    )
    silence = msgspec.json.decode(old, type=Silence)
    assert [format_matcher(m) for m in silence.matchers] == [
        'host="web-1"',
        'rule=~"High.*"',
        'severity!="low"',
        'team!~"ops|dev"',
    ]
    assert (silence.id, silence.author, silence.comment) == ("0f3a", "ana", "maintenance")
    assert matches(silence.matchers, {"host": "web-1", "rule": "HighCPU", "severity": "high", "team": "db"})
    # Written again, it is in the current form, and reads back the same.
    again = msgspec.json.decode(msgspec.json.encode(silence), type=Silence)
    assert again == silence and b"regex" not in msgspec.json.encode(silence)


def test_a_matcher_giving_both_op_and_the_old_flags_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="not both"):
        msgspec.json.decode(b'{"name":"h","op":"=~","value":"x","equal":false}', type=Matcher)

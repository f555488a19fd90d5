"""Label matchers: the one syntax and meaning shared by silences, inhibition, notification
routes and rule selectors (docs/matchers.md), after Alertmanager's ``pkg/labels``.

A matcher is a label name, an operator and a value, written ``name="value"``,
``name!="value"``, ``name=~"regex"`` or ``name!~"regex"``:

- ``=`` / ``!=``: the label's value equals / does not equal ``value``;
- ``=~`` / ``!~``: ``value`` (RE2 syntax, linear time: :mod:`signalfire.regex`) matches /
  does not match the *whole* label value, as if written ``^(?:value)$``;
- a label the labels do not have matches as the empty string, so ``team=""`` selects
  alerts without a ``team`` and ``team!=""`` those with one.

The JSON form (silences in the KV bucket and the API) is ``{"name", "op", "value"}``; ``op``
defaults to ``=``. Silences stored before ``op`` existed say ``"regex": true`` and
``"equal": false`` instead; they still decode, into the same operators.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from signalfire.regex import Regex, RegexError, compile_regex

Op = Literal["=", "!=", "=~", "!~"]
OPS: tuple[Op, ...] = ("=", "!=", "=~", "!~")

#: Longest label name and value a matcher takes: far above any real label, low enough that a
#: hostile silence or config cannot make every alert test a megabyte of text.
MAX_NAME_LENGTH = 200
MAX_VALUE_LENGTH = 1024

#: Compiled patterns by text: matchers are re-decoded (a silence bucket change, a config
#: reload) with the same few patterns, and a compiled RE2 pattern keeps its own result cache.
_compiled = functools.lru_cache(maxsize=4096)(compile_regex)

# The operator from the older silence format's two flags: (regex, equal) -> op.
_LEGACY_OPS: dict[tuple[bool, bool], Op] = {(False, True): "=", (False, False): "!=", (True, True): "=~"}
_LEGACY_OPS[(True, False)] = "!~"


class Matcher(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """``host="web-1"`` as ``{"name": "host", "op": "=", "value": "web-1"}``.

    ``regex`` and ``equal`` are the older silence format (``regex: true`` = ``=~``,
    ``equal: false`` negates); they are read, folded into ``op`` and never written.
    Raises ``ValueError`` (a ``msgspec.ValidationError`` when decoded) for a pattern RE2 refuses.
    """

    name: Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
    op: Op = "="
    value: Annotated[str, Meta(max_length=MAX_VALUE_LENGTH)]
    regex: bool = False
    equal: bool = True

    def __post_init__(self) -> None:
        if self.regex or not self.equal:
            if self.op != "=":
                raise ValueError("give op, or the older regex/equal flags, not both")
            self.op = _LEGACY_OPS[(self.regex, self.equal)]
            self.regex, self.equal = False, True
        if self.op in ("=~", "!~"):
            try:
                _compiled(self.value)
            except RegexError as exc:
                raise ValueError(f"value: not a regular expression: {exc}") from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this matcher (a missing label is the empty string)."""
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = self.pattern().fullmatch(actual)
        return hit if self.op == "=~" else not hit

    def pattern(self) -> Regex:
        """The compiled ``value`` of a regex matcher."""
        return _compiled(self.value)

    def __str__(self) -> str:
        return format_matcher(self)


def matches(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy every matcher (an empty list matches everything)."""
    return all(matcher.matches(labels) for matcher in matchers)


def equality(match: Mapping[str, str]) -> list[Matcher]:
    """``{label: value}`` maps (routes' and inhibit rules' ``match`` sugar) as ``=`` matchers."""
    return [Matcher(name=name, op="=", value=value) for name, value in match.items()]


# The text form -----------------------------------------------------------------------------

_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_TEXT = re.compile(rf'\s*({_NAME})\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*', re.DOTALL)
# An unquoted value holds no quote, comma or brace and does not start with an operator's
# character, so ``host=="x"`` is refused instead of read as the value ``="x"``.
_UNQUOTED = re.compile(rf'\s*({_NAME})\s*(=~|!~|!=|=)\s*([^"\s,{{}}=!~][^",{{}}]*?)?\s*')
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}


class MatcherError(ValueError):
    """Text that is not a matcher; ``str()`` quotes it and shows the expected form."""


def parse_matcher(text: str) -> Matcher:
    """``severity=~"high|critical"`` → a :class:`Matcher`.

    The value is a double-quoted string (``\\"``, ``\\\\``, ``\\n`` and ``\\t`` escape; every
    other backslash is kept, so ``=~"\\d+"`` is the regex ``\\d+``). An unquoted value
    (``host=web-1``) is read up to the end, for the forms people type. Raises
    :class:`MatcherError` naming the text and the expected form, or for a refused regex.
    """
    found = _TEXT.fullmatch(text)
    if found is not None:
        value = re.sub(
            r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), found.group(3), flags=re.DOTALL
        )
    else:
        found = _UNQUOTED.fullmatch(text)
        if found is None:
            raise MatcherError(
                f'{text!r} is not a matcher; write name="value", name!="value", '
                'name=~"regex" or name!~"regex"'
            )
        value = found.group(3) or ""
    op: Op = found.group(2)  # type: ignore[assignment]  # the pattern admits only OPS
    try:
        return Matcher(name=found.group(1), op=op, value=value)
    except ValueError as exc:
        raise MatcherError(f"{text!r}: {exc}") from None


def parse_matchers(texts: Iterable[str]) -> list[Matcher]:
    """Every text of ``texts`` parsed (see :func:`parse_matcher`), in order."""
    return [parse_matcher(text) for text in texts]


def format_matcher(matcher: Matcher) -> str:
    """The text form :func:`parse_matcher` reads back to an equal matcher."""
    value = matcher.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'{matcher.name}{matcher.op}"{value}"'

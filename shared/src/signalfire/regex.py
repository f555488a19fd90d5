"""The one way to compile a user's regular expression: RE2, which matches in linear time.

Every pattern a user writes (rule ``where`` and selector matchers, silence matchers, the
agent's ``body_match``, ``cmdline`` and exclude lists) goes through :func:`compile_regex`, so
no pattern can backtrack catastrophically: ``(a+)+$`` against ``aaaa…ab`` takes microseconds
where Python's ``re`` takes hours. The price is RE2 syntax: no backreferences, lookaround,
atomic groups or possessive quantifiers; repetition counts up to 1000. docs/rules.md
("Regular expressions") lists it, and which sites search and which match the whole value.

A refused pattern raises :class:`RegexError` saying why in words an operator can act on.
"""

from __future__ import annotations

import re as _stdlib_re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import re2  # type: ignore[import-untyped]

#: RE2's memory budget per compiled pattern (its default is 8 MiB). Enough for any matcher
#: a person writes (an alternation of a few thousand words); a bigger pattern is refused at
#: load time instead of costing memory in every process that loads it.
MAX_MEM = 1 << 20

#: Values shorter than this have their match results remembered (label values repeat: the
#: same hosts, statuses and rule names over and over), up to CACHE_SIZE values per pattern.
_CACHE_VALUE_LENGTH = 256
_CACHE_SIZE = 4096

_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_MEM
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr

_SEE = "RE2 syntax, see docs/rules.md"

# RE2's own message (after its "error parsing regexp"-free text) → what to tell the user.
_REASONS: tuple[tuple[_stdlib_re.Pattern[str], str], ...] = (
    (_stdlib_re.compile(r"invalid escape sequence: \\[1-9]"), "backreferences are not supported"),
    (_stdlib_re.compile(r"invalid perl operator: \(\?[=!]"), "lookahead (?=…) / (?!…) is not supported"),
    (_stdlib_re.compile(r"invalid perl operator: \(\?<[=!]"), "lookbehind (?<=…) / (?<!…) is not supported"),
    (_stdlib_re.compile(r"invalid perl operator: \(\?>"), "atomic groups (?>…) are not supported"),
    (_stdlib_re.compile(r"invalid perl operator: \(\?\("), "conditionals (?(…)…) are not supported"),
    (
        _stdlib_re.compile(r"bad repetition operator: [*+?]\+"),
        "possessive quantifiers (a++) are not supported",
    ),
    (_stdlib_re.compile(r"invalid escape sequence: \\Z"), r"\Z is not supported; use \z for the very end"),
    (_stdlib_re.compile(r"invalid repetition size"), "repetition counts above 1000 are not supported"),
    (
        _stdlib_re.compile(r"pattern too large"),
        f"the pattern is too large (more than {MAX_MEM // 1024} KiB compiled); simplify it",
    ),
)


class RegexError(ValueError):
    """A pattern RE2 refuses; ``str()`` names the pattern and why, e.g.
    ``'(a)\\1': backreferences are not supported (RE2 syntax, see docs/rules.md)``."""

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
        super().__init__(f"{shown!r}: {reason} ({_SEE})")


Test = Callable[[bytes], bool]


@dataclass(frozen=True, eq=False)
class Regex:
    """A compiled user pattern. Matching is linear in the text's length whatever the pattern."""

    pattern: str
    _search: Test = field(repr=False)
    _fullmatch: Test = field(repr=False)
    _searched: dict[str, bool] = field(default_factory=dict, repr=False)
    _matched: dict[str, bool] = field(default_factory=dict, repr=False)

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text`` (anchor with ``^``/``$``)."""
        return self._test(text, self._search, self._searched)

    def fullmatch(self, text: str) -> bool:
        """Whether the pattern matches the whole of ``text``."""
        return self._test(text, self._fullmatch, self._matched)

    @staticmethod
    def _test(text: str, test: Test, cache: dict[str, bool]) -> bool:
        cacheable = len(text) < _CACHE_VALUE_LENGTH
        if cacheable:
            hit = cache.get(text)
            if hit is not None:
                return hit
        # Bytes to RE2 (the pattern is compiled as UTF-8): its str path maps every byte offset
        # of a match back to characters, which a yes/no does not need. surrogatepass: a lone
        # surrogate in a label must not raise; RE2 reads it as one invalid UTF-8 sequence.
        result = test(text.encode("utf-8", "surrogatepass"))
        if cacheable:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[text] = result
        return result


def compile_regex(pattern: str) -> Regex:
    """Compile a user's ``pattern`` with RE2 (memory bounded by :data:`MAX_MEM`).

    Raises :class:`RegexError` naming the pattern and why RE2 refuses it (a backreference,
    lookaround, a syntax error…); callers add the file, line or field.
    """
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise RegexError(pattern, _reason(pattern, exc)) from None
    if _RAW_MATCH:
        return Regex(pattern, _raw(compiled, "UNANCHORED"), _raw(compiled, "ANCHOR_BOTH"))
    return Regex(
        pattern,
        lambda data: compiled.search(data) is not None,
        lambda data: compiled.fullmatch(data) is not None,
    )


def _raw(compiled: Any, anchor_name: str) -> Test:
    # The wrapper's search()/fullmatch() run a generator and build a match object (~4 µs a
    # call); a yes/no needs only RE2's own Match (~1.5 µs). That is not the wrapper's public
    # API, so it is used only if it answers a probe correctly at import (below).
    anchor = getattr(re2._Anchor, anchor_name)
    regexp = compiled._regexp

    def test(data: bytes) -> bool:
        return bool(regexp.Match(anchor, data, 0, len(data))[0][0] != -1)

    return test


def _raw_match_works() -> bool:
    try:
        probe = re2.compile("b+", _OPTIONS)
        search, full = _raw(probe, "UNANCHORED"), _raw(probe, "ANCHOR_BOTH")
        return (search(b"abb"), search(b"a"), full(b"abb"), full(b"bb")) == (True, False, False, True)
    except Exception:  # any change in the wrapper's internals: use its public calls
        return False


_RAW_MATCH = _raw_match_works()


def _reason(pattern: str, exc: Exception) -> str:
    if "(?P=" in pattern:  # RE2 reports only "invalid perl operator: (?P"
        return "backreferences are not supported"
    raw = exc.args[0] if exc.args else ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    for known, reason in _REASONS:
        if known.search(text):
            return reason
    return text or "not a regular expression"

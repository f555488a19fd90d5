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
from dataclasses import dataclass, field

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


@dataclass(frozen=True, eq=False)
class Regex:
    """A compiled user pattern. Matching is linear in the text's length whatever the pattern."""

    pattern: str
    _compiled: re2._Regexp = field(repr=False)
    _searched: dict[str, bool] = field(default_factory=dict, repr=False)
    _full: dict[str, bool] = field(default_factory=dict, repr=False)

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text`` (anchor with ``^``/``$``)."""
        return self._test(text, True, self._searched)

    def fullmatch(self, text: str) -> bool:
        """Whether the pattern matches the whole of ``text``."""
        return self._test(text, False, self._full)

    def _test(self, text: str, search: bool, cache: dict[str, bool]) -> bool:
        cacheable = len(text) < _CACHE_VALUE_LENGTH
        if cacheable:
            hit = cache.get(text)
            if hit is not None:
                return hit
        # Bytes to RE2 (the pattern is compiled as UTF-8): its str path maps every byte offset
        # of a match back to characters, which a yes/no does not need. surrogatepass: a lone
        # surrogate in a label must not raise; it is just bytes no character class matches.
        data = text.encode("utf-8", "surrogatepass")
        found = self._compiled.search(data) if search else self._compiled.fullmatch(data)
        result = found is not None
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
    return Regex(pattern, compiled)


def _reason(pattern: str, exc: Exception) -> str:
    if "(?P=" in pattern:  # RE2 reports only "invalid perl operator: (?P"
        return "backreferences are not supported"
    raw = exc.args[0] if exc.args else ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    for known, reason in _REASONS:
        if known.search(text):
            return reason
    return text or "not a regular expression"

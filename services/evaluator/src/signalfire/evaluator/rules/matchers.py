"""Label matching in rules: ``where`` entries and the PromQL-like selectors of ratio rules."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from signalfire.matchers import Matcher as SharedMatcher
from signalfire.matchers import matches
from signalfire.regex import RegexError, compile_regex


@dataclass(frozen=True)
class Matcher:
    """One ``where`` entry. A label the series lacks is matched as the empty string."""

    label: str
    written: str
    negate: bool
    test: Callable[[str], bool] = field(repr=False, compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.test(labels.get(self.label, "")) != self.negate


def parse_matcher(label: str, written: str) -> Matcher:
    """``"web-1"`` exact, ``"web-*"`` glob, ``"~^db-"`` regex (RE2, searched), ``"!…"`` negates any.

    Raises ``ValueError`` for a regular expression RE2 refuses (see :mod:`signalfire.regex`).
    """
    negate = written.startswith("!")
    pattern = written[1:] if negate else written
    test: Callable[[str], bool]
    if pattern.startswith("~"):
        try:
            test = compile_regex(pattern[1:]).search
        except RegexError as exc:
            raise ValueError(f"invalid regular expression {exc}") from None
    elif any(c in pattern for c in "*?["):
        test = lambda value: fnmatch.fnmatchcase(value, pattern)  # noqa: E731
    else:
        test = pattern.__eq__
    return Matcher(label, written, negate, test)


_SELECTOR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.:-]*)\s*(?:\{(.*)\})?\s*$")
_SELECTOR_MATCHER = re.compile(
    r'\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)'
)


@dataclass(frozen=True)
class Selector:
    """A metric and label matchers, written like PromQL: ``http.requests{status=~"5.."}``.

    The matchers are the shared ones (:mod:`signalfire.matchers`, docs/matchers.md): ``=`` and
    ``!=`` compare exactly; ``=~`` and ``!~`` match the whole value (RE2 syntax); a missing
    label is the empty string.
    """

    metric: str
    matchers: tuple[SharedMatcher, ...]
    written: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return matches(self.matchers, labels)


def parse_selector(text: str) -> Selector:
    """``name{label="v", label=~"re", label!="v", label!~"re"}``; raises ``ValueError``.

    Inside the quotes only ``\\"`` is an escape (every other backslash is kept as written),
    as selectors always read it: a rule file keeps its meaning.
    """
    match = _SELECTOR.match(text)
    if match is None:
        raise ValueError(
            f'expected a metric and optional matchers like http.requests{{status=~"5.."}}, got {text!r}'
        )
    body = match.group(2) or ""
    matchers: list[SharedMatcher] = []
    pos = 0
    while pos < len(body.rstrip()):
        item = _SELECTOR_MATCHER.match(body, pos)
        if item is None:
            raise ValueError(
                f'cannot read the label matchers at {body[pos:]!r}; write label="value" or label=~"regex"'
            )
        label, op, value = item.group(1), item.group(2), item.group(3).replace('\\"', '"')
        try:
            matchers.append(SharedMatcher(name=label, op=op, value=value))  # type: ignore[arg-type]
        except ValueError as exc:  # only a regex RE2 refuses: the op and label are read above
            reason = str(exc).removeprefix("value: not a regular expression: ")
            raise ValueError(f"invalid regular expression {reason}") from None
        pos = item.end()
    return Selector(match.group(1), tuple(matchers), text.strip())

"""Silences from the ``sf_silences`` KV bucket: while a silence is active, alerts it matches
are not sent (they are still stored and still counted). Each key holds one :class:`Silence`
as JSON; whoever creates silences (the gateway's API) writes them, the notifier only reads.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Annotated

import msgspec
from msgspec import Meta

from signalfire.events import AlertEvent
from signalfire.notifier.routing import alert_fields
from signalfire.regex import RegexError, compile_regex

#: Compiled silence patterns by text: silences are re-decoded from the bucket on each change,
#: their patterns are few and stay the same.
_compiled = functools.lru_cache(maxsize=1024)(compile_regex)


class Matcher(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``{"name": "host", "value": "web-1"}``; ``regex`` matches the whole value (RE2 syntax,
    linear time: see :mod:`signalfire.regex`), ``equal: false`` negates."""

    name: Annotated[str, Meta(min_length=1)]
    value: str
    regex: bool = False
    equal: bool = True

    def __post_init__(self) -> None:
        if self.regex:
            try:
                _compiled(self.value)
            except RegexError as exc:
                raise ValueError(f"value: not a regular expression: {exc}") from None

    def matches(self, fields: dict[str, str]) -> bool:
        actual = fields.get(self.name, "")
        hit = _compiled(self.value).fullmatch(actual) if self.regex else actual == self.value
        return hit == self.equal


class Silence(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One silence: active from ``starts_at`` to ``ends_at`` (unix seconds) for alerts that
    every matcher matches (``severity``, ``rule``, ``host`` or any label)."""

    id: Annotated[str, Meta(min_length=1)]
    matchers: Annotated[list[Matcher], Meta(min_length=1)]
    starts_at: float
    ends_at: float
    author: str
    comment: str = ""
    v: int = 1

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, alert: AlertEvent) -> bool:
        fields = alert_fields(alert)
        return all(matcher.matches(fields) for matcher in self.matchers)


def silenced_by(alert: AlertEvent, silences: Iterable[Silence], now: float) -> Silence | None:
    """The active silence that mutes ``alert`` at ``now``, or None."""
    for silence in silences:
        if silence.active(now) and silence.matches(alert):
            return silence
    return None


def reason(silence: Silence) -> str:
    """The ``DeliveryResult.reason`` of a silenced delivery."""
    text = f"silenced by {silence.id} ({silence.author}"
    return text + (f": {silence.comment})" if silence.comment else ")")

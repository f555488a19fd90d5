"""Query-parameter parsing for the API: times, limits and label matchers.

Every function raises :class:`~signalfire.gateway.errors.ApiError` (400) naming the parameter,
so a caller can pass user input straight in.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from signalfire.config import parse_duration
from signalfire.events import MAX_UNIX_TIME
from signalfire.gateway.errors import invalid

_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_MIN_TIME = -62135596800.0  # 0001-01-01, the earliest a relative or RFC 3339 time may reach
_INT64 = 2**63

LABEL_PREFIX = "label."


def parse_time(value: str, now: float, field: str) -> float:
    """Unix seconds for ``value``: unix seconds (``1763794800.5``), RFC 3339
    (``2025-11-22T07:00:00Z``), ``now``, or relative to ``now`` (``-1h``, ``-30m``, ``-90s``).
    """
    text = value.strip()
    if not text:
        raise invalid(field, f"{field} is empty; use unix seconds, RFC 3339 or a relative time like -1h")
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return _bounded(now - float(relative.group(1)) * _UNITS[relative.group(2)], value, field)
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= seconds <= MAX_UNIX_TIME:
            raise invalid(field, f"{field}={value!r} is outside the range of unix times")
        return seconds
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(
            field, f"{field}={value!r} is not a time; use unix seconds, RFC 3339 or a relative time like -1h"
        ) from None
    if parsed.tzinfo is None:
        raise invalid(field, f"{field}={value!r} has no time zone; add Z or an offset like +02:00")
    try:
        return _bounded(parsed.astimezone(UTC).timestamp(), value, field)
    except OverflowError:  # an offset that moves 0001-01-01 or 9999-12-31 off the calendar
        raise invalid(field, f"{field}={value!r} is outside the range of times") from None


def _bounded(seconds: float, value: str, field: str) -> float:
    if not _MIN_TIME <= seconds <= MAX_UNIX_TIME:
        raise invalid(field, f"{field}={value!r} is outside the range of times (year 1 to 3000)")
    return seconds


def parse_range(params: Mapping[str, str], now: float, default_span: float = 3600.0) -> tuple[float, float]:
    """``from``/``to`` of a range query; defaults to the last ``default_span`` seconds."""
    end = parse_time(params["to"], now, "to") if "to" in params else now
    start = parse_time(params["from"], now, "from") if "from" in params else end - default_span
    if start > end:
        raise invalid("from", "from must not be later than to")
    return start, end


def parse_limit(params: Mapping[str, str], default: int, maximum: int) -> int:
    """``limit``: a whole number from 1 to ``maximum``."""
    raw = params.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit", f"limit={raw!r} is not a whole number") from None
    if not 1 <= limit <= maximum:
        raise invalid("limit", f"limit must be between 1 and {maximum}")
    return limit


def parse_choice(params: Mapping[str, str], field: str, choices: tuple[str, ...]) -> str | None:
    """An optional parameter that must be one of ``choices``."""
    raw = params.get(field)
    if raw is None:
        return None
    if raw not in choices:
        raise invalid(field, f"{field}={raw!r} must be one of: {', '.join(choices)}")
    return raw


def label_matchers(params: Mapping[str, str]) -> dict[str, str]:
    """Exact label matchers from ``label.<name>=<value>`` parameters."""
    matchers: dict[str, str] = {}
    for key, value in params.items():
        if key.startswith(LABEL_PREFIX):
            name = key[len(LABEL_PREFIX) :]
            if not name:
                raise invalid(key, "a label matcher needs a name: label.<name>=<value>")
            matchers[name] = value
    return matchers


def require(params: Mapping[str, str], field: str) -> str:
    """A parameter that must be present and non-empty."""
    value = params.get(field, "")
    if not value:
        raise invalid(field, f"{field} is required")
    return value


def encode_cursor(values: list[Any]) -> str:
    """An opaque paging cursor holding the sort key of the last item returned."""
    return base64.urlsafe_b64encode(msgspec.json.encode(values)).decode().rstrip("=")


def parse_cursor(params: Mapping[str, str], types: tuple[type, ...]) -> list[Any] | None:
    """The sort key in ``cursor`` (as :func:`encode_cursor` made it), checked against ``types``."""
    raw = params.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        values = msgspec.json.decode(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, RecursionError):  # bad base64 or JSON, not UTF-8, nested too deeply
        raise invalid("cursor", "cursor is not one this API returned") from None
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(_cursor_value_ok(v, t) for v, t in zip(values, types, strict=True))
    ):
        raise invalid("cursor", "cursor is not one this API returned")
    return values


def _cursor_value_ok(value: Any, kind: type) -> bool:
    """A cursor value of type ``kind`` that the database can take (no NUL in text, a 64-bit
    id, a time within the range of times)."""
    if isinstance(value, bool):
        return False
    if kind is str:
        return isinstance(value, str) and "\x00" not in value
    if kind is int:
        return isinstance(value, int) and -_INT64 <= value < _INT64
    if kind is float:
        return isinstance(value, int | float) and _MIN_TIME <= value <= MAX_UNIX_TIME
    return isinstance(value, kind)


def parse_step(params: Mapping[str, str]) -> float | str:
    """``step``: ``raw``, ``auto`` (the default) or a duration (``10s``, ``5m``, ``1h``, seconds)."""
    raw = params.get("step", "auto")
    if raw in ("raw", "auto"):
        return raw
    try:
        seconds = parse_duration(raw if not raw.replace(".", "", 1).isdigit() else float(raw))
    except ValueError:
        raise invalid("step", f"step={raw!r} must be raw, auto or a duration like 10s, 5m, 1h") from None
    if not 1 <= seconds <= 366 * 86400:
        raise invalid("step", "step must be between 1s and 366d")
    return seconds


def reject_nul(params: Mapping[str, str], path: str = "") -> None:
    """No parameter (nor the path, which holds the path parameters) may hold a NUL character
    (PostgreSQL text cannot)."""
    if "\x00" in path:
        raise invalid("path", "the path must not contain NUL characters")
    for key, value in params.items():
        if "\x00" in key or "\x00" in value:
            raise invalid(key.replace("\x00", ""), "parameters must not contain NUL characters")

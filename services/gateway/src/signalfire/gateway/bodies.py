"""JSON request bodies of the API, decoded strictly: unknown fields and wrong types are 400s
that name the field."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta

from signalfire.events import PayloadError, decode
from signalfire.gateway.auth import Role
from signalfire.gateway.errors import invalid
from signalfire.matchers import Matcher

T = TypeVar("T", bound=msgspec.Struct)

_AT = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
#: A struct's own check (``__post_init__``) names its field first: ``value: not a regular…``.
_OWN_FIELD = re.compile(r"^([a-z_]+): ")

Text = Annotated[str, Meta(max_length=16384)]
#: Unix seconds, or a string the query parameters accept (RFC 3339, ``now``, ``-1h``).
TimeValue = float | Annotated[str, Meta(max_length=64)]


class NoteBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``ack``, ``unack`` and ``resolve`` (an optional note) and of ``notes``."""

    note: Text = ""


class SilenceBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new silence: give ``ends_at`` or ``duration`` (``2h``, seconds)."""

    #: Label matchers (docs/matchers.md); the older ``regex``/``equal`` form is still read.
    matchers: Annotated[list[Matcher], Meta(min_length=1, max_length=50)]
    starts_at: TimeValue | None = None
    ends_at: TimeValue | None = None
    duration: float | Annotated[str, Meta(max_length=32)] | None = None
    comment: Annotated[str, Meta(max_length=4096)] = ""


class TokenBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    role: Role


def field_of(message: str) -> str:
    """The field a msgspec error message points at (``samples[3].value``), or ``body``."""
    at = _AT.search(message)
    path = at.group(1) if at else ""
    unknown = _UNKNOWN.search(message) or _OWN_FIELD.search(message)
    if unknown:
        return f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    return path or "body"


def parse_body(data: bytes, kind: type[T]) -> T:
    """``data`` decoded as ``kind``; a 400 naming the field when it does not fit (including text
    with NUL characters, which PostgreSQL cannot store)."""
    if not data.strip():
        raise invalid("body", "a JSON body is required")
    try:
        body = decode(data, kind)
    except PayloadError as exc:
        text = str(exc)
        raise invalid(field_of(text), f"invalid body: {text}") from None
    if b"\\u0000" in data:  # the only way JSON text can hold a NUL
        where = nul_field(msgspec.to_builtins(body))
        if where is not None:
            raise invalid(where or "body", f"{where or 'the body'} must not contain NUL characters")
    return body


def nul_field(value: object, path: str = "") -> str | None:
    """The path (``matchers[0].name``) of the first string in ``value`` holding a NUL, or ``None``."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return name
            found = nul_field(item, name)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = nul_field(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None

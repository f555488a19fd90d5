"""How an endpoint is declared: path, method, handler, the role it needs, its parameters, its
body and its answer, in one place.

Every resource module exports ``routes``, a list of :class:`Endpoint`; the application, the
role table used by :class:`~signalfire.gateway.auth.AuthMiddleware`, the OpenAPI document and
the endpoint table in ``docs/gateway.md`` are all built from those lists
(:mod:`signalfire.gateway.api.catalog`), so none of them can disagree with the code.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.websockets import WebSocket

from signalfire.gateway.auth import Role

if TYPE_CHECKING:
    from signalfire.gateway.api.resources import Resources

Method = Literal["GET", "POST", "DELETE", "WS"]
Handler = Callable[["Resources", Request], Awaitable[Response]]
SocketHandler = Callable[["Resources", WebSocket], Awaitable[None]]

#: Methods that only read: they need no more than ``viewer`` where nothing is declared.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Param:
    """A query or path parameter, as the OpenAPI document and the docs table show it."""

    name: str
    description: str
    where: Literal["query", "path"] = "query"
    required: bool = False
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


#: Parameters several resources take.
PAGE = (
    Param("limit", "the most items in this page", schema={"type": "integer", "minimum": 1}),
    Param("cursor", "`next_cursor` of the previous page"),
)
_TIME = "unix seconds, RFC 3339 (with a zone), `now`, or relative like `-1h`"
RANGE = (Param("from", f"start; {_TIME}"), Param("to", f"end (default now); {_TIME}"))
LABELS = Param("label.<name>", "exact label matcher, e.g. `label.mount=/var` (any number of them)")
HOST = Param("host", "host name")


def enum(name: str, description: str, choices: Sequence[str]) -> Param:
    """A query parameter that takes one of ``choices``."""
    return Param(name, description, schema={"type": "string", "enum": list(choices)})


def enum_path(name: str, description: str, choices: Sequence[str]) -> Param:
    """A path parameter that takes one of ``choices``: one route, documented as one path per
    choice (``/alerts/{id}/ack``, ``/alerts/{id}/unack``, ...)."""
    return Param(name, description, where="path", schema={"type": "string", "enum": list(choices)})


def documented_paths(endpoint: Endpoint) -> list[tuple[str, tuple[Param, ...]]]:
    """The paths ``endpoint`` is documented as, each with its remaining parameters: a path
    parameter with a fixed set of values becomes one path per value."""
    paths = [(endpoint.path, endpoint.params)]
    for param in endpoint.params:
        choices = param.schema.get("enum")
        if param.where == "path" and choices:
            paths = [
                (path.replace("{" + param.name + "}", choice), tuple(p for p in params if p is not param))
                for path, params in paths
                for choice in choices
            ]
    return paths


@dataclass(frozen=True)
class Endpoint:
    """One operation of the API.

    ``role`` is the least role that may call it (``None``: public, no token). ``answer`` is
    the type of a JSON answer (a msgspec struct, or ``dict[str, Any]`` for a free-form one);
    ``media`` replaces it for answers that are not JSON described by a type. ``doc`` is the
    answer column of the endpoint table in ``docs/gateway.md``. ``openapi`` is false only for
    what OpenAPI cannot describe (streams) or what is not part of ``/api/v1`` (health, metrics).
    """

    method: Method
    path: str
    handler: Handler | SocketHandler
    role: Role | None
    summary: str
    doc: str
    params: tuple[Param, ...] = ()
    body: type[msgspec.Struct] | None = None
    answer: Any = None
    status: int = 200
    #: The type of a 202 answer: the request was taken (published) but not yet applied.
    accepted: Any = None
    media: Mapping[str, Mapping[str, Any]] | None = None
    openapi: bool = True
    #: Served only when the gateway has a live-stream hub.
    needs_hub: bool = False


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    roles: dict[str, Role | None]


class RoleTable:
    """The role each request needs, from the endpoints' declarations.

    A declared method of a declared path needs its declared role. Anything else (a method the
    path does not have, a path nobody declared) is answered 404 or 405 by the router after
    the check; it needs ``viewer`` to read and ``operator`` otherwise, or ``admin`` where
    every endpoint of the path is admin-only, so the admin surface stays hidden from others.
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        by_path: dict[str, dict[str, Role | None]] = {}
        for endpoint in endpoints:
            method = "GET" if endpoint.method == "WS" else endpoint.method
            by_path.setdefault(endpoint.path, {})[method] = endpoint.role
        self._rules = [_Rule(compile_path(path)[0], roles) for path, roles in by_path.items()]

    def required(self, method: str, path: str) -> Role | None:
        """The least role that may call ``method path``; ``None`` for a public endpoint."""
        for rule in self._rules:
            if rule.pattern.match(path):
                if method in rule.roles:
                    return rule.roles[method]
                if rule.roles and all(role == "admin" for role in rule.roles.values()):
                    return "admin"
                break
        return "viewer" if method in READ_METHODS else "operator"

"""API tokens: random bearer tokens with a role, stored only as their SHA-256.

Roles are ordered ``viewer`` < ``operator`` < ``admin``; each endpoint declares the role it
needs next to its route (``signalfire.gateway.api``): reading needs ``viewer``, changing
state needs ``operator``, tokens and the audit log need ``admin``. Each token may make
``rate_limit`` requests per second on average (bursts of ``rate_burst``). Failed
authentications are limited per client address (``auth_failure_rate``/``auth_failure_burst``):
an address over its budget is answered 429 without its token being looked up, except for
tokens that authenticated at this gateway before, so an attacker cannot lock out the users
working from the same address.

A token is never kept where it could reach a log line: a ``?token=`` query parameter is
removed from the request as soon as it is read (the server's WebSocket access lines print
the request's query), and WebSocket clients can send it as a subprotocol instead.

The first start of a gateway on a database without an admin token
creates one and writes it to ``admin_token_file`` (mode 0600) for the operator to pick up.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import unquote_plus

import asyncpg
from starlette.types import ASGIApp, Receive, Scope, Send

from signalfire.gateway.errors import error_response
from signalfire.ratelimit import RateLimiter
from signalfire.telemetry import Counter

log = logging.getLogger("signalfire.gateway.auth")

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
_RANK = {role: rank for rank, role in enumerate(ROLES)}

#: Paths under this prefix need a token, unless their endpoint is declared public; everything
#: else (health, metrics, the dashboard's files) does not.
PROTECTED_PREFIX = "/api/v1/"
_READ_METHODS = {"GET", "HEAD", "OPTIONS"}
#: A WebSocket client may send its token as the subprotocol ``signalfire.bearer.<token>``,
#: offered next to :data:`STREAM_SUBPROTOCOL` (which the gateway selects), so that the token
#: is in no URL; tokens are URL-safe base64, which a subprotocol name may hold.
BEARER_SUBPROTOCOL = "signalfire.bearer."
STREAM_SUBPROTOCOL = "signalfire.v1"
# Keeps one advisory-lock key per purpose; this one serialises admin-token bootstrap.
_BOOTSTRAP_LOCK_KEY = 0x5F61_646D  # "_adm"


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's name and role."""

    token_id: int
    name: str
    role: Role

    def allows(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def create_token(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, role: Role, created_by: str = ""
) -> str:
    """Store a new token named ``name`` with ``role``; returns the token (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not name.strip():
        raise ValueError("a token needs a name")
    token = new_token()
    await conn.execute(
        "INSERT INTO api_tokens (name, role, hash, created_by) VALUES ($1, $2, $3, $4)",
        name.strip(),
        role,
        hash_token(token),
        created_by,
    )
    return token


async def revoke_token(conn: asyncpg.Connection | asyncpg.Pool, token_id: int) -> float | None:
    """Revoke token ``token_id``; returns when it was revoked (earlier revocations stand),
    ``None`` if there is no such token."""
    revoked: float | None = await conn.fetchval(
        """
        UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
        RETURNING extract(epoch FROM revoked_at)::float8
        """,
        token_id,
    )
    return revoked


async def list_tokens(conn: asyncpg.Connection | asyncpg.Pool) -> list[dict[str, object]]:
    """Every token (never its hash), oldest first."""
    rows = await conn.fetch(
        """
        SELECT id, name, role, created_by, extract(epoch FROM created_at)::float8 AS created_at,
               extract(epoch FROM revoked_at)::float8 AS revoked_at
        FROM api_tokens ORDER BY id
        """
    )
    return [dict(row) for row in rows]


async def authenticate(pool: asyncpg.Pool, token: str) -> Principal | None:
    """The principal of a valid, unrevoked token; ``None`` for anything else."""
    row = await pool.fetchrow(
        "SELECT id, name, role FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL", hash_token(token)
    )
    if row is None:
        return None
    return Principal(token_id=row["id"], name=row["name"], role=row["role"])


async def valid_token_ids(pool: asyncpg.Pool, token_ids: Collection[int]) -> set[int]:
    """Which of ``token_ids`` name a token that exists and is not revoked."""
    rows = await pool.fetch(
        "SELECT id FROM api_tokens WHERE id = ANY($1::bigint[]) AND revoked_at IS NULL", list(token_ids)
    )
    return {row["id"] for row in rows}


async def describe_refused_token(pool: asyncpg.Pool, token: str) -> str:
    """Who a token that did not authenticate belonged to, for the audit log: the name of a
    revoked token, or ``unknown token``."""
    row = await pool.fetchrow("SELECT id, name FROM api_tokens WHERE hash = $1", hash_token(token))
    if row is None:
        return "unknown token"
    return f"{row['name']} (token {row['id']}, revoked)"


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


async def ensure_admin_token(pool: asyncpg.Pool, path: str | os.PathLike[str]) -> bool:
    """Create an admin token and write it to ``path`` when the database has none.

    Returns whether a token was created. The row is committed only after the file is
    written, so a failed write (e.g. permissions) leaves no token nobody knows.
    """
    target = Path(path)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_LOCK_KEY)
        exists = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL)"
        )
        if exists:
            return False
        token = await create_token(conn, "bootstrap-admin", "admin")
        write_secret_file(target, token + "\n")
    log.warning("created the first admin API token", extra={"file": str(target)})
    return True


class FailureThrottle:
    """Failed authentications per client address, as a :class:`RateLimiter`.

    An address over its budget is refused before its token is looked up (no database work
    and no way to tell a valid guess from an invalid one), except with a token that
    authenticated at this gateway before: valid users behind the attacker's address (a NAT,
    a proxy) keep working. Addresses under budget are not affected at all.
    """

    #: How many tokens that authenticated are remembered (by hash), newest kept.
    REMEMBERED = 10_000

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = RateLimiter(rate, burst, clock)
        self._good: OrderedDict[str, None] = OrderedDict()

    def wait_time(self, address: str, token: str | None) -> float:
        """0 when a request from ``address`` with ``token`` may be checked, else seconds to wait."""
        wait = self.buckets.peek(address)
        if wait > 0 and token is not None and hash_token(token) in self._good:
            return 0.0
        return wait

    def failed(self, address: str, token: str | None) -> None:
        self.buckets.wait_time(address)
        if token is not None:
            self._good.pop(hash_token(token), None)

    def succeeded(self, token: str) -> None:
        digest = hash_token(token)
        self._good[digest] = None
        self._good.move_to_end(digest)
        if len(self._good) > self.REMEMBERED:
            self._good.popitem(last=False)


@dataclass(frozen=True)
class AuthCounters:
    """``auth_failures_total`` (by ``reason``: ``missing``/``invalid``) and ``auth_throttled_total``."""

    failures: Counter
    throttled: Counter


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused (401/403), kept in ``scope["state"]["refused"]`` for the audit log."""

    status: int
    message: str
    #: The caller as the audit log names it (a token's name, ``unknown token``, ``no token``).
    actor: str


#: Browsers cannot set headers on a WebSocket or an EventSource, so only the two stream
#: endpoints also take the token as ``?token=`` (anywhere else it would end up in access logs).
QUERY_TOKEN_PATHS = frozenset({"/api/v1/stream", "/api/v1/events/stream"})


def _credentials(scope: Scope) -> str | None:
    """The token of a request: ``Authorization: Bearer``, a WebSocket's bearer subprotocol, or
    (on the stream endpoints only) ``?token=``. A ``token`` query parameter is removed from
    ``scope`` on every path, so nothing that prints the request's URL later can show it."""
    query_token = _take_query_token(scope)
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    if scope["type"] == "websocket":
        for offered in scope.get("subprotocols", []):
            if offered.startswith(BEARER_SUBPROTOCOL) and len(offered) > len(BEARER_SUBPROTOCOL):
                return str(offered[len(BEARER_SUBPROTOCOL) :])
    if scope.get("path") not in QUERY_TOKEN_PATHS:
        return None
    return query_token


def _take_query_token(scope: Scope) -> str | None:
    """Remove every ``token`` parameter from the query string of ``scope``; returns the first."""
    query: bytes = scope.get("query_string", b"")
    if b"token" not in query:
        return None
    token: str | None = None
    kept: list[bytes] = []
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_plus(name.decode("latin-1")) == "token":
            if token is None:
                token = unquote_plus(value.decode("latin-1"))
        elif part:
            kept.append(part)
    scope["query_string"] = b"&".join(kept)
    return token or None


def client_address(scope: Scope) -> str:
    """The address a request came from (after uvicorn's trusted-proxy handling)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _deny(
    scope: Scope,
    receive: Receive,
    send: Send,
    denial: tuple[int, str, str],
    headers: dict[str, str] | None = None,
) -> None:
    """Refuse a request with ``denial`` = ``(status, code, message)``: a JSON error response —
    for a WebSocket too, as the handshake's answer, where the server supports that (uvicorn
    does); otherwise the WebSocket is closed with code ``4000 + status`` (4401, 4403, 4429,
    4503) and the message as the reason."""
    status, code, message = denial
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})
        return
    await error_response(status, code, message, headers=headers)(scope, receive, send)


class AuthMiddleware:
    """Requires a valid token with the role ``roles(method, path)`` names on every ``/api/v1/``
    path (``None``: a public endpoint, no token needed).

    The request's :class:`Principal` is put in ``scope["state"]["principal"]``; a request
    refused with 401 or 403 gets a :class:`Refusal` in ``scope["state"]["refused"]`` instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        roles: Callable[[str, str], Role | None],
        pool: asyncpg.Pool,
        limiter: RateLimiter | None = None,
        failures: FailureThrottle | None = None,
        counters: AuthCounters | None = None,
    ) -> None:
        self.app = app
        self.roles = roles
        self.pool = pool
        self.limiter = limiter
        self.failures = failures
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        needed = self.roles(method, path) if path.startswith(PROTECTED_PREFIX) else None
        if scope["type"] not in ("http", "websocket") or needed is None:
            _take_query_token(scope)
            await self.app(scope, receive, send)
            return
        token = _credentials(scope)
        address = client_address(scope)
        if self.failures is not None:
            wait = self.failures.wait_time(address, token)
            if wait > 0:
                if self.counters is not None:
                    self.counters.throttled.inc()
                message = f"too many failed authentications from {address}; try again in {wait:.1f}s"
                retry = {"Retry-After": str(math.ceil(wait))}
                await _deny(scope, receive, send, (429, "rate_limited", message), retry)
                return
        challenge = {"WWW-Authenticate": 'Bearer realm="signalfire"'}
        if token is None:
            message = "an API token is required: send 'Authorization: Bearer <token>'"
            self._failed(scope, address, None, Refusal(401, message, "no token"))
            await _deny(scope, receive, send, (401, "unauthorized", message), challenge)
            return
        try:
            principal = await authenticate(self.pool, token)
            if principal is None and method not in _READ_METHODS:
                actor = await describe_refused_token(self.pool, token)
            else:
                actor = "unknown token"
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("cannot check an API token: database unavailable", extra={"reason": str(exc)})
            message = "the database is unavailable; try again shortly"
            await _deny(scope, receive, send, (503, "unavailable", message))
            return
        if principal is None:
            message = "the API token is not valid or has been revoked"
            self._failed(scope, address, token, Refusal(401, message, actor))
            await _deny(scope, receive, send, (401, "unauthorized", message), challenge)
            return
        if self.failures is not None:
            self.failures.succeeded(token)
        if not principal.allows(needed):
            message = f"this needs the {needed} role; the token {principal.name!r} is {principal.role}"
            actor = f"{principal.name} (token {principal.token_id}, {principal.role})"
            scope.setdefault("state", {})["refused"] = Refusal(403, message, actor)
            await _deny(scope, receive, send, (403, "forbidden", message))
            return
        if self.limiter is not None:
            wait = self.limiter.wait_time(principal.token_id)
            if wait > 0:
                message = f"too many requests with the token {principal.name!r}; try again in {wait:.1f}s"
                retry = {"Retry-After": str(math.ceil(wait))}
                await _deny(scope, receive, send, (429, "rate_limited", message), retry)
                return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _failed(self, scope: Scope, address: str, token: str | None, refusal: Refusal) -> None:
        scope.setdefault("state", {})["refused"] = refusal
        if self.failures is not None:
            self.failures.failed(address, token)
        if self.counters is not None:
            self.counters.failures.labels(reason="missing" if token is None else "invalid").inc()

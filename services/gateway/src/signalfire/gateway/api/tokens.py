"""``/api/v1/tokens`` (admin): list, create and revoke API tokens."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.gateway.api.endpoint import Endpoint, Param
from signalfire.gateway.api.resources import Resources, audit_details, json_response, principal
from signalfire.gateway.auth import Role, create_token, hash_token, list_tokens, revoke_token
from signalfire.gateway.bodies import TokenBody, parse_body
from signalfire.gateway.errors import ApiError, invalid


class Token(msgspec.Struct, kw_only=True):
    """An API token, never its value or hash."""

    id: int
    name: str
    role: Role
    created_by: str
    created_at: float
    revoked_at: float | None


class TokenPage(msgspec.Struct, kw_only=True):
    tokens: list[Token]
    next_cursor: str | None


class NewToken(msgspec.Struct, kw_only=True):
    """A token just created; ``token`` is its value, shown this once."""

    id: int
    name: str
    role: Role
    token: str
    created_at: float


class Revoked(msgspec.Struct, kw_only=True):
    id: int
    revoked_at: float


async def tokens(res: Resources, request: Request) -> Response:
    found = msgspec.convert(await list_tokens(res.pool), list[Token])
    return json_response(TokenPage(tokens=found, next_cursor=None))


async def create(res: Resources, request: Request) -> Response:
    body = parse_body(await request.body(), TokenBody)
    if not body.name.strip():
        raise invalid("name", "a token needs a name")
    token = await create_token(res.pool, body.name, body.role, created_by=principal(request).name)
    row = await res.pool.fetchrow(
        "SELECT id, extract(epoch FROM created_at)::float8 AS created_at FROM api_tokens WHERE hash = $1",
        hash_token(token),
    )
    assert row is not None
    audit_details(request, {"token_id": row["id"], "name": body.name, "role": body.role})
    answer = NewToken(
        id=row["id"], name=body.name.strip(), role=body.role, token=token, created_at=row["created_at"]
    )
    return json_response(answer, status=201)


async def revoke(res: Resources, request: Request) -> Response:
    raw = request.path_params["id"]
    try:
        token_id = int(raw)
    except ValueError:
        raise invalid("id", f"id={raw!r} is not a token id (a whole number)") from None
    if not 0 < token_id < 2**63:
        raise invalid("id", "a token id is a positive whole number")
    revoked = await revoke_token(res.pool, token_id)
    if revoked is None:
        raise ApiError(404, "not_found", f"no token {token_id}", "id")
    if res.hub is not None:
        res.hub.revoke({token_id})
    audit_details(request, {"token_id": token_id})
    return json_response(Revoked(id=token_id, revoked_at=revoked))


routes = [
    Endpoint(
        "GET",
        "/api/v1/tokens",
        tokens,
        "admin",
        "API tokens (never their values)",
        "token list (never values or hashes)",
        answer=TokenPage,
    ),
    Endpoint(
        "POST",
        "/api/v1/tokens",
        create,
        "admin",
        "Create an API token (its value is shown once)",
        'body `{"name", "role"}`; 201 with the new token, whose value is in this answer only',
        body=TokenBody,
        answer=NewToken,
        status=201,
    ),
    Endpoint(
        "DELETE",
        "/api/v1/tokens/{id}",
        revoke,
        "admin",
        "Revoke an API token",
        '`{"id", "revoked_at"}`; the token\'s open live streams end at once',
        params=(Param("id", "token id", where="path", schema={"type": "integer"}),),
        answer=Revoked,
    ),
]

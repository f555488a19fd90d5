"""API tokens: generation, hashing, the bootstrap file and how a request presents a token."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

from signalfire.gateway.auth import Principal, _bearer, hash_token, new_token, write_secret_file


def test_tokens_are_random_and_long() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 for t in tokens)  # 32 random bytes, URL-safe base64


def test_a_token_is_stored_as_its_sha256() -> None:
    token = new_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert hash_token(token) == hash_token(token)
    assert hash_token(token) != hash_token(token + "x")
    assert token not in hash_token(token)


def test_the_secret_file_is_owner_only_and_its_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "state" / "admin-token"
    write_secret_file(target, "secret\n")
    assert target.read_text() == "secret\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_an_existing_readable_file_becomes_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "admin-token"
    target.write_text("old")
    target.chmod(0o644)
    write_secret_file(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_roles_are_ordered() -> None:
    viewer = Principal(1, "dash", "viewer")
    operator = Principal(2, "oncall", "operator")
    admin = Principal(3, "root", "admin")
    assert viewer.allows("viewer") and not viewer.allows("operator")
    assert operator.allows("viewer") and operator.allows("operator") and not operator.allows("admin")
    assert admin.allows("admin") and admin.allows("viewer")


def _scope(
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    query: bytes = b"",
    path: str = "/api/v1/hosts",
) -> dict[str, object]:
    return {"type": "http", "headers": list(headers), "query_string": query, "path": path}


def test_a_token_comes_from_the_bearer_header_or_the_stream_query() -> None:
    assert _bearer(_scope([(b"authorization", b"Bearer abc")])) == "abc"
    assert _bearer(_scope([(b"authorization", b"bearer  abc ")])) == "abc"
    assert _bearer(_scope(query=b"token=abc%2Bd&x=1", path="/api/v1/stream")) == "abc+d"
    assert _bearer(_scope(query=b"token=abc", path="/api/v1/events/stream")) == "abc"
    assert _bearer(_scope(query=b"token=abc")) is None
    assert _bearer(_scope()) is None
    assert _bearer(_scope([(b"authorization", b"Basic dXNlcjpwYXNz")])) is None
    assert _bearer(_scope([(b"authorization", b"Bearer ")])) is None

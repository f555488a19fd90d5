"""API tokens: generation, hashing, the bootstrap file and how a request presents a token."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

from signalfire.gateway.auth import (
    FailureThrottle,
    Principal,
    _credentials,
    hash_token,
    new_token,
    write_secret_file,
)


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
    kind: str = "http",
    subprotocols: list[str] = (),  # type: ignore[assignment]
) -> dict[str, object]:
    return {
        "type": kind,
        "headers": list(headers),
        "query_string": query,
        "path": path,
        "subprotocols": list(subprotocols),
    }


def test_a_token_comes_from_the_bearer_header_the_subprotocol_or_the_stream_query() -> None:
    assert _credentials(_scope([(b"authorization", b"Bearer abc")])) == "abc"
    assert _credentials(_scope([(b"authorization", b"bearer  abc ")])) == "abc"
    assert _credentials(_scope(query=b"token=abc%2Bd&x=1", path="/api/v1/stream")) == "abc+d"
    assert _credentials(_scope(query=b"token=abc", path="/api/v1/events/stream")) == "abc"
    assert _credentials(_scope(query=b"token=abc")) is None
    assert _credentials(_scope()) is None
    assert _credentials(_scope([(b"authorization", b"Basic dXNlcjpwYXNz")])) is None
    assert _credentials(_scope([(b"authorization", b"Bearer ")])) is None
    offered = ["signalfire.v1", "signalfire.bearer.abc_D-1"]
    ws = _scope(path="/api/v1/stream", kind="websocket", subprotocols=offered)
    assert _credentials(ws) == "abc_D-1"
    # Only a WebSocket's handshake offers subprotocols.
    assert _credentials(_scope(subprotocols=offered)) is None


def test_a_query_token_is_removed_from_the_request_once_read() -> None:
    scope = _scope(query=b"hosts=a&token=secret-1&token=secret-2&metrics=cpu.*", path="/api/v1/events/stream")
    assert _credentials(scope) == "secret-1"
    assert scope["query_string"] == b"hosts=a&metrics=cpu.*"
    # Also where it is not accepted: it must not stay in the URL that is logged.
    elsewhere = _scope(query=b"token=secret-3", path="/api/v1/hosts")
    assert _credentials(elsewhere) is None
    assert elsewhere["query_string"] == b""


def test_an_address_over_its_failure_budget_is_refused_except_with_a_known_good_token() -> None:
    now = [0.0]
    throttle = FailureThrottle(1.0, 2, clock=lambda: now[0])
    throttle.succeeded("good")
    assert throttle.wait_time("10.0.0.1", "guess") == 0.0
    throttle.failed("10.0.0.1", "guess")
    throttle.failed("10.0.0.1", "guess")
    assert throttle.wait_time("10.0.0.1", "guess") == 1.0
    assert throttle.wait_time("10.0.0.1", None) == 1.0
    assert throttle.wait_time("10.0.0.1", "good") == 0.0
    assert throttle.wait_time("10.0.0.2", "guess") == 0.0
    # A known token that then fails (it was revoked) is known no more.
    throttle.failed("10.0.0.1", "good")
    assert throttle.wait_time("10.0.0.1", "good") > 0

"""The webhook signature receivers verify, and the Retry-After values they may send."""

from __future__ import annotations

import hashlib
import hmac

from signalfire.notifier.channels.webhook import parse_retry_after, signature, verify


def test_signature_is_hex_hmac_sha256_of_the_body() -> None:
    body = b'{"version":1,"status":"firing"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature(b"s3cret", body) == f"sha256={expected}"
    assert verify(b"s3cret", body, f"sha256={expected}")


def test_signature_fails_for_another_secret_or_a_changed_body() -> None:
    body = b'{"version":1}'
    header = signature(b"s3cret", body)
    assert not verify(b"other", body, header)
    assert not verify(b"s3cret", body + b" ", header)
    assert not verify(b"s3cret", body, "sha256=")


def test_retry_after_in_seconds_or_as_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == 20.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # already past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None

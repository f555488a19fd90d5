"""No secret reaches a log line, whichever logger wrote it."""

from __future__ import annotations

import json
import logging
import sys

from signalfire.log import JsonFormatter, LogfmtFormatter, redact_secrets


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_query_tokens_bearer_credentials_and_url_passwords_are_redacted() -> None:
    assert redact_secrets("/api/v1/stream?token=abc-DEF_1&x=1") == "/api/v1/stream?token=[redacted]&x=1"
    assert redact_secrets("/s?hosts=a&access_token=abc") == "/s?hosts=a&access_token=[redacted]"
    assert redact_secrets("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert redact_secrets("postgresql://sf:hunter2@db:5432/sf") == "postgresql://sf:[redacted]@db:5432/sf"
    # Words that merely contain "token", and URLs without a password, are left alone.
    assert redact_secrets("token_id=3 the token was revoked") == "token_id=3 the token was revoked"
    assert redact_secrets("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_both_formats_redact_the_message_its_arguments_and_extra_fields() -> None:
    record = _record(
        '%s - "WebSocket %s" [accepted]',
        "127.0.0.1:5000",
        "/api/v1/stream?token=s3cret",
        url="http://gw/api/v1/events/stream?token=s3cret",
    )
    line = LogfmtFormatter("gateway").format(record)
    assert "s3cret" not in line
    assert "/api/v1/stream?token=[redacted]" in line
    entry = json.loads(JsonFormatter("gateway").format(record))
    assert "s3cret" not in json.dumps(entry)
    assert entry["url"] == "http://gw/api/v1/events/stream?token=[redacted]"


def test_an_exception_is_one_field_of_the_line_with_its_secrets_redacted() -> None:
    try:
        raise ConnectionError("cannot reach postgresql://sf:hunter2@db:5432/sf")
    except ConnectionError:
        record = logging.LogRecord(
            "signalfire.gateway", logging.ERROR, __file__, 1, "store failed", (), sys.exc_info()
        )
    line = LogfmtFormatter("gateway").format(record)
    assert "\n" not in line  # one record, one line, the traceback included
    assert 'msg="store failed" error="Traceback (most recent call last):\\n' in line
    assert "ConnectionError: cannot reach postgresql://sf:[redacted]@db:5432/sf" in line
    entry = json.loads(JsonFormatter("gateway").format(record))
    assert entry["error"].startswith("Traceback (most recent call last):\n")
    assert entry["error"].endswith("ConnectionError: cannot reach postgresql://sf:[redacted]@db:5432/sf")
    assert "hunter2" not in line + json.dumps(entry)

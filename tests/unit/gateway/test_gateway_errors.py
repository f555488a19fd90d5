"""The one error body of the API."""

from __future__ import annotations

import json

from signalfire.gateway.errors import ApiError, error_response, invalid


def test_error_body_has_code_message_and_field() -> None:
    response = error_response(400, "invalid_parameter", "from is not a time", "from")
    assert response.status_code == 400
    assert response.media_type == "application/json"
    assert json.loads(bytes(response.body)) == {
        "error": {"code": "invalid_parameter", "message": "from is not a time", "field": "from"}
    }


def test_field_is_null_when_no_parameter_is_at_fault() -> None:
    response = error_response(401, "unauthorized", "an API token is required")
    assert json.loads(bytes(response.body))["error"]["field"] is None


def test_invalid_is_a_400_naming_the_field() -> None:
    error = invalid("limit", "limit must be between 1 and 1000")
    assert isinstance(error, ApiError)
    assert (error.status, error.code, error.field) == (400, "invalid_parameter", "limit")
    assert str(error) == "limit must be between 1 and 1000"

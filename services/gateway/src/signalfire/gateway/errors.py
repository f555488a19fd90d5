"""The API's one error shape: ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error the API answers with ``status`` and the standard error body.

    ``code`` is a stable machine-readable word (``invalid_parameter``, ``unauthorized``, …);
    ``field`` names the query parameter or body field at fault, if any.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def invalid(field: str, message: str) -> ApiError:
    """A 400 for a bad query parameter or body field ``field``."""
    return ApiError(400, "invalid_parameter", message, field)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)

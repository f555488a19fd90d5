"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``), built from the
endpoints' declarations: paths and parameters from :class:`Endpoint`, request and answer
schemas from their msgspec types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from signalfire.gateway.api.endpoint import Endpoint, Param, documented_paths

_REF = "#/components/schemas/"
_ERROR_REF = {"$ref": "#/components/responses/Error"}
#: Every operation may be refused with these (bad input, token, role, size, rate, outage).
_ERRORS = ("400", "401", "403", "413", "429", "503")

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
            "required": ["code", "message", "field"],
        }
    },
    "required": ["error"],
}


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required or param.where == "path",
        "description": param.description,
        "schema": dict(param.schema),
    }


def _operation(
    endpoint: Endpoint,
    params: tuple[Param, ...],
    answer: dict[str, Any] | None,
    body: dict[str, Any] | None,
    accepted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if endpoint.media is not None:
        content = {kind: {"schema": dict(schema)} for kind, schema in endpoint.media.items()}
    else:
        content = {"application/json": {"schema": answer or {"type": "object"}}}
    responses: dict[str, Any] = {str(endpoint.status): {"description": "success", "content": content}}
    if accepted is not None:
        responses["202"] = {
            "description": "taken but not yet applied",
            "content": {"application/json": {"schema": accepted}},
        }
    responses.update(dict.fromkeys(_ERRORS, _ERROR_REF))
    if any(p.where == "path" for p in params):
        responses["404"] = _ERROR_REF
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "description": f"Needs the `{endpoint.role}` role.",
        "parameters": [_parameter(p) for p in params],
        "responses": responses,
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def openapi_document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The document describing every endpoint of ``endpoints`` that OpenAPI can describe."""
    described = [e for e in endpoints if e.openapi]
    types: list[Any] = []
    for endpoint in described:
        types += [t for t in (endpoint.answer, endpoint.body, endpoint.accepted) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF + "{name}")
    schema_of = dict(zip(map(id, types), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in described:
        answer = schema_of[id(endpoint.answer)] if endpoint.answer is not None else None
        body = schema_of[id(endpoint.body)] if endpoint.body is not None else None
        accepted = schema_of[id(endpoint.accepted)] if endpoint.accepted is not None else None
        for path, params in documented_paths(endpoint):
            operation = _operation(endpoint, params, answer, body, accepted)
            paths.setdefault(path, {})[endpoint.method.lower()] = operation
    components["Error"] = _ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": "Signalfire gateway API", "version": "1"},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "an error",
                    "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
                }
            },
        },
    }

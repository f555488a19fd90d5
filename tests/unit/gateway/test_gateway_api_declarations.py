"""The API is declared once: the routes, the role table, the OpenAPI document and the
endpoint table of docs/gateway.md all come from the resource modules' ``routes``, and any of
them drifting from those declarations fails here."""

from __future__ import annotations

from pathlib import Path

from signalfire.gateway.api import ops
from signalfire.gateway.api.alerts import ACTIONS
from signalfire.gateway.api.catalog import ENDPOINTS, ROLES
from signalfire.gateway.api.doc_table import BEGIN, END, endpoint_table, with_table
from signalfire.gateway.api.endpoint import Endpoint, RoleTable, documented_paths
from signalfire.gateway.api.openapi import openapi_document

GATEWAY_DOC = Path(__file__).resolve().parents[3] / "docs" / "gateway.md"


def _doc_table() -> str:
    text = GATEWAY_DOC.read_text(encoding="utf-8")
    return text.split(BEGIN + "\n", 1)[1].split(END, 1)[0]


def test_the_docs_endpoint_table_is_what_the_code_declares() -> None:
    assert _doc_table() == endpoint_table(ENDPOINTS), "run `make api-docs` and commit docs/gateway.md"


def test_rewriting_the_docs_table_keeps_the_rest_of_the_doc() -> None:
    text = GATEWAY_DOC.read_text(encoding="utf-8")
    assert with_table(text, ENDPOINTS) == text


def test_every_endpoint_is_declared_once_with_a_role_or_as_public() -> None:
    seen = [(e.method, e.path) for e in ENDPOINTS]
    assert len(seen) == len(set(seen))
    public = {e.path for e in ENDPOINTS if e.role is None}
    assert public == {"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"}
    assert all(e.role in ("viewer", "operator", "admin") for e in ENDPOINTS if e.role is not None)


def test_every_api_endpoint_is_in_the_openapi_document_with_its_role() -> None:
    paths = openapi_document(ENDPOINTS)["paths"]
    described = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    expected = {(e.method, path) for e in ENDPOINTS if e.openapi for path, _ in documented_paths(e)}
    assert described == expected
    # One route for the alert actions, documented as a path each.
    assert {p for p in paths if p.startswith("/api/v1/alerts/{id}/")} == {
        f"/api/v1/alerts/{{id}}/{action}" for action in ACTIONS
    }
    # What is left out is public or a stream, which OpenAPI cannot describe.
    left_out = [e for e in ENDPOINTS if not e.openapi]
    assert all(e.role is None or e.needs_hub for e in left_out)
    for e in ENDPOINTS:
        for path, _ in documented_paths(e) if e.openapi else []:
            operation = paths[path][e.method.lower()]
            assert operation["description"] == f"Needs the `{e.role}` role."
            assert str(e.status) in operation["responses"]


def test_the_role_table_gives_each_declared_endpoint_its_role() -> None:
    for e in ENDPOINTS:
        method = "GET" if e.method == "WS" else e.method
        path = e.path.replace("{host}", "web-1").replace("{id}", "17").replace("{action}", "ack")
        assert ROLES.required(method, path) == e.role, (e.method, e.path)


def test_undeclared_calls_need_viewer_to_read_operator_to_change_and_admin_on_admin_paths() -> None:
    # The router answers these 404 or 405; the role decides whether the caller is told so.
    assert ROLES.required("GET", "/api/v1/nothing-here") == "viewer"
    assert ROLES.required("POST", "/api/v1/alerts/a-1/bogus") == "operator"
    assert ROLES.required("PUT", "/api/v1/silences") == "operator"
    assert ROLES.required("GET", "/api/v1/tokens/3") == "admin"
    assert ROLES.required("PATCH", "/api/v1/audit") == "admin"


def test_a_role_table_follows_its_declarations() -> None:
    table = RoleTable([Endpoint("GET", "/api/v1/things/{id}", ops.healthz, "admin", "one thing", "a thing")])
    assert table.required("GET", "/api/v1/things/7") == "admin"
    assert table.required("DELETE", "/api/v1/things/7") == "admin"
    assert table.required("GET", "/api/v1/other") == "viewer"

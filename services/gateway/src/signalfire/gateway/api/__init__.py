"""The gateway's HTTP API, one module per resource.

Each resource module (``hosts``, ``series``, ``query``, ``events``, ``alerts``, ``rules``,
``silences``, ``notifications``, ``notifiers``, ``export``, ``ingest``, ``tokens``, ``audit``,
``streams``, ``ops``) exports ``routes``: its endpoints, each declaring its path, method, handler, the role
it needs, its parameters, body and answer types. ``catalog`` lists them all; ``app`` builds
the application from that list, and the role table, the OpenAPI document (``openapi``) and
the endpoint table of docs/gateway.md (``doc_table``) are generated from it too.
"""

from __future__ import annotations

from signalfire.gateway.api.app import create_app

__all__ = ["create_app"]

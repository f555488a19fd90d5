"""Every endpoint of the gateway, in routing order: the one list the application, the role
table, the OpenAPI document and the docs' endpoint table are built from."""

from __future__ import annotations

from signalfire.gateway.api import (
    alerts,
    audit,
    events,
    export,
    fleet,
    hosts,
    ingest,
    notifications,
    notifiers,
    ops,
    query,
    rules,
    series,
    silences,
    streams,
    tokens,
)
from signalfire.gateway.api.endpoint import Endpoint, RoleTable

ENDPOINTS: tuple[Endpoint, ...] = (
    *hosts.routes,
    *fleet.routes,
    *series.routes,
    *query.routes,
    *streams.routes,
    *events.routes,
    *alerts.routes,
    *rules.routes,
    *silences.routes,
    *notifications.routes,
    *notifiers.routes,
    *export.routes,
    *ingest.routes,
    *tokens.routes,
    *audit.routes,
    *ops.routes,
)

#: The role each request needs, for :class:`~signalfire.gateway.auth.AuthMiddleware`.
ROLES = RoleTable(ENDPOINTS)

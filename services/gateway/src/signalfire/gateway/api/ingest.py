"""``/api/v1/ingest/metrics`` and ``/api/v1/ingest/events``: a ``MetricBatch`` or an
``EventBatch`` over HTTP, validated and published to NATS as an agent would."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.events import EventBatch, MetricBatch, encode
from signalfire.gateway.api.endpoint import Endpoint
from signalfire.gateway.api.resources import Resources, audit_details, json_response
from signalfire.gateway.bodies import parse_body


class Accepted(msgspec.Struct, kw_only=True):
    """How many samples or events were published."""

    accepted: Annotated[int, msgspec.Meta(ge=0)]


async def ingest_metrics(res: Resources, request: Request) -> Response:
    batch = parse_body(await request.body(), MetricBatch)
    await res.publish(res.subjects.metrics(batch.host), encode(batch))
    audit_details(request, {"host": batch.host, "samples": len(batch.samples)})
    return json_response(Accepted(accepted=len(batch.samples)), status=202)


async def ingest_events(res: Resources, request: Request) -> Response:
    batch = parse_body(await request.body(), EventBatch)
    await res.publish(res.subjects.events(batch.host), encode(batch))
    audit_details(request, {"host": batch.host, "events": len(batch.events)})
    return json_response(Accepted(accepted=len(batch.events)), status=202)


_DOC = 'body: a `{}`; validated, published to NATS; 202 `{{"accepted": n}}`; a body that is not one is 400'

routes = [
    Endpoint(
        "POST",
        "/api/v1/ingest/metrics",
        ingest_metrics,
        "operator",
        "Publish a MetricBatch to NATS",
        _DOC.format("MetricBatch"),
        body=MetricBatch,
        answer=Accepted,
        status=202,
    ),
    Endpoint(
        "POST",
        "/api/v1/ingest/events",
        ingest_events,
        "operator",
        "Publish an EventBatch to NATS",
        _DOC.format("EventBatch"),
        body=EventBatch,
        answer=Accepted,
        status=202,
    ),
]

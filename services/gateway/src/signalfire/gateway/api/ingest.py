"""``/api/v1/ingest/metrics`` and ``/api/v1/ingest/events``: a ``MetricBatch`` or an
``EventBatch`` over HTTP, validated and published to NATS as an agent would."""

from __future__ import annotations

import hashlib
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
    await _publish(res, res.subjects.metrics(batch.host), encode(batch))
    audit_details(request, {"host": batch.host, "samples": len(batch.samples)})
    return json_response(Accepted(accepted=len(batch.samples)), status=202)


async def ingest_events(res: Resources, request: Request) -> Response:
    batch = parse_body(await request.body(), EventBatch)
    await _publish(res, res.subjects.events(batch.host), encode(batch))
    audit_details(request, {"host": batch.host, "events": len(batch.events)})
    return json_response(Accepted(accepted=len(batch.events)), status=202)


async def _publish(res: Resources, subject: str, payload: bytes) -> None:
    """Publish a batch with an id made of its bytes (``Nats-Msg-Id``): the stream stores it
    once however often it is sent within its duplicate window, so it is sent again while
    NATS does not take it (a node died: ``publish_wait``), and a client that sends it again
    after an answer it did not get adds nothing either."""
    msg_id = "http-" + hashlib.blake2b(subject.encode() + b"\0" + payload, digest_size=16).hexdigest()
    await res.publish(subject, payload, msg_id=msg_id)


_DOC = (
    "body: a `{}`; validated, published to NATS (again, for up to `publish_wait`, while NATS does not "
    "take it; a batch sent twice within the stream's duplicate window is stored once); 202 "
    '`{{"accepted": n}}`; a body that is not one is 400'
)

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

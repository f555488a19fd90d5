"""``/api/v1/notifiers``: the notifier replicas running, each as it describes itself on
``sf.control.notifier.status`` (:mod:`signalfire.control`). None answering means that firing
alerts notify nobody: the dashboard's Overview says so."""

from __future__ import annotations

import logging

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from signalfire.bus import request_every
from signalfire.control import NOTIFIER_STATUS, NotifierStatus, read_statuses
from signalfire.gateway.api.endpoint import Endpoint
from signalfire.gateway.api.resources import Resources, json_response
from signalfire.gateway.errors import ApiError

log = logging.getLogger(__name__)


class Notifiers(msgspec.Struct, kw_only=True):
    """Every notifier replica that answered, by id; empty when none runs."""

    notifiers: list[NotifierStatus]


async def notifiers(res: Resources, request: Request) -> Response:
    if res.nc is None or not res.nc.is_connected:
        raise ApiError(503, "unavailable", "NATS is not connected; the notifiers cannot be asked")
    subject = res.subjects.control("notifier", NOTIFIER_STATUS)
    answers = await request_every(res.nc, subject, timeout=float(res.config.control_timeout))
    if not answers and not res.nc.is_connected:  # cut off while asking: that says nothing
        raise ApiError(503, "unavailable", "NATS is not connected; the notifiers cannot be asked")
    statuses, unreadable = read_statuses(answers)
    if unreadable:
        log.warning(
            "an answer on the notifiers' status subject is not readable", extra={"answers": unreadable}
        )
    return json_response(Notifiers(notifiers=statuses))


routes = [
    Endpoint(
        "GET",
        "/api/v1/notifiers",
        notifiers,
        "viewer",
        "The notifier replicas running, with their channels (empty when none runs)",
        '`{"notifiers": [{"replica", "hostname", "started", "channels": {"name": "type"}, "routes", '
        '"in_flight", "heartbeat_every", "heartbeat_last", "heartbeat_trouble"}]}`: every replica that '
        "answered on `sf.control.notifier.status` within `control_timeout` (collected until 0.25 s "
        "pass without another); empty when none runs, and then firing alerts notify nobody",
        answer=Notifiers,
    ),
]

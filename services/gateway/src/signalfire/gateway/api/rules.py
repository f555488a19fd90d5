"""``/api/v1/rules``: the evaluator's rules and their active alerts, asked of the evaluator."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from starlette.requests import Request
from starlette.responses import Response

from signalfire.bus import request_json
from signalfire.gateway.api.endpoint import Endpoint
from signalfire.gateway.api.resources import Resources, json_response
from signalfire.gateway.errors import ApiError
from signalfire.partitions import partition_names


async def rules(res: Resources, request: Request) -> Response:
    if res.nc is None or not res.nc.is_connected:
        raise ApiError(503, "unavailable", "NATS is not connected; the rules cannot be asked for")
    subject = res.subjects.control("evaluator", "rules")
    timeout = float(res.config.control_timeout)
    try:
        reply = await request_json(res.nc, subject, timeout=timeout)
    except LookupError:
        raise ApiError(503, "unavailable", "no evaluator answered; is one running?") from None
    replica = reply.get("replica") if isinstance(reply, dict) else None
    if replica and len(replica["judged"]) < replica["partitions"] + 1:
        # Partitioned evaluators (docs/scaling.md): each knows the alerts of its own hosts.
        reply = await _every_replica(res.nc, subject, timeout, replica["partitions"] + 1) or reply
    if isinstance(reply, dict):
        reply["evaluators"] = _evaluators(reply)
    return json_response(reply)


def _evaluators(reply: dict[str, Any]) -> dict[str, Any] | None:
    """Who judges what, as the replicas that answered say: ``partitions`` (the host
    partitions' count), ``replicas`` (each one's ``id`` and the partitions it ``judged``) and
    ``unjudged``, the partitions no replica that answered judges (a replica died and its
    leases have not been taken over yet, or one did not answer in time). None for an evaluator
    without partitions, which judges every host."""
    answered = reply.get("replicas") or ([reply["replica"]] if reply.get("replica") else [])
    if not answered:
        return None
    count = int(answered[0]["partitions"])
    judged = {p for r in answered for p in r["judged"]}
    return {
        "partitions": count,
        "replicas": sorted(
            ({"id": r["id"], "judged": sorted(r["judged"])} for r in answered), key=lambda r: r["id"]
        ),
        "unjudged": [p for p in partition_names(count) if p not in judged],
    }


async def _every_replica(nc: NATS, subject: str, timeout: float, partitions: int) -> dict[str, Any] | None:
    """Every evaluator replica's answer, merged: the rules once, with every replica's alerts
    and series; ``replicas`` lists who answered, ``complete`` whether they cover every
    partition (replies are awaited until they do, or for ``timeout``)."""
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        answers.put_nowait(msg.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    replies: dict[str, dict[str, Any]] = {}
    covered: set[str] = set()
    try:
        await nc.publish(subject, b"{}", reply=inbox)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(covered) < partitions:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                data = await asyncio.wait_for(answers.get(), left)
            except TimeoutError:
                break
            answer = msgspec.json.decode(data)
            replica = answer.get("replica") or {}
            replies[str(replica.get("id"))] = answer
            covered.update(replica.get("judged", []))
    finally:
        await sub.unsubscribe()
    if not replies:
        return None
    first = next(iter(replies.values()))
    alerts: dict[str, list[Any]] = {}
    series: dict[str, int] = {}
    for answer in replies.values():
        for rule in answer["rules"]:
            alerts.setdefault(rule["name"], []).extend(rule["alerts"])
            series[rule["name"]] = series.get(rule["name"], 0) + int(rule.get("series", 0))
    return {
        **first,
        "replica": None,
        "replicas": [
            {k: a["replica"][k] for k in ("id", "partitions", "judged")}
            for a in replies.values()
            if a.get("replica")
        ],
        "complete": len(covered) >= partitions,
        "rules": [
            {**rule, "alerts": alerts.get(rule["name"], []), "series": series.get(rule["name"], 0)}
            for rule in first["rules"]
        ],
    }


routes = [
    Endpoint(
        "GET",
        "/api/v1/rules",
        rules,
        "viewer",
        "The evaluator's rules and their active alerts (503 when no evaluator answers)",
        "the evaluator's answer on `sf.control.evaluator.rules` (partitioned replicas: every "
        "replica's, merged), with `evaluators`: who judges which partitions and which none "
        "judges (null without partitions); 503 when no evaluator answers",
        answer=dict[str, Any],
    ),
]

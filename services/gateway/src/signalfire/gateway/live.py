"""``WS /api/v1/stream`` and its SSE fallback ``GET /api/v1/events/stream``, fed by the hub.

Protocol (WebSocket): the client connects offering the subprotocols ``signalfire.v1`` and
``signalfire.bearer.<token>`` (the gateway selects ``signalfire.v1``; ``?token=`` works too,
for clients that cannot offer subprotocols), then sends
``{"subscribe": {"hosts": [...], "metrics": [...], "alerts": true}, "last_seq": N|null,
"epoch": E|null}``; it may send ``{"subscribe": ...}`` again at any time to change what it
gets. The gateway first sends ``{"kind": "hello", "epoch", "head"}`` as a bare object (then
``{"kind": "reset", ...}``, also bare, when it cannot resume from ``last_seq`` of ``epoch``:
the ring moved past it, or the gateway restarted; on a resume it can serve, every frame
missed follows), then JSON arrays of frames (``{"seq", "kind": "metric"|"alert"|"host", ...}``), at
most ``flush_interval`` apart while there is traffic, and a heartbeat every
``heartbeat_seconds`` when there is none. A client that stays blocked is disconnected with
close code 4008 and resumes with its last sequence number; at shutdown every client gets
close code 1012 and reconnects. A client whose token is revoked or deleted is closed with code
4401 and the reason ``token revoked`` (:class:`TokenWatch` checks every open stream's token
every ``stream_token_recheck`` seconds; a revocation through the API ends them at once).

SSE: ``GET /api/v1/events/stream?hosts=a,b&metrics=cpu.*&alerts=1`` with ``Last-Event-ID``
(or ``?last_seq=``) to resume; one ``data:`` line per frame with ``id: <epoch>-<seq>``. A
revoked token's stream ends with ``event: error`` and ``{"kind": "error", "code":
"token_revoked", "message"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from signalfire.events import AgentStatus, AlertAction, AlertEvent, PayloadError, decode
from signalfire.gateway.auth import STREAM_SUBPROTOCOL, Principal, valid_token_ids
from signalfire.gateway.errors import invalid
from signalfire.gateway.store import MetricsWritten
from signalfire.gateway.stream import (
    AccessRevoked,
    ClientStalled,
    StreamClient,
    StreamClosed,
    StreamHub,
    Subscription,
)
from signalfire.telemetry import Counter

log = logging.getLogger("signalfire.gateway.live")

CLOSE_STALLED = 4008
CLOSE_BAD_REQUEST = 4400
CLOSE_RESTARTING = 1012
#: 4000 + 401, like a refused handshake: the client must sign in again, not reconnect.
CLOSE_TOKEN_REVOKED = 4401
TOKEN_REVOKED = "token revoked"


class ClientMessage(msgspec.Struct, forbid_unknown_fields=True):
    subscribe: Subscription | None = None
    last_seq: int | None = None
    #: The ``epoch`` of the ``hello`` frame that ``last_seq`` belongs to.
    epoch: str | None = None


def decode_client_message(data: bytes) -> ClientMessage:
    """A client's message; :class:`~signalfire.events.PayloadError` naming the problem for any
    bytes that are not one (not UTF-8, not JSON, too deep, unknown fields, wrong types)."""
    return decode(data, ClientMessage)


@dataclass
class LiveSettings:
    heartbeat_seconds: float = 15.0
    #: Frames are batched for this long, so a busy stream sends a few messages a second.
    flush_interval: float = 0.1
    #: A send that takes longer than this means the client is not reading.
    send_timeout: float = 10.0


async def _receive(ws: WebSocket) -> bytes:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("bytes") is not None:
        return bytes(message["bytes"])
    return str(message.get("text", "")).encode()


def _join(frames: list[bytes]) -> bytes:
    return b"[" + b",".join(frames) + b"]"


RESET = b'{"kind":"reset","reason":"the stream cannot resume from your last sequence number; reload"}'
REVOKED_EVENT = msgspec.json.encode(
    {
        "kind": "error",
        "code": "token_revoked",
        "message": "the API token of this stream was revoked or deleted; sign in again",
    }
)
HEARTBEAT = b'{"kind":"heartbeat"}'


class LiveEndpoints:
    """The two stream endpoints over one :class:`StreamHub`."""

    def __init__(
        self, hub: StreamHub, settings: LiveSettings | None = None, *, rejected: Counter | None = None
    ) -> None:
        self.hub = hub
        self.settings = settings or LiveSettings()
        #: Client messages refused (the client is closed with ``CLOSE_BAD_REQUEST``).
        self.rejected = rejected

    async def _refuse(self, ws: WebSocket, exc: PayloadError) -> None:
        """Close ``ws`` for a message that is not a client message, saying why; counted."""
        if self.rejected is not None:
            self.rejected.inc()
        log.info("closed a stream client that sent a bad message", extra={"reason": str(exc)})
        with contextlib.suppress(Exception):
            await ws.close(CLOSE_BAD_REQUEST, f"bad subscription: {exc}"[:120])

    async def websocket(self, ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols", [])
        await ws.accept(subprotocol=STREAM_SUBPROTOCOL if STREAM_SUBPROTOCOL in offered else None)
        try:
            first = decode_client_message(await asyncio.wait_for(_receive(ws), 30))
        except PayloadError as exc:
            await self._refuse(ws, exc)
            return
        except (TimeoutError, WebSocketDisconnect):
            return
        client, complete = self.hub.connect(
            first.subscribe or Subscription(), first.last_seq, first.epoch, token_id=_token_id(ws.scope)
        )
        reader = asyncio.create_task(self._read_updates(ws, client))
        try:
            # Control messages are bare objects, frames come in arrays (docs/dashboard.md).
            await ws.send_text(self._hello().decode())
            if not complete:
                await ws.send_text(RESET.decode())
            await self._pump(ws, client)
        except ClientStalled as exc:
            log.warning("disconnecting a stalled stream client", extra={"reason": str(exc)})
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_STALLED, "too slow: resume with your last sequence number")
        except StreamClosed:
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_RESTARTING, "the gateway is restarting: reconnect and resume")
        except AccessRevoked:
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_TOKEN_REVOKED, TOKEN_REVOKED)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            reader.cancel()
            self.hub.disconnect(client)

    def _hello(self) -> bytes:
        """The first frame of every connection: the epoch and newest sequence number."""
        return msgspec.json.encode({"kind": "hello", "epoch": self.hub.epoch, "head": self.hub.seq})

    async def _pump(self, ws: WebSocket, client: StreamClient) -> None:
        s = self.settings
        while True:
            frames = await client.next_frames(timeout=s.heartbeat_seconds)
            payload = _join([f.data for f in frames]) if frames else _join([HEARTBEAT])
            async with asyncio.timeout(s.send_timeout):
                await ws.send_text(payload.decode())
            await asyncio.sleep(s.flush_interval)

    async def _read_updates(self, ws: WebSocket, client: StreamClient) -> None:
        try:
            while True:
                try:
                    message = decode_client_message(await _receive(ws))
                except PayloadError as exc:
                    # The dashboard never sends one: a broken or hostile client. Close it
                    # with the reason rather than keep serving it what it did not ask for.
                    await self._refuse(ws, exc)
                    self.hub.disconnect(client)
                    client.close()
                    return
                if message.subscribe is not None:
                    self.hub.resubscribe(client, message.subscribe)
        except (WebSocketDisconnect, RuntimeError, OSError):
            # The tab went away: end its pump now rather than at its next send.
            self.hub.disconnect(client)
            client.close()
        except asyncio.CancelledError:
            pass

    async def sse(self, request: Request) -> StreamingResponse:
        params = request.query_params

        def listed(name: str) -> list[str]:
            return [p for p in params.get(name, "").split(",") if p]

        subscription = Subscription(
            hosts=listed("hosts"), metrics=listed("metrics"), alerts=params.get("alerts", "1") != "0"
        )
        # Event ids are "<epoch>-<seq>", so EventSource's automatic Last-Event-ID resumes
        # correctly across gateway restarts; ?last_seq= takes a bare number or the same form.
        raw_last = request.headers.get("last-event-id") or params.get("last_seq")
        epoch: str | None = None
        try:
            if raw_last and "-" in raw_last:
                epoch, _, raw_last = raw_last.rpartition("-")
            last_seq = int(raw_last) if raw_last else None
        except ValueError:
            raise invalid("last_seq", "must be a sequence number (or the id of the last event)") from None
        client, complete = self.hub.connect(subscription, last_seq, epoch, token_id=_token_id(request.scope))
        prefix = self.hub.epoch.encode() + b"-"

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"event: hello\ndata: " + self._hello() + b"\n\n"
                if not complete:
                    yield b"event: reset\ndata: " + RESET + b"\n\n"
                while True:
                    frames = await client.next_frames(timeout=self.settings.heartbeat_seconds)
                    if not frames:
                        yield b": heartbeat\n\n"
                    for frame in frames:
                        yield b"id: " + prefix + b"%d\ndata: " % frame.seq + frame.data + b"\n\n"
            except (ClientStalled, StreamClosed):
                return
            except AccessRevoked:
                yield b"event: error\ndata: " + REVOKED_EVENT + b"\n\n"
            finally:
                self.hub.disconnect(client)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def _token_id(scope: Mapping[str, object]) -> int | None:
    """The id of the API token the request authenticated with (set by the auth middleware)."""
    state = scope.get("state")
    principal = state.get("principal") if isinstance(state, dict) else None
    return principal.token_id if isinstance(principal, Principal) else None


class TokenWatch:
    """Ends the live streams of tokens that were revoked or deleted since they connected.

    Revocations through this gateway's API end their streams at once (:meth:`StreamHub.revoke`);
    this catches the rest — ``signalfire token revoke``, another replica's API, a deleted row —
    by checking every open stream's token every ``interval`` seconds (one query for all of
    them). While the database is unreachable the streams are left open and the check is
    retried at the next interval.
    """

    def __init__(self, hub: StreamHub, pool: asyncpg.Pool, interval: float) -> None:
        self.hub = hub
        self.pool = pool
        self.interval = interval

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> int:
        """End the streams whose token is no longer valid; returns how many were ended."""
        token_ids = self.hub.token_ids()
        if not token_ids:
            return 0
        try:
            valid = await valid_token_ids(self.pool, token_ids)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("cannot re-check the tokens of open streams", extra={"reason": str(exc)})
            return 0
        ended = self.hub.revoke(token_ids - valid)
        if ended:
            log.info("ended streams of revoked tokens", extra={"streams": ended})
        return ended


class LiveFeed:
    """What the ingest hands to the stream once it has committed: samples, alerts, actions,
    agent statuses. Frames go out only after the data is stored, so what a tab sees live is
    also what a reload through the REST API returns."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub

    def metrics(self, written: MetricsWritten, statuses: Sequence[AgentStatus]) -> None:
        """The samples of what a round stored (:meth:`Store.write_metrics`, or another ingest's
        committed frames) and agent statuses."""
        if not self.hub.clients:
            # Nobody is watching: no frames (a third of the ingest's CPU at 100k samples/s).
            # A tab that comes back resumes with a reset and reloads through the REST API.
            if written.uniform or written.rows:
                self.hub.skip_metrics()
        else:
            for host, keys, at, values in written.uniform:
                samples = zip(keys, values, strict=True)
                self.hub.publish_samples(host, ((key[1], labels_of(key[2]), at, v) for key, v in samples))
            for key, at, value in written.rows:
                self.hub.publish_samples(key[0], ((key[1], labels_of(key[2]), at, value),))
        for status in statuses:
            self.hub.publish(
                "host",
                status.host,
                {"host": status.host, "status": status.status, "time": status.time},
                key=f"host\x00{status.host}",
            )

    def reset(self, reason: str) -> None:
        """Frames this process should have had were missed: every client reloads."""
        self.hub.reset(reason)

    def alerts(self, events: Sequence[AlertEvent]) -> None:
        for event in events:
            self.hub.publish("alert", event.host, msgspec.to_builtins(event), key=event.id)

    def actions(self, actions: Sequence[AlertAction], hosts: Mapping[str, str]) -> None:
        """Actions on alerts (``hosts`` maps alert ids to their host, for subscriptions)."""
        for action in actions:
            host = hosts.get(action.alert_id, "")
            self.hub.publish(
                "alert",
                host,
                {
                    "id": action.alert_id,
                    "host": host,
                    "action": action.action,
                    "actor": action.actor,
                    "time": action.time,
                    "note": action.note,
                },
                key=action.alert_id,
            )


@functools.lru_cache(maxsize=65536)
def labels_of(text: str) -> dict[str, str]:
    """A series key's labels JSON as a dict (the frames share it: never changed after)."""
    labels: dict[str, str] = msgspec.json.decode(text)
    return labels

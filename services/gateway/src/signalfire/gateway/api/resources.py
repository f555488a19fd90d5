"""What the endpoints work with (database, NATS, the newest values, the live-stream hub, the
clock), and the few things every handler does with a request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from starlette.requests import Request
from starlette.responses import Response

from signalfire.gateway.auth import Principal
from signalfire.gateway.commits import Commits
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.errors import ApiError
from signalfire.gateway.live import LiveEndpoints
from signalfire.gateway.store import LatestValues, Store
from signalfire.gateway.stream import StreamHub
from signalfire.subjects import Subjects
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.gateway.api")

_json = msgspec.json.Encoder()
S = TypeVar("S", bound=msgspec.Struct)
T = TypeVar("T")

#: A JSON object passed through as the database's text (``labels``, ``facts``, ...).
JsonObject = Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"type": "object"})]


@dataclass
class Resources:
    """The resources the endpoints are bound to; owned by the caller of ``create_app``."""

    config: GatewayConfig
    pool: asyncpg.Pool
    nc: NATS | None
    registry: Registry
    latest: LatestValues
    store: Store
    clock: Callable[[], float]
    #: The live streams: a token revoked through the API ends its open streams at once.
    hub: StreamHub | None = None
    live: LiveEndpoints | None = None
    #: ``/latest`` for every series, encoded, with the :attr:`LatestValues.version` it shows.
    latest_encoded: tuple[int, bytes] | None = field(default=None)
    #: Per host, the newest values the health score looks at, with the ``time.monotonic()`` they
    #: were gathered at (``api.hosts`` reuses them for a second: a dashboard reads the fleet in pages).
    pressure: tuple[float, dict[str, dict[str, float]]] | None = field(default=None)
    #: The OpenAPI document, encoded once.
    openapi_json: bytes = b"{}"
    #: Where the 5-minute rollups begin (``rollup_fold.since_5m``, unix seconds): fixed by
    #: migration 0011, which ran before the API serves; read at the first query that needs it.
    since_5m: float | None = None
    #: Woken by this process's consumers when they commit (actions, silences) the API waits for.
    commits: Commits = field(default_factory=Commits)
    #: Held by each heavy read (:meth:`reading`): at most ``config.query_connections`` at once.
    query_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.query_slots = asyncio.Semaphore(self.config.query_connections)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for a heavy read (a range query's statement, an export), taken
        only once one of the process's ``query_connections`` slots is free: however many
        charts and exports ask at once, ingest's rounds and the other writers keep the rest
        of the pool."""
        async with self.query_slots, self.pool.acquire() as conn:
            yield conn

    @property
    def subjects(self) -> Subjects:
        return self.config.nats.subjects

    async def publish(self, subject: str, data: bytes, msg_id: str | None = None) -> None:
        """Publish to JetStream and wait for its acknowledgement; a 503 when NATS is away or does
        not take the message. With ``msg_id`` (``Nats-Msg-Id``: the stream stores a message
        published again with the same id once) it is published again while NATS does not take
        it (:meth:`persist`): a person's resolve made while the gateway's NATS node dies, or
        while a stream elects a new leader, is answered when NATS takes it, not refused."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None

        async def send(nc: NATS, timeout: float) -> None:
            await nc.jetstream().publish(subject, data, timeout=timeout, headers=headers)

        await self.persist(send, "NATS did not take the message", again=msg_id is not None, subject=subject)

    async def persist(
        self,
        attempt: Callable[[NATS, float], Awaitable[T]],
        refused: str,
        *,
        again: bool = True,
        keep: tuple[type[BaseException], ...] = (),
        **context: object,
    ) -> T:
        """Run ``attempt(nc, timeout)``, a write NATS may not take at once (the gateway's
        connection moving to another node, a stream or bucket electing its leader after a node
        died: seconds), again until it succeeds, for up to ``publish_wait`` (with ``again``);
        then a 503 saying ``refused`` (or that NATS is not connected). ``attempt`` must be safe
        to repeat: a message with its id, a write that recognises its own earlier landing.
        Exceptions of the ``keep`` types are the answer, not NATS trouble: raised at once."""
        wait = float(self.config.publish_wait) if again else 0.0
        deadline = time.monotonic() + wait
        pause = 0.1
        while True:
            if self.nc is None or not self.nc.is_connected:
                reason = "NATS is not connected"
            else:
                # each try within what is left of the wait (one try: the whole control_timeout)
                timeout = float(self.config.control_timeout)
                if wait:
                    timeout = max(0.1, min(deadline - time.monotonic(), timeout))
                try:
                    return await attempt(self.nc, timeout)
                except keep:
                    raise
                except Exception as exc:
                    reason = repr(exc)
            if time.monotonic() + pause > deadline:
                log.warning("NATS did not take a write", extra={**context, "reason": reason, "waited": wait})
                if reason == "NATS is not connected":
                    raise ApiError(503, "unavailable", "NATS is not connected; try again shortly")
                raise ApiError(503, "unavailable", f"{refused}; try again shortly")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` (structs, dicts, lists) encoded as a JSON answer."""
    return Response(_json.encode(data), status_code=status, media_type="application/json")


def encode_json(data: Any) -> bytes:
    """``data`` as compact JSON."""
    return _json.encode(data)


def raw_json(text: str | None) -> msgspec.Raw:
    """A JSON column's text passed through as is (``{}`` when it is empty)."""
    return msgspec.Raw(text.encode() if text else b"{}")


def from_rows(kind: type[S], rows: Iterable[Mapping[str, Any]], json: Collection[str] = ()) -> list[S]:
    """``kind`` structs from database rows whose columns are named as its fields (other
    columns are ignored); the ``json`` columns are JSON text, passed through as is."""
    names = kind.__struct_fields__
    return [kind(**{n: raw_json(row[n]) if n in json else row[n] for n in names}) for row in rows]


def decode_json(text: str | None) -> Any:
    """A JSON column's text decoded (``{}`` when it is empty)."""
    return msgspec.json.decode(text) if text else {}


def principal(request: Request) -> Principal:
    """Who made ``request`` (put there by the auth middleware)."""
    found: Principal = request.scope["state"]["principal"]
    return found


def audit_details(request: Request, details: dict[str, Any]) -> None:
    """What the audit record of this request should say besides method and path."""
    request.scope.setdefault("state", {}).setdefault("audit", {}).update(details)

"""Live fan-out to dashboard tabs: one hub, many subscribers, resumable by sequence number.

Every message the gateway streams (a sample, an alert event, a host status change) is
encoded **once** into a frame carrying a global sequence number and kept in a ring buffer for
a few minutes. Each client has its own bounded queue:

- metric frames are coalesced to the latest value per series, so a slow client gets fresh
  values instead of a backlog;
- alert and host frames are never dropped; a client whose queue of those grows past
  ``max_pending`` is stalled and is disconnected (it resumes from its last sequence number);
- on reconnect a client sends the last sequence number it saw and gets every frame after it
  that its subscription matches, from the ring, every sample included (a chart that was away
  for a few seconds draws each point it missed): no gap and no duplicate. A client whose last
  number has already left the ring gets a ``reset`` frame and reloads through the REST API.

Clients that name exact hosts are indexed by host, so a frame is offered only to the clients
of its host and to those subscribed by pattern or to every host: with many tabs each on one
host (the Host page), publishing costs what those tabs need, not one check per connection.

Coalescing (of live frames only) skips sequence numbers by design: a skipped metric frame was
superseded by a later one for the same series, which the client does receive.
"""

from __future__ import annotations

import asyncio
import fnmatch
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

Kind = Literal["metric", "alert", "host", "reset"]

_encoder = msgspec.json.Encoder()

#: Frames replayed from the ring go out at most this many per message, so a tab resuming
#: after minutes gets a few large messages rather than one huge one.
REPLAY_CHUNK = 5_000


class Frame(msgspec.Struct, frozen=True, gc=False):
    """One encoded stream message.

    Not tracked by the garbage collector (``gc=False``: every field is a plain value), so the
    ring's few hundred thousand frames do not lengthen each full collection's pause.
    """

    seq: int
    kind: Kind
    host: str
    #: Identity used for coalescing: the series for metrics, the alert id for alerts.
    key: str
    metric: str
    time: float
    data: bytes
    #: A metric frame's sample time: a pending frame is replaced only by a newer sample.
    sample_time: float = 0.0


class Subscription(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a client wants: hosts and metrics (exact names or globs; empty = all), alerts."""

    hosts: list[str] = []
    metrics: list[str] = []
    alerts: bool = True
    host_status: bool = True

    def matches(self, frame: Frame) -> bool:
        if frame.kind == "alert":
            return self.alerts and _any_match(self.hosts, frame.host)
        if frame.kind == "host":
            return self.host_status and _any_match(self.hosts, frame.host)
        return _any_match(self.hosts, frame.host) and _any_match(self.metrics, frame.metric)


def _any_match(patterns: list[str], value: str) -> bool:
    if not patterns:
        return True
    return any(p == value or (any(c in p for c in "*?[") and fnmatch.fnmatchcase(value, p)) for p in patterns)


class ClientStalled(Exception):
    """The client did not keep up with frames that may not be dropped."""


class StreamClosed(Exception):
    """The gateway is shutting down; the client reconnects (to this or another replica)."""


class AccessRevoked(Exception):
    """The token the client connected with was revoked or deleted: it must not reconnect with it."""


@dataclass(eq=False)
class StreamClient:
    """One connected tab. Frames are taken with :meth:`next_frames`."""

    subscription: Subscription
    max_pending: int
    on_coalesced: Callable[[int], None] = lambda n: None
    #: The API token the client connected with (``None``: not known, e.g. in tests of the hub).
    token_id: int | None = None
    _metrics: OrderedDict[str, Frame] = field(default_factory=OrderedDict)
    _others: deque[Frame] = field(default_factory=deque)
    #: Frames it missed while away, from the ring: every one, in order, before any live frame.
    _replay: deque[Frame] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: bool = False
    closed: bool = False
    revoked: bool = False
    last_seq: int = 0

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def revoke(self) -> None:
        """End the stream at once because its token is no longer valid."""
        self.revoked = True
        self._ready.set()

    def offer(self, frame: Frame) -> None:
        if self.stalled or not self.subscription.matches(frame):
            return
        if frame.kind == "metric":
            pending = self._metrics.get(frame.key)
            if pending is not None:
                self.on_coalesced(1)
                # Several ingest processes (writers, workers, gateways) commit out of order: an
                # older sample that arrives late must not replace the newer one still pending.
                if pending.sample_time > frame.sample_time:
                    return
                del self._metrics[frame.key]
            self._metrics[frame.key] = frame
        else:
            if len(self._others) >= self.max_pending:
                self.stalled = True
            self._others.append(frame)
        self._ready.set()

    def tell(self, frame: Frame) -> None:
        """Queue ``frame`` whatever the subscription, never coalesced (a ``reset``)."""
        if not self.stalled:
            self._others.append(frame)
            self._ready.set()

    def replay(self, frame: Frame) -> None:
        """Queue a frame missed while disconnected: unlike :meth:`offer`, never coalesced
        (the samples of the gap are what the chart lacks) and not counted towards a stall."""
        if self.subscription.matches(frame):
            self._replay.append(frame)
            self._ready.set()

    def pending(self) -> int:
        return len(self._metrics) + len(self._others) + len(self._replay)

    async def next_frames(self, timeout: float | None = None) -> list[Frame]:
        """Everything queued, in sequence order; waits up to ``timeout`` when nothing is.

        Raises :class:`ClientStalled` once the client fell too far behind,
        :class:`AccessRevoked` once its token was revoked, :class:`StreamClosed` at shutdown.
        """
        self._check()
        if self._replay:
            # Everything live came later than the whole replay: send the replay first.
            replay = self._replay
            frames = [replay.popleft() for _ in range(min(len(replay), REPLAY_CHUNK))]
            self.last_seq = frames[-1].seq
            return frames
        if not self._metrics and not self._others:
            self._ready.clear()
            try:
                # asyncio.timeout, not wait_for: no task per wait (one per client per message)
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return []
            self._check()
        frames = sorted([*self._metrics.values(), *self._others], key=lambda f: f.seq)
        self._metrics.clear()
        self._others.clear()
        if frames:
            self.last_seq = frames[-1].seq
        return frames

    def _check(self) -> None:
        if self.revoked:
            raise AccessRevoked("the API token was revoked")
        if self.closed:
            raise StreamClosed("the gateway is shutting down")
        if self.stalled:
            raise ClientStalled(f"more than {self.max_pending} undelivered alert/host frames")


_NO_CLIENTS: frozenset[StreamClient] = frozenset()


class StreamHub:
    """Encodes each message once, keeps a ring for resume and feeds every client."""

    def __init__(
        self,
        *,
        ring_seconds: float = 300.0,
        ring_max_frames: int = 200_000,
        client_max_pending: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ring_seconds = ring_seconds
        self.ring_max_frames = ring_max_frames
        self.client_max_pending = client_max_pending
        self.clock = clock
        #: Names this hub's sequence numbers: a client resuming with another epoch's number
        #: (the gateway restarted, or it reconnected to another replica) gets a ``reset``.
        self.epoch = secrets.token_hex(6)
        self.seq = 0
        self._ring: deque[Frame] = deque()
        self._clients: set[StreamClient] = set()
        #: Clients subscribed to exact host names, by host; the rest (every host, or patterns).
        self._by_host: dict[str, set[StreamClient]] = {}
        self._wide: set[StreamClient] = set()
        self.closed = False
        #: Metric frames are not made while no client is connected (nobody would read them,
        #: and the ingest would pay for them), and frames of other ingest processes can be
        #: missed (:meth:`reset`); a client resuming from at or before this sequence number may
        #: have missed some, so it gets a ``reset`` instead.
        self.metrics_skipped_after: int | None = None
        self.frames_published = 0
        self.frames_coalesced = 0
        self.clients_stalled = 0
        self.clients_revoked = 0
        #: ``reset`` frames sent to every client (frames this process should have had were missed).
        self.resets = 0

    # Publishing ------------------------------------------------------------------------
    def publish(
        self,
        kind: Kind,
        host: str,
        payload: dict[str, Any],
        *,
        key: str = "",
        metric: str = "",
        sample_time: float = 0.0,
    ) -> Frame:
        """Encode ``payload`` once (adding ``seq`` and ``kind``) and hand it to every client."""
        self.seq += 1
        body = {"seq": self.seq, "kind": kind, **payload}
        frame = Frame(
            seq=self.seq,
            kind=kind,
            host=host,
            key=key or f"{host}\x00{metric}",
            metric=metric,
            time=self.clock(),
            data=_encoder.encode(body),
            sample_time=sample_time,
        )
        self._ring.append(frame)
        self._trim()
        self.frames_published += 1
        for clients in (self._wide, self._by_host.get(host, _NO_CLIENTS)):
            for client in clients:
                was_stalled = client.stalled
                client.offer(frame)
                if client.stalled and not was_stalled:
                    self.clients_stalled += 1
        return frame

    def publish_samples(self, host: str, samples: Iterable[tuple[str, dict[str, str], float, float]]) -> None:
        """One metric frame per sample: ``(metric, labels, time, value)``."""
        for metric, labels, at, value in samples:
            series = metric + "".join(f"\x00{k}={v}" for k, v in sorted(labels.items()))
            self.publish(
                "metric",
                host,
                {"host": host, "metric": metric, "labels": labels, "time": at, "value": value},
                key=f"{host}\x00{series}",
                metric=metric,
                sample_time=at,
            )

    def _trim(self) -> None:
        horizon = self.clock() - self.ring_seconds
        ring = self._ring
        while ring and (len(ring) > self.ring_max_frames or ring[0].time < horizon):
            ring.popleft()

    # Clients ---------------------------------------------------------------------------
    def connect(
        self,
        subscription: Subscription,
        last_seq: int | None = None,
        epoch: str | None = None,
        *,
        token_id: int | None = None,
    ) -> tuple[StreamClient, bool]:
        """Register a client (connected with API token ``token_id``); with ``last_seq``, queue
        what it missed from the ring.

        Returns the client and whether the resume was complete (False: the ring no longer
        holds ``last_seq + 1``, or ``last_seq`` is from another ``epoch``, and the client must
        reload what it shows through the REST API — send it a ``reset`` frame).
        """
        client = StreamClient(
            subscription, self.client_max_pending, on_coalesced=self._count_coalesced, token_id=token_id
        )
        if self.closed:
            client.close()
        complete = True
        skipped = self.metrics_skipped_after
        if (
            (epoch is not None and epoch != self.epoch)
            or (last_seq is not None and last_seq > self.seq)
            or (last_seq is not None and skipped is not None and last_seq <= skipped)
        ):
            complete = False
        elif last_seq is not None and last_seq < self.seq:
            self._trim()
            oldest = self._ring[0].seq if self._ring else self.seq + 1
            complete = last_seq + 1 >= oldest
            for frame in self._ring:
                if frame.seq > last_seq:
                    client.replay(frame)
        self._clients.add(client)
        self._index(client)
        return client, complete

    def reset(self, reason: str) -> None:
        """Tell every connected client to reload what it shows through the REST API (frames
        it should have had were missed: see :class:`~signalfire.gateway.committed.CommittedFeed`),
        with a ``reset`` frame whatever its subscription; a client that resumes from a
        sequence number up to here is told so too."""
        self.metrics_skipped_after = self.seq
        data = _encoder.encode({"kind": "reset", "reason": reason})
        frame = Frame(seq=self.seq, kind="reset", host="", key="", metric="", time=self.clock(), data=data)
        for client in self._clients:
            client.tell(frame)
        self.resets += 1

    def skip_metrics(self) -> None:
        """Record that metric frames were left unmade from here (there were no clients)."""
        self.metrics_skipped_after = self.seq

    def resubscribe(self, client: StreamClient, subscription: Subscription) -> None:
        """Change what ``client`` gets from the next frame on."""
        self._unindex(client)
        client.subscription = subscription
        if client in self._clients:
            self._index(client)

    def disconnect(self, client: StreamClient) -> None:
        self._clients.discard(client)
        self._unindex(client)

    def _index(self, client: StreamClient) -> None:
        hosts = client.subscription.hosts
        if not hosts or any(c in p for p in hosts for c in "*?["):
            self._wide.add(client)
        else:
            for host in hosts:
                self._by_host.setdefault(host, set()).add(client)

    def _unindex(self, client: StreamClient) -> None:
        self._wide.discard(client)
        for host in client.subscription.hosts:
            clients = self._by_host.get(host)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self._by_host[host]

    def token_ids(self) -> set[int]:
        """The API tokens of the connected clients."""
        return {c.token_id for c in self._clients if c.token_id is not None}

    def revoke(self, token_ids: Collection[int]) -> int:
        """End the stream of every client connected with one of ``token_ids``; returns how many."""
        if not token_ids:
            return 0
        ended = [c for c in self._clients if c.token_id in token_ids and not c.revoked]
        for client in ended:
            client.revoke()
        self.clients_revoked += len(ended)
        return len(ended)

    def close(self) -> None:
        """End every client's stream (at shutdown): they reconnect and resume elsewhere."""
        self.closed = True
        for client in self._clients:
            client.close()

    def _count_coalesced(self, n: int) -> None:
        self.frames_coalesced += n

    @property
    def clients(self) -> int:
        return len(self._clients)

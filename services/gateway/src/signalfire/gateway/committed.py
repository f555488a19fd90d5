"""Committed frames: what an ingest committed, told to every gateway API process.

The live stream and the latest-value cache of an API process used to be fed by its own ingest
alone, so with two gateways (or ingest workers, :mod:`.workers`) a dashboard missed what the
others stored. Now every ingest, after a round commits, publishes what it stored on core NATS
subjects (no stream: a frame is a notice, the database is the record):

* ``<prefix>.committed.metrics``: metric batches, the bytes the agent published (already
  validated by the ingest; forwarded, not re-encoded);
* ``<prefix>.committed.status``: agent statuses;
* ``<prefix>.committed.alerts``: alert events;
* ``<prefix>.committed.actions``: people's actions on alerts, with the host of each alert.

Every API process subscribes to all four (a plain subscription: each gets every frame) and
feeds its :class:`~signalfire.gateway.store.LatestValues` and
:class:`~signalfire.gateway.stream.StreamHub` from them. A process that ingests itself has
fed its own hub already and skips frames of its own ``origin``, so a single gateway pays only
the publish. Only the gateway identity may publish or read these subjects
(:mod:`signalfire.buspolicy`).

The frame is gateway-internal (the gateway talks to itself across processes and replicas of
one version), so its struct lives here and not in :mod:`signalfire.events`, the contract
other services and agents build on. A frame never exceeds the server's ``max_payload``: a big
round is split over several. A frame (or an item in it) that cannot be decoded is counted in
``committed_frames_rejected_total`` and logged (once a minute per kind at most); the rest is
delivered.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from signalfire.events import AgentStatus, AlertAction, AlertEvent, PayloadError, decode
from signalfire.gateway.commits import Commits
from signalfire.gateway.ingest import decode_metric_batch
from signalfire.gateway.live import LiveFeed
from signalfire.gateway.store import LatestValues, Store
from signalfire.log import Throttle
from signalfire.subjects import Subjects
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.gateway.committed")

KINDS = ("metrics", "status", "alerts", "actions")

T = TypeVar("T")


class CommittedFrame(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One frame on ``<prefix>.committed.<kind>``; the subject says what ``items`` are."""

    #: The process that committed it (:func:`new_origin`).
    origin: str
    #: JSON of the items: the published bytes of metric batches, or encoded statuses, alert
    #: events or actions; each decoded on its own, so one bad item costs only itself.
    items: list[msgspec.Raw]
    #: ``actions`` only: the host of each alert id of the frame (for subscriptions by host).
    hosts: dict[str, str] = {}


def new_origin() -> str:
    """A process's origin id for its frames (random: a restarted process is a new origin)."""
    return secrets.token_hex(8)


_encoder = msgspec.json.Encoder()
#: Bytes of a frame besides its items (the origin, the keys, brackets), with room to spare.
_FRAME_OVERHEAD = 256


def _chunks(items: Sequence[bytes], room: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """``items`` in consecutive groups of at most ``room`` bytes (a comma each included); the
    second list holds any item that alone is larger than ``room``."""
    group: list[bytes] = []
    size = 0
    for item in items:
        need = len(item) + 1
        if need > room:
            yield [], [item]
            continue
        if group and size + need > room:
            yield group, []
            group, size = [], 0
        group.append(item)
        size += need
    if group:
        yield group, []


class CommittedPublisher:
    """Publishes what an ingest committed (called by :class:`~signalfire.gateway.ingest.Ingest`
    after each commit). A publish that fails is counted and logged; the data is stored all the
    same, and API processes that missed it see it on their next read of the database."""

    def __init__(self, nc: NATS, subjects: Subjects, origin: str, registry: Registry) -> None:
        self.nc = nc
        self.subjects = subjects
        self.origin = origin
        self.frames = registry.counter(
            "committed_frames_published", "Committed frames published for the API processes", ["kind"]
        )
        self.errors = registry.counter(
            "committed_publish_errors", "Committed frames that could not be published", ["reason"]
        )

    async def metrics(self, batches: Sequence[bytes], statuses: Sequence[AgentStatus]) -> None:
        """``batches``: the published JSON of the stored metric batches."""
        await self._publish("metrics", batches)
        if statuses:
            await self._publish("status", [_encoder.encode(s) for s in statuses])

    async def alerts(self, events: Sequence[AlertEvent]) -> None:
        await self._publish("alerts", [_encoder.encode(e) for e in events])

    async def actions(self, actions: Sequence[AlertAction], hosts: Mapping[str, str]) -> None:
        await self._publish("actions", [_encoder.encode(a) for a in actions], dict(hosts))

    async def _publish(self, kind: str, items: Sequence[bytes], hosts: dict[str, str] | None = None) -> None:
        if not items:
            return
        subject = self.subjects.committed(kind)
        hosts = hosts or {}
        room = self.nc.max_payload - _FRAME_OVERHEAD - len(self.origin) - len(_encoder.encode(hosts))
        for group, too_big in _chunks(items, room):
            if too_big:
                self.errors.labels(reason="too_large").inc()
                log.warning(
                    "an item is too large for a committed frame; API processes see it on reload",
                    extra={"subject": subject, "bytes": len(too_big[0])},
                )
                continue
            frame = CommittedFrame(origin=self.origin, items=[msgspec.Raw(i) for i in group], hosts=hosts)
            try:
                await self.nc.publish(subject, _encoder.encode(frame))
            except Exception as exc:  # stored all the same; counted, said once per failure
                self.errors.labels(reason="publish_failed").inc()
                log.warning(
                    "cannot publish a committed frame", extra={"subject": subject, "reason": repr(exc)}
                )
                return
            self.frames.labels(kind=kind).inc()


class CommittedFeed:
    """Feeds one API process's latest values and live stream from the committed frames of every
    ingest (its own ``origin`` skipped: that ingest feeds this process directly)."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        store: Store,
        latest: LatestValues,
        live: LiveFeed,
        commits: Commits | None,
        registry: Registry,
        origin: str | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.store = store
        self.latest = latest
        self.live = live
        self.commits = commits
        self.origin = origin
        self._prefix = subjects.committed("")
        self._subscription: Subscription | None = None
        self._throttle = Throttle(every=60.0)
        self.received = registry.counter(
            "committed_frames_received", "Committed frames of other ingest processes applied", ["kind"]
        )
        self.rejected = registry.counter(
            "committed_frames_rejected",
            "Committed frames (or items in them) that could not be decoded; the rest was applied",
            ["kind"],
        )

    async def start(self) -> None:
        """Subscribe (every frame, no queue group); frames arrive from now on."""
        self._subscription = await self.nc.subscribe(self.subjects.all_committed, cb=self._on_frame)

    async def stop(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception as exc:  # the connection is going away anyway
                log.debug("unsubscribe failed", extra={"reason": repr(exc)})
            self._subscription = None

    async def _on_frame(self, msg: Msg) -> None:
        self.apply(msg.subject, msg.data)

    def apply(self, subject: str, data: bytes) -> None:
        """Apply one frame received on ``subject`` (what the subscription calls)."""
        kind = subject[len(self._prefix) :] if subject.startswith(self._prefix) else ""
        if kind not in KINDS:
            self._reject("unknown", f"no committed frame is defined for {subject}")
            return
        try:
            frame = decode(data, CommittedFrame)
        except PayloadError as exc:
            self._reject(kind, str(exc))
            return
        if frame.origin == self.origin:
            return
        if kind == "metrics":
            batches = self._items(kind, frame.items, decode_metric_batch)
            self.latest.note(self.store.latest_of(batches))
            self.live.metrics(batches, [])
        elif kind == "status":
            self.live.metrics([], self._items(kind, frame.items, lambda d: decode(d, AgentStatus)))
        elif kind == "alerts":
            self.live.alerts(self._items(kind, frame.items, lambda d: decode(d, AlertEvent)))
        else:
            self.live.actions(self._items(kind, frame.items, lambda d: decode(d, AlertAction)), frame.hosts)
            if self.commits is not None:  # an action the API waits for may be among them
                self.commits.committed()
        self.received.labels(kind=kind).inc()

    def _items(self, kind: str, items: list[msgspec.Raw], decoder: Callable[[bytes], T]) -> list[T]:
        good: list[T] = []
        bad: list[str] = []
        for item in items:
            try:
                good.append(decoder(bytes(item)))
            except PayloadError as exc:
                bad.append(str(exc))
        if bad:
            self._reject(kind, f"{len(bad)} of {len(items)} items: {bad[0]}")
        return good

    def _reject(self, kind: str, reason: str) -> None:
        self.rejected.labels(kind=kind).inc()
        if self._throttle.due(kind):  # counted every time, said once a minute per kind
            log.warning(
                "dropped a committed frame that cannot be decoded", extra={"kind": kind, "reason": reason}
            )

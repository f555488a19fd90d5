"""Committed frames: what an ingest committed, told to every gateway API process.

The live stream and the latest-value cache of an API process used to be fed by its own ingest
alone, so with two gateways (or ingest workers, :mod:`.workers`) a dashboard missed what the
others stored. Now every ingest, after a round commits, publishes what it stored on core NATS
subjects (no stream: a frame is a notice, the database is the record):

* ``<prefix>.committed.metrics``: the samples stored, each batch whose samples share a time
  as a :class:`FrameBatch` (its series named once per layout, its values as packed float64:
  a receiver applies it without decoding a sample), any other sample as a
  :class:`FrameSample`;
* ``<prefix>.committed.status``: agent statuses;
* ``<prefix>.committed.alerts``: alert events;
* ``<prefix>.committed.actions``: people's actions on alerts, with the host of each alert.

Every API process subscribes to all four (a plain subscription: each gets every frame) and
feeds its :class:`~signalfire.gateway.store.LatestValues` and
:class:`~signalfire.gateway.stream.StreamHub` from them. A process that ingests itself has
fed its own hub already and skips frames of its own ``origin``, so a single gateway pays only
the publish. Only the gateway identity may publish or read these subjects
(:mod:`signalfire.buspolicy`).

An API process fed by ingest workers applies every frame: decoding the agents' JSON again
cost it 1.1 µs a sample (docs/benchmarks.md); a :class:`FrameBatch` costs it a dict lookup of
its layout and a copy of its values.

The frame is gateway-internal (the gateway talks to itself across processes and replicas of
one version), so its struct lives here and not in :mod:`signalfire.events`, the contract
other services and agents build on. A frame never exceeds the server's ``max_payload``: a big
round is split over several. A frame (or an item in it) that cannot be decoded is counted in
``committed_frames_rejected_total`` and logged (once a minute per kind at most); the rest is
delivered.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from signalfire.events import AgentStatus, AlertAction, AlertEvent, PayloadError, decode
from signalfire.gateway.commits import Commits
from signalfire.gateway.live import LiveFeed
from signalfire.gateway.store import LatestValues, MetricsWritten, SeriesKey
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
    #: The frame's number among its origin's, from 1: one per frame the origin made, whatever
    #: its kind, sent or not (a publish that failed, an item too large for any frame). A
    #: receiver that sees a number skipped missed a frame (0: not numbered).
    seq: int = 0


class FrameBatch(msgspec.Struct, array_like=True, tag="b", forbid_unknown_fields=True):
    """An item of a ``metrics`` frame: the samples of one stored batch, all at ``time``."""

    host: str
    #: JSON ``[[metric, labels JSON], …]`` of the batch's series in order: the same bytes for
    #: every batch of a layout, so a receiver makes the series keys once per layout.
    series: msgspec.Raw
    time: float
    #: The values, float64 little-endian, one per series.
    values: bytes


class FrameSample(msgspec.Struct, array_like=True, tag="s", forbid_unknown_fields=True):
    """An item of a ``metrics`` frame: one stored sample of a batch with per-sample times."""

    host: str
    metric: str
    labels: str
    time: float
    value: float


_metric_item = msgspec.json.Decoder(FrameBatch | FrameSample)
_series_names = msgspec.json.Decoder(list[tuple[str, str]])
_BIG_ENDIAN = sys.byteorder == "big"
#: Layouts whose series JSON a publisher keeps (then it forgets them and makes them again).
_PUBLISHED_LAYOUTS = 100_000
#: Series keys a feed keeps for the layouts it saw (as the store's layout cache, _SHAPE_KEYS).
_FEED_KEYS = 2_000_000
#: Origins whose frame numbers a feed follows (each process start is a new origin).
_FEED_ORIGINS = 1024
#: Live clients are reset (and reload) at most once in this many seconds for missed frames.
RESET_EVERY = 10.0


def _packed(values: Sequence[float]) -> bytes:
    packed = array("d", values)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def _unpacked(data: bytes) -> array[float]:
    values = array("d")
    values.frombytes(data)  # ValueError unless a whole number of float64
    if _BIG_ENDIAN:
        values.byteswap()
    return values


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
        #: The series JSON of each layout published, by the id of its keys list.
        self._layouts: dict[int, tuple[list[SeriesKey], bytes]] = {}
        #: The number of the last frame made (:attr:`CommittedFrame.seq`).
        self._seq = 0

    async def metrics(self, written: MetricsWritten, statuses: Sequence[AgentStatus]) -> None:
        """What :meth:`Store.write_metrics` stored, and agent statuses."""
        await self._publish("metrics", self.metric_items(written))
        if statuses:
            await self._publish("status", [_encoder.encode(s) for s in statuses])

    def metric_items(self, written: MetricsWritten) -> list[bytes]:
        """The items of ``metrics`` frames for ``written``."""
        items = [
            _encoder.encode(FrameBatch(host, msgspec.Raw(self._series(keys)), at, _packed(values)))
            for host, keys, at, values in written.uniform
        ]
        items.extend(
            _encoder.encode(FrameSample(key[0], key[1], key[2], at, value)) for key, at, value in written.rows
        )
        return items

    def _series(self, keys: list[SeriesKey]) -> bytes:
        """The series JSON of a layout, made once: ``keys`` is the store's list for the layout
        (held here with it, so its id stays its own)."""
        known = self._layouts.get(id(keys))
        if known is not None and known[0] is keys:
            return known[1]
        if len(self._layouts) >= _PUBLISHED_LAYOUTS:
            self._layouts.clear()
        series = _encoder.encode([(key[1], key[2]) for key in keys])
        self._layouts[id(keys)] = (keys, series)
        return series

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
            # Numbered before it is sent (no await between here and the publish, so numbers
            # go out in order): one that does not arrive is a gap its receivers see.
            self._seq += 1
            if too_big:
                self.errors.labels(reason="too_large").inc()
                log.warning(
                    "an item is too large for a committed frame; API processes see it on reload",
                    extra={"subject": subject, "bytes": len(too_big[0])},
                )
                continue
            frame = CommittedFrame(
                origin=self.origin, items=[msgspec.Raw(i) for i in group], hosts=hosts, seq=self._seq
            )
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
    ingest (its own ``origin`` skipped: that ingest feeds this process directly).

    Core NATS delivers a frame at most once: one published while this process was reconnecting
    (a NATS node died), dropped as a slow consumer's, or never sent, is missed, and the live
    charts it would have fed would keep a hole until reloaded. So each origin numbers its
    frames, and a number skipped tells every live client to reload what it shows through the
    REST API (a ``reset`` frame), where the missed samples are: they were stored before their
    frame was made. A gap is seen when the origin's next frame arrives (its agents report
    every few seconds)."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        latest: LatestValues,
        live: LiveFeed,
        commits: Commits | None,
        registry: Registry,
        origin: str | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.latest = latest
        self.live = live
        self.commits = commits
        self.origin = origin
        self._prefix = subjects.committed("")
        self._subscription: Subscription | None = None
        self._throttle = Throttle(every=60.0)
        #: The series keys of each layout seen, by host and series JSON.
        self._layouts: dict[tuple[str, bytes], list[SeriesKey]] = {}
        self._layout_keys = 0
        #: Origin → the number its next frame should have.
        self._next: dict[str, int] = {}
        self._last_reset = float("-inf")
        self._reset_due: asyncio.TimerHandle | None = None
        self.received = registry.counter(
            "committed_frames_received", "Committed frames of other ingest processes applied", ["kind"]
        )
        self.rejected = registry.counter(
            "committed_frames_rejected",
            "Committed frames (or items in them) that could not be decoded; the rest was applied",
            ["kind"],
        )
        self.missed = registry.counter(
            "committed_frames_missed",
            "Committed frames of other ingest processes that never arrived (numbers skipped); "
            "each gap sends the live clients a reset, and they reload from the database",
        )

    async def start(self) -> None:
        """Subscribe (every frame, no queue group); frames arrive from now on."""
        self._subscription = await self.nc.subscribe(self.subjects.all_committed, cb=self._on_frame)

    async def stop(self) -> None:
        if self._reset_due is not None:
            self._reset_due.cancel()
            self._reset_due = None
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
        if frame.seq:
            self._count(frame.origin, frame.seq)
        if kind == "metrics":
            written = self._metrics(frame.items)
            self.latest.note(written)
            self.live.metrics(written, [])
        elif kind == "status":
            statuses = self._items(kind, frame.items, lambda d: decode(d, AgentStatus))
            self.live.metrics(MetricsWritten(), statuses)
        elif kind == "alerts":
            self.live.alerts(self._items(kind, frame.items, lambda d: decode(d, AlertEvent)))
        else:
            self.live.actions(self._items(kind, frame.items, lambda d: decode(d, AlertAction)), frame.hosts)
            if self.commits is not None:  # an action the API waits for may be among them
                self.commits.committed()
        self.received.labels(kind=kind).inc()

    def _count(self, origin: str, seq: int) -> None:
        """Note frame ``seq`` of ``origin``; a number skipped resets the live clients."""
        expected = self._next.get(origin)
        if expected is not None and seq > expected:
            self.missed.inc(seq - expected)
            if self._throttle.due("missed"):
                log.warning(
                    "committed frames of another ingest were missed; live clients reload",
                    extra={"origin": origin, "missed": seq - expected},
                )
            self._reset_live()
        if expected is None or seq >= expected:  # an older one (out of order) changes nothing
            if expected is None and len(self._next) >= _FEED_ORIGINS:
                self._next.clear()  # processes that stopped long ago: numbering starts again
            self._next[origin] = seq + 1

    def _reset_live(self) -> None:
        """Reset the live clients now, or, within :data:`RESET_EVERY` of the last reset, once
        at its end (gaps one after the other reload a page once, not every round)."""
        if self._reset_due is not None:
            return  # one is on its way, and covers this gap: it goes after it
        wait = self._last_reset + RESET_EVERY - time.monotonic()
        if wait <= 0:
            self._reset_now()
            return
        self._reset_due = asyncio.get_running_loop().call_later(wait, self._reset_now)

    def _reset_now(self) -> None:
        self._reset_due = None
        self._last_reset = time.monotonic()
        self.live.reset("committed frames were missed: reload")

    def _metrics(self, items: list[msgspec.Raw]) -> MetricsWritten:
        written = MetricsWritten()
        bad: list[str] = []
        for raw in items:
            try:
                item = _metric_item.decode(raw)
                if isinstance(item, FrameSample):
                    written.rows.append(((item.host, item.metric, item.labels), item.time, item.value))
                    continue
                keys = self._keys(item.host, bytes(item.series))
                values = _unpacked(item.values)
                if len(values) != len(keys):
                    raise ValueError(f"{len(values)} values for {len(keys)} series")
                written.uniform.append((item.host, keys, item.time, values))
            except (msgspec.DecodeError, ValueError) as exc:
                bad.append(str(exc))
        if bad:
            self._reject("metrics", f"{len(bad)} of {len(items)} items: {bad[0]}")
        return written

    def _keys(self, host: str, series: bytes) -> list[SeriesKey]:
        """The series keys of a layout (one list per layout: the latest values wait by it)."""
        keys = self._layouts.get((host, series))
        if keys is None:
            keys = [(host, metric, labels) for metric, labels in _series_names.decode(series)]
            self._layout_keys += len(keys)
            if self._layout_keys > _FEED_KEYS:
                self._layouts.clear()
                self._layout_keys = len(keys)
            self._layouts[(host, series)] = keys
        return keys

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

"""Reading a partition's recent history back from the metrics stream when a replica takes it.

The evaluator judges live payloads from core NATS subscriptions, so what is published while
no replica holds a partition (between an owner's death and its successor's takeover) reaches
no evaluator, and what an owner kept in memory (windows, baselines) dies with it. The metrics
stream (``SF_METRICS``: every metric batch, event batch and agent status) holds both: the
new owner reads it from a start time with an ephemeral ordered consumer (no acknowledgements,
nothing left behind: the server deletes the consumer once it is unsubscribed), and
:class:`signalfire.evaluator.service.EvaluatorService` feeds what belongs to the partitions
it takes to an engine of their own (:meth:`signalfire.evaluator.engine.Engine.replaying`).

The read is bounded: by :data:`MAX_BATCHES` messages (the newest are read when the history
holds more), :data:`MAX_BYTES` bytes and a time limit (a share of ``failover_after``, as it
delays the takeover), whichever comes first.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo, DeliverPolicy

#: At most this many messages are read back per takeover ...
MAX_BATCHES = 200_000
#: ... or this many bytes ...
MAX_BYTES = 256 * 1024 * 1024
#: ... or for this share of ``failover_after`` (the rest of the takeover's time budget once
#: the lease lapsed: 0.6 for the lease, 0.2 for two polls).
TIME_SHARE = 0.2
#: Windows longer than this are filled with this much history only.
MAX_LOOKBACK = 3600.0
#: Live payloads of the partitions being replayed, held until the replay is done.
MAX_BUFFERED = 100_000


@dataclass(slots=True)
class Buffered:
    """Live payloads that arrived for the partitions being taken while their history was read:
    judged right after it, at their arrival time, unless the history held them already."""

    partitions: frozenset[str]
    messages: list[tuple[str, bytes, float]] = field(default_factory=list)
    #: Messages dropped beyond :data:`MAX_BUFFERED`.
    overflow: int = 0

    def add(self, subject: str, data: bytes, now: float) -> None:
        if len(self.messages) >= MAX_BUFFERED:
            self.overflow += 1
            return
        self.messages.append((subject, data, now))


@dataclass(slots=True)
class Read:
    """What one read of the history did."""

    messages: int = 0
    bytes: int = 0
    #: Why the read stopped before the end of the stream ("time", "batches", "bytes", "error").
    truncated: str | None = None
    #: The history held more than the bound: its oldest messages were left out.
    trimmed: bool = False


async def read_history(
    js: JetStreamContext,
    stream: str,
    subjects: list[str],
    start: float,
    *,
    keep_from: float,
    wanted: Callable[[str], bool],
    seconds: float,
    result: Read,
    max_batches: int = MAX_BATCHES,
    max_bytes: int = MAX_BYTES,
) -> AsyncGenerator[tuple[str, bytes, float], None]:
    """The messages of ``stream`` on ``subjects`` stored from ``start`` (unix seconds) to the
    end of the stream whose subject is ``wanted``, as ``(subject, data, time the stream stored
    it)``, in stream order.

    What was stored from ``keep_from`` on (what nobody judged) is read first, whole unless it
    alone exceeds the bounds (then its end is cut: ``result.truncated``), and held; then as
    much of the older history, up to it, as the time and bounds left allow: when not all of
    it fits, its oldest messages are left out (``result.trimmed``), never the recent ones."""
    deadline = time.monotonic() + seconds
    kept: list[tuple[str, bytes, float]] = []
    recent_from: int | None = None  # the stream sequence of the first message from keep_from
    began = time.monotonic()
    reader = _Reader(js, stream, list(subjects), result, deadline, max_batches, max_bytes)
    async for msg in reader.messages(since=keep_from):
        meta = msg.metadata
        if recent_from is None:
            recent_from = meta.sequence.stream
        if wanted(msg.subject):
            kept.append((msg.subject, msg.data or b"", meta.timestamp.timestamp()))
    if keep_from > start and result.truncated is None:
        # As many older messages as the time left can read at half the pace of the recent ones
        # (those were only held; the older ones are judged between two reads).
        elapsed = max(time.monotonic() - began, 1e-3)
        pace = result.messages / elapsed if result.messages >= 100 else math.inf
        room = min(max_batches - result.messages, (deadline - time.monotonic()) * 0.5 * pace)
        end = recent_from if recent_from is not None else math.inf
        if room >= 1:
            older = reader.messages(since=start, room=int(min(room, 2**62)), before=end)
            async with contextlib.aclosing(older):
                async for msg in older:
                    if wanted(msg.subject):
                        yield msg.subject, msg.data or b"", msg.metadata.timestamp.timestamp()
        else:
            result.trimmed = True
    for item in kept:
        yield item


async def read_window(
    js: JetStreamContext,
    stream: str,
    subjects: list[str],
    start: float,
    end: float,
    *,
    wanted: Callable[[str], bool],
    seconds: float,
    result: Read,
    max_batches: int = MAX_BATCHES,
    max_bytes: int = MAX_BYTES,
) -> AsyncGenerator[tuple[str, bytes, float], None]:
    """The messages of ``stream`` on ``subjects`` stored from ``start`` to ``end`` (unix
    seconds on the server's clock) whose subject is ``wanted``, as ``(subject, data, time the
    stream stored it)``, in stream order: what a replica's subscriptions missed while its
    connection was away (see ``EvaluatorService._catch_up``). Bounded as a takeover's read."""
    deadline = time.monotonic() + seconds
    reader = _Reader(js, stream, list(subjects), result, deadline, max_batches, max_bytes)
    async with contextlib.aclosing(reader.messages(since=start)) as messages:
        async for msg in messages:
            stored = msg.metadata.timestamp.timestamp()
            if stored > end:
                return
            if wanted(msg.subject):
                yield msg.subject, msg.data or b"", stored


@dataclass(slots=True)
class _Reader:
    js: JetStreamContext
    stream: str
    subjects: list[str]
    result: Read
    deadline: float
    max_batches: int
    max_bytes: int

    async def _subscribe(self, config: ConsumerConfig) -> JetStreamContext.PushSubscription:
        config.filter_subjects = self.subjects
        return await self.js.subscribe(
            self.subjects[0], stream=self.stream, ordered_consumer=True, config=config, idle_heartbeat=1.0
        )

    async def messages(
        self, *, since: float, room: int | None = None, before: float = math.inf
    ) -> AsyncGenerator[Msg, None]:
        """The messages stored from ``since`` on (before the stream sequence ``before``),
        counted in the result; with ``room``, only the last ``room`` of them (``trimmed``
        when that leaves some out). Stops at the end of the stream, at the deadline or at the
        bounds (``truncated``)."""
        result = self.result
        start = datetime.fromtimestamp(since, UTC)
        sub = await self._subscribe(
            ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
        )
        try:
            if _held(await sub.consumer_info()) == 0:
                return  # nothing stored since `since`
            msg = await _next(sub, self.deadline, result)
            if msg is None:
                return
            first = msg.metadata.sequence.stream
            if room is not None and before != math.inf and before - first > room:
                # Not all of it fits: the newest `room` messages before `before`.
                await sub.unsubscribe()
                sub = await self._subscribe(
                    ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=int(before) - room
                    )
                )
                result.trimmed = True
                msg = await _next(sub, self.deadline, result)
            while msg is not None:
                meta = msg.metadata
                if meta.sequence.stream >= before:
                    return
                if result.messages >= self.max_batches or result.bytes >= self.max_bytes:
                    result.truncated = "batches" if result.messages >= self.max_batches else "bytes"
                    return
                result.messages += 1
                result.bytes += len(msg.data or b"")
                yield msg
                if meta.num_pending == 0:
                    return
                msg = await _next(sub, self.deadline, result)
        finally:
            with contextlib.suppress(Exception):  # the server drops the unused consumer anyway
                await sub.unsubscribe()


async def _next(sub: JetStreamContext.PushSubscription, deadline: float, result: Read) -> Msg | None:
    """The next message of ``sub``; ``None`` at the end of the stream or past ``deadline``
    (``result.truncated``)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            result.truncated = "time"
            return None
        try:
            return await sub.next_msg(timeout=min(remaining, 1.0))
        except NatsTimeoutError:
            info = await sub.consumer_info()
            if not info.num_pending:
                return None


def _held(info: ConsumerInfo) -> int:
    """Messages of a new consumer: still to deliver, and delivered already."""
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    return (info.num_pending or 0) + (delivered or 0)

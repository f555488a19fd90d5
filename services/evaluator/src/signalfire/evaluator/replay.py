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
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
    seconds: float,
    result: Read,
    max_batches: int = MAX_BATCHES,
    max_bytes: int = MAX_BYTES,
) -> AsyncGenerator[tuple[str, bytes, float], None]:
    """Every message of ``stream`` on ``subjects`` stored from ``start`` (unix seconds) to the
    end of the stream, as ``(subject, data, time the stream stored it)``, in stream order;
    stops early (``result.truncated`` says why) past ``seconds`` or the bounds."""
    deadline = time.monotonic() + seconds
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime.fromtimestamp(start, UTC),
        filter_subjects=list(subjects),
    )
    sub = await js.subscribe(
        subjects[0], stream=stream, ordered_consumer=True, config=config, idle_heartbeat=1.0
    )
    try:
        info = await sub.consumer_info()
        # What it holds: still to deliver, and delivered already (the server does not wait).
        if _held(info) > max_batches:
            # More than the bound: the newest messages are the ones that matter (what nobody
            # judged is at the end), so the oldest are left out, not the newest.
            await sub.unsubscribe()
            last = (await js.stream_info(stream)).state.last_seq
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=max(1, last - max_batches + 1),
                filter_subjects=list(subjects),
            )
            sub = await js.subscribe(
                subjects[0], stream=stream, ordered_consumer=True, config=config, idle_heartbeat=1.0
            )
            result.trimmed = True
            info = await sub.consumer_info()
        if _held(info) == 0:
            return  # nothing stored since `start`
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.truncated = "time"
                return
            try:
                msg = await sub.next_msg(timeout=min(remaining, 1.0))
            except NatsTimeoutError:
                info = await sub.consumer_info()
                if not info.num_pending:
                    return
                continue
            meta = msg.metadata
            data = msg.data or b""
            result.messages += 1
            result.bytes += len(data)
            yield msg.subject, data, meta.timestamp.timestamp()
            if meta.num_pending == 0:
                return
            if result.messages >= max_batches:
                result.truncated = "batches"
                return
            if result.bytes >= max_bytes:
                result.truncated = "bytes"
                return
    finally:
        with contextlib.suppress(Exception):  # the server drops the unused consumer anyway
            await sub.unsubscribe()


def _held(info: ConsumerInfo) -> int:
    """Messages of a new consumer: still to deliver, and delivered already."""
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    return (info.num_pending or 0) + (delivered or 0)

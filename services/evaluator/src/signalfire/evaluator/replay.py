"""Reading a partition's recent history back from the metrics stream when a replica takes it.

The evaluator judges live payloads from core NATS subscriptions, so what is published while
no replica holds a partition (between an owner's death and its successor's takeover) reaches
no evaluator, and what an owner kept in memory (windows, baselines) dies with it. The metrics
stream (``SF_METRICS``: every metric batch, event batch and agent status) holds both: the
new owner reads it from a start time with JetStream's batched direct gets (no consumer: the
evaluator's identity may not make one on the stream, as one that may could change the
gateway's durables there), and
:class:`signalfire.evaluator.service.EvaluatorService` feeds what belongs to the partitions
it takes to an engine of their own (:meth:`signalfire.evaluator.engine.Engine.replaying`).

The read is bounded: by :data:`MAX_BATCHES` messages (the newest are read when the history
holds more), :data:`MAX_BYTES` bytes and a time limit (a share of ``failover_after``, as it
delays the takeover), whichever comes first.

People's actions on alerts (``sf.actions.alerts`` on ``SF_ALERTS``) reach the evaluator on a
core subscription too; :func:`read_actions` reads them back after a start, a takeover or a
reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec
from nats.js import JetStreamContext

from signalfire.bus import StoredMessage, direct_messages, rfc3339, stored_time

T = TypeVar("T")

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
    start: float,
    *,
    keep_from: float,
    wanted: Callable[[str], bool],
    seconds: float,
    result: Read,
    max_batches: int = MAX_BATCHES,
    max_bytes: int = MAX_BYTES,
) -> AsyncGenerator[tuple[str, bytes, float], None]:
    """The messages of ``stream`` (all of its subjects) stored from ``start`` (unix seconds) to the
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
    reader = _Reader(js, stream, result, deadline, max_batches, max_bytes)
    async for msg in reader.messages(since=keep_from):
        if recent_from is None:
            recent_from = msg.seq
        if wanted(msg.subject):
            kept.append((msg.subject, msg.data, msg.time))
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
                        yield msg.subject, msg.data, msg.time
        else:
            result.trimmed = True
    for item in kept:
        yield item


async def read_window(
    js: JetStreamContext,
    stream: str,
    start: float,
    end: float,
    *,
    wanted: Callable[[str], bool],
    seconds: float,
    result: Read,
    max_batches: int = MAX_BATCHES,
    max_bytes: int = MAX_BYTES,
) -> AsyncGenerator[tuple[str, bytes, float], None]:
    """The messages of ``stream`` (all of its subjects) stored from ``start`` to ``end`` (unix
    seconds on the server's clock) whose subject is ``wanted``, as ``(subject, data, time the
    stream stored it)``, in stream order: what a replica's subscriptions missed while its
    connection was away (see ``EvaluatorService._catch_up``). Bounded as a takeover's read."""
    deadline = time.monotonic() + seconds
    reader = _Reader(js, stream, result, deadline, max_batches, max_bytes)
    async with contextlib.aclosing(reader.messages(since=start)) as messages:
        async for msg in messages:
            if msg.time > end:
                return
            if wanted(msg.subject):
                yield msg.subject, msg.data, msg.time


@dataclass(slots=True)
class _Reader:
    js: JetStreamContext
    stream: str
    result: Read
    deadline: float
    max_batches: int
    max_bytes: int

    def _left(self) -> float:
        """The longest one request may wait: the read's time left (at least 0.1 s), at most 5 s."""
        return max(0.1, min(5.0, self.deadline - time.monotonic()))

    async def messages(
        self, *, since: float, room: int | None = None, before: float = math.inf
    ) -> AsyncGenerator[StoredMessage, None]:
        """The messages stored from ``since`` on (before the stream sequence ``before``),
        counted in the result; with ``room``, only the last ``room`` of them (``trimmed``
        when that leaves some out). Stops at the end of the stream as its leader saw it when
        the read began, at the deadline or at the bounds (``truncated``).

        Read with direct gets (:func:`signalfire.bus.direct_messages`): no consumer, so the
        evaluator's identity has no right to make one on the stream. A follower answering a
        moment behind the leader ends a batch early; the read asks again from where it got to
        until it reaches the leader's last sequence."""
        result = self.result
        nc = self.js._nc  # a direct get is a plain request: the context's connection
        # Each request waits at most what is left of the read's time (nats-py waits 5 s): while
        # a stream elects a leader nobody answers, and a takeover's read must end on time.
        last = (await asyncio.wait_for(self.js.stream_info(self.stream), self._left())).state.last_seq
        up_to = int(min(last, before - 1)) if before != math.inf else last
        if up_to < 1:
            return  # an empty stream
        start_time: float | None = since
        seq = 1
        room_checked = room is None or before == math.inf
        while True:
            got = 0
            batches = direct_messages(
                nc, self.stream, start_time=start_time, seq=seq, up_to_seq=up_to, timeout=self._left()
            )
            async with contextlib.aclosing(batches):
                async for msg in batches:
                    if not room_checked:
                        room_checked = True
                        assert room is not None
                        if before - msg.seq > room:
                            break  # not all of it fits: the newest `room` messages before `before`
                    if result.messages >= self.max_batches or result.bytes >= self.max_bytes:
                        result.truncated = "batches" if result.messages >= self.max_batches else "bytes"
                        return
                    if time.monotonic() >= self.deadline:
                        result.truncated = "time"
                        return
                    result.messages += 1
                    result.bytes += len(msg.data)
                    got += 1
                    yield msg
                    start_time, seq = None, msg.seq + 1
                    if msg.seq >= up_to:
                        return
                else:
                    if got == 0 and start_time is not None:
                        return  # nothing stored since `since`
                    # The answering server held no more: a follower a moment behind the leader.
                    if time.monotonic() >= self.deadline:
                        result.truncated = "time"
                        return
                    await asyncio.sleep(0.05)
                    continue
            result.trimmed = True  # the loop broke: read the newest `room` instead
            start_time, seq = None, int(before) - room


#: At most this many alert actions are read back at once (people's acks and resolves: a
#: handful a day for most fleets; a read past this keeps the newest out and says so).
MAX_ACTIONS = 10_000


async def read_actions(
    js: JetStreamContext,
    stream: str,
    subject: str,
    start: float,
    *,
    seconds: float,
    result: Read,
    max_actions: int = MAX_ACTIONS,
) -> AsyncGenerator[tuple[bytes, float], None]:
    """People's alert actions (``subject``) stored in ``stream`` from ``start`` (unix seconds
    on the server's clock) on, as ``(data, time the stream stored it)``, in stream order.

    Read one by one from the stream's leader (``$JS.API.STREAM.MSG.GET`` with
    ``next_by_subj``): actions are few, the server skips the alert events and delivery results
    between them, and the leader holds every action published before the read began (a
    follower answering a direct get may be a moment behind, and an action has no later one to
    tell it was missed). Raises on errors other than the end of the stream."""
    deadline = time.monotonic() + seconds
    nc = js._nc  # a message get is a plain request: the context's connection
    api = f"$JS.API.STREAM.MSG.GET.{stream}"
    request: dict[str, object] = {"next_by_subj": subject, "start_time": rfc3339(start)}
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            result.truncated = "time"
            return
        reply = await nc.request(api, msgspec.json.encode(request), timeout=min(remaining, 5.0))
        answer = msgspec.json.decode(reply.data)
        error = answer.get("error")
        if error is not None:
            if error.get("code") == 404:  # no action stored past the last one read
                return
            raise RuntimeError(f"reading {subject} from {stream}: {error.get('description') or error}")
        if result.messages >= max_actions:  # there is one more
            result.truncated = "batches"
            return
        message = answer["message"]
        data = base64.b64decode(message.get("data") or "")
        result.messages += 1
        result.bytes += len(data)
        yield data, stored_time(message["time"])
        request = {"next_by_subj": subject, "seq": int(message["seq"]) + 1}


class Rereads(Generic[T]):
    """Reads of a stream from a time on, run in the background one at a time: one asked for
    while another runs is run right after it, together with any other asked meanwhile (from
    the earliest start, with the latest ``detail``)."""

    def __init__(
        self, read: Callable[[float, T], Awaitable[None]], name: str, stopping: Callable[[], bool]
    ) -> None:
        self._read = read
        self._name = name
        self._stopping = stopping
        self._next: tuple[float, T] | None = None
        self._task: asyncio.Task[None] | None = None

    def ask(self, since: float, detail: T) -> asyncio.Task[None] | None:
        """Have ``read(since, detail)`` run; the task started for it, if one was (the caller
        keeps it to end it), else None (the running one will)."""
        pending = self._next
        self._next = (min(since, pending[0]), detail) if pending is not None else (since, detail)
        if self._task is not None and not self._task.done():
            return None
        self._task = asyncio.create_task(self._run(), name=self._name)
        return self._task

    async def _run(self) -> None:
        while self._next is not None and not self._stopping():
            since, detail = self._next
            self._next = None
            await self._read(since, detail)

"""Ingest: durable JetStream pull consumers that write the bus into the database.

Four durable consumers, shared by every gateway replica:

* ``gateway-metrics`` reads all of ``SF_METRICS`` (metric batches, event batches, agent status);
  with N ingest workers, worker k reads ``gateway-metrics-<k>of<N>`` instead and stores only
  its share of the hosts (see "Shares of the hosts" below);
* ``gateway-alerts`` reads ``sf.alerts.>`` from ``SF_ALERTS``;
* ``gateway-actions`` reads ``sf.actions.alerts`` (acks, notes, … by people): the one writer of
  an action into the database (the API only publishes it, then waits for this to store it);
* ``gateway-notifications`` reads ``sf.notifications.>`` (the notifier's delivery results).

Each round fetches up to ``fetch_batch`` messages, decodes them, writes the good ones in one
transaction (all samples of the round in one ``COPY``) and acknowledges them only after the
commit. The metrics consumer runs ``ingest_writers`` rounds at once: while one transaction
commits, the next round is fetched and copied; a round that is not full waits
``ingest_linger`` for more messages first, so a busy stream writes several batches a commit.
The rollups of the metric batches belong to
:class:`~signalfire.gateway.rollup.Rollups`: each round hands the store a round of it, takes
what waits for the merge once the write commits, and every ``rollup_flush`` has it merge
(many rounds in one merge, which is what keeps them cheap) and acknowledges what it merged; a
gateway that dies in between has those messages redelivered and their rollups merged by the
next one.

Shares of the hosts: with N ingest workers (N > 1), each worker takes one share of the hosts
(``fnv1a_32(host subject token) % N``, the evaluator partitions' hash) through a consumer of its
own on the whole stream, and acknowledges the other shares' messages unread; each series'
minute rollups are then merged by one process, where workers on one shared consumer merged
nearly every series in each of them (docs/scaling.md). The workers of every gateway with the
same N share their share's consumer. A consumer made new starts at the lowest acknowledged
floor of the metrics consumers there are (not at the stream's start), and those of another N
that no process has read for ``ingest_prune_after`` (as this process saw them) are removed.

Malformed messages are counted, logged once and terminated (never redelivered); the rest of
the round is still stored. When the database is unreachable nothing is acknowledged: the
consumer waits for the database to answer again and then asks for the messages to be
redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from signalfire.buspolicy import metrics_consumer, metrics_consumer_share
from signalfire.consumers import Backoff, Fetcher, ensure_durable
from signalfire.events import (
    HOST_NAME_PATTERN,
    LABEL_NAME_PATTERN,
    MAX_HOST_NAME_LENGTH,
    MAX_LABEL_NAME_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_METRIC_NAME_LENGTH,
    MAX_SAMPLE_VALUE,
    MAX_SAMPLES_PER_BATCH,
    MAX_UNIX_TIME,
    METRIC_NAME_PATTERN,
    AgentStatus,
    AlertAction,
    AlertEvent,
    DeliveryResult,
    EventBatch,
    MetricBatch,
    PayloadError,
    Sample,
    decode,
)
from signalfire.gateway.commits import Commits
from signalfire.gateway.committed import CommittedPublisher
from signalfire.gateway.config import GatewayConfig
from signalfire.gateway.live import LiveFeed
from signalfire.gateway.rollup import Rollups
from signalfire.gateway.store import LatestValues, Store
from signalfire.log import Throttle
from signalfire.partitions import fnv1a_32
from signalfire.subjects import Subjects
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.gateway.ingest")

METRICS_CONSUMER = metrics_consumer()
ALERTS_CONSUMER = "gateway-alerts"
ACTIONS_CONSUMER = "gateway-actions"
NOTIFICATIONS_CONSUMER = "gateway-notifications"

#: Unacknowledged messages a consumer may have out at once: room for the metric batches held
#: about a minute for their merge (at most ``Rollups.max_waiting`` of them, then merged at once).
MAX_ACK_PENDING = 50_000

#: Seconds between two looks at the metrics stream's consumers (one of this process's own
#: made again if it was removed; those of another number of workers removed once unused), at
#: most: half of ``ingest_prune_after`` when that is shorter.
TEND_EVERY = 30.0

# SQLSTATE classes that mean "this data cannot be stored" rather than "try again later":
# data exceptions (22), integrity violations (23), program limits such as an oversized key (54).
_DATA_ERROR_CLASSES = ("22", "23", "54")

Payload = MetricBatch | EventBatch | AgentStatus | AlertEvent | AlertAction | DeliveryResult


class _LeanSample(Sample, gc=False):
    """A :class:`Sample` decoded without its per-sample constraints (checked per batch instead,
    see :func:`decode_metric_batch`) and untracked by the garbage collector."""

    name: str
    labels: dict[str, str] = {}
    time: float | None = None


class _LeanBatch(MetricBatch, gc=False, kw_only=True):
    """A :class:`MetricBatch` of :class:`_LeanSample`; still a ``MetricBatch`` to everyone else."""

    host: str
    time: float
    samples: list[_LeanSample]  # type: ignore[assignment]
    labels: dict[str, str] = {}


_lean_decoder = msgspec.json.Decoder(_LeanBatch)
# The contract's own patterns and limits (:mod:`signalfire.events`), the patterns tested the way
# msgspec tests them (``search``), so both agree.
_HOST = re.compile(HOST_NAME_PATTERN)
_NAME = re.compile(METRIC_NAME_PATTERN)
_LABEL_NAME = re.compile(LABEL_NAME_PATTERN)
#: Host, metric and label names already checked (bounded: cleared when full).
_valid_hosts: set[str] = set()
_valid_names: set[str] = set()
_valid_label_names: set[str] = set()
_VALID_CACHE = 100_000


def _names_ok(names: set[str], valid: set[str], pattern: re.Pattern[str], longest: int) -> bool:
    unknown = names - valid
    if not unknown:
        return True
    if not all(len(n) <= longest and pattern.search(n) for n in unknown):
        return False
    if len(valid) > _VALID_CACHE:
        valid.clear()
    valid.update(unknown)
    return True


def _lean_ok(batch: _LeanBatch) -> bool:
    """Whether ``batch`` meets every constraint of :class:`MetricBatch` (checked per batch and
    per distinct name, not per sample field by field)."""
    samples = batch.samples
    if not (
        0 <= batch.time <= MAX_UNIX_TIME
        and _names_ok({batch.host}, _valid_hosts, _HOST, MAX_HOST_NAME_LENGTH)
    ):
        return False
    if len(samples) > MAX_SAMPLES_PER_BATCH:
        return False
    if not _names_ok({s.name for s in samples}, _valid_names, _NAME, MAX_METRIC_NAME_LENGTH):
        return False
    values = [s.value for s in samples]
    # (JSON holds no NaN; a number too large for a float is read as infinity, out of range)
    if values and not (min(values) >= -MAX_SAMPLE_VALUE and max(values) <= MAX_SAMPLE_VALUE):
        return False
    times = [s.time for s in samples if s.time is not None]
    if times and not (min(times) >= 0 and max(times) <= MAX_UNIX_TIME):
        return False
    labelled = [s.labels for s in samples if s.labels]
    if batch.labels:
        labelled.append(batch.labels)
    if labelled:
        if max(map(len, labelled)) > MAX_LABELS:
            return False
        label_names = set(chain.from_iterable(labelled))
        if not _names_ok(label_names, _valid_label_names, _LABEL_NAME, MAX_LABEL_NAME_LENGTH):
            return False
        if max(map(len, chain.from_iterable(map(dict.values, labelled)))) > MAX_LABEL_VALUE_LENGTH:
            return False
    return True


def decode_metric_batch(data: bytes) -> MetricBatch:
    """:func:`signalfire.events.decode` of a ``MetricBatch``, about five times faster: the
    samples are decoded without per-field constraints, which are then checked over the whole
    batch (names once per distinct name). A batch that fails is decoded again by
    :func:`~signalfire.events.decode`, so the error names the field exactly as before; like it,
    this returns a valid batch or raises :class:`~signalfire.events.PayloadError`, for any bytes."""
    try:
        batch = _lean_decoder.decode(data)
    except (ValueError, RecursionError):  # msgspec.DecodeError, UnicodeDecodeError, deep nesting
        batch = None
    if batch is not None and _lean_ok(batch):
        return batch
    return decode(data, MetricBatch)


def round_linger(config: GatewayConfig) -> float:
    """How long a metrics round of this process that is not full waits for more messages:
    ``ingest_linger``, times the ingest workers when there are several. Each of N workers
    takes a share of the batches, so with the same wait its rounds held 1/N as many (2 workers
    at 80,000 samples/s: 4.7 batches a round instead of 9.2, and the path's CPU per sample
    2.73 times the raw COPY's instead of 2.17 times with the wait doubled; docs/benchmarks.md).
    At most a third of ``ack_wait``, the configured value's own bound."""
    workers = max(1, config.ingest_workers)
    return min(float(config.ingest_linger) * workers, float(config.ack_wait) / 3)


class Rejected(Exception):
    """A message that can never be stored; ``reason`` is the counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_data_error(exc: BaseException) -> bool:
    """Whether the database refused the data itself (retrying the same data cannot help)."""
    sqlstate = str(getattr(exc, "sqlstate", None) or "")
    return isinstance(exc, asyncpg.PostgresError) and sqlstate[:2] in _DATA_ERROR_CLASSES


@dataclass
class _Consumer:
    name: str
    stream: str
    filter_subject: str | None
    decode: Callable[[Msg], Payload]
    #: Stores the items; returns the messages to acknowledge later (after the rollup merge).
    write: Callable[[list[tuple[Msg, Payload]]], Awaitable[list[Msg]]]
    writers: int = 1
    #: Messages asked for a round (``fetch_batch``, times the shares for a share's consumer:
    #: it sees every share's messages and keeps its own).
    batch: int = 0
    #: Seconds to wait for more messages before writing a round that is not full.
    linger: float = 0.0
    subscription: Any = None
    fetcher: Fetcher | None = None


class Ingest:
    """Runs the gateway's consumers until :meth:`stop`."""

    def __init__(
        self,
        config: GatewayConfig,
        js: JetStreamContext,
        store: Store,
        registry: Registry,
        latest: LatestValues | None,
        *,
        rollups: Rollups,
        live: LiveFeed | None = None,
        commits: Commits | None = None,
        committed: CommittedPublisher | None = None,
        share: tuple[int, int] = (1, 1),
    ) -> None:
        self.config = config
        #: (k, N): this process stores the metrics stream's messages of the hosts of share k
        #: among N (an ingest worker's); (1, 1): every host's.
        self.share = share
        #: Whether a host subject token is in this process's share, by token.
        self._mine: dict[str, bool] = {}
        #: The metrics consumers of another number of shares read by no process at the last
        #: look: their (delivered, acknowledged) stream sequences then, and since when they have
        #: stood (this process's monotonic clock: a server's activity times do not survive its
        #: restart).
        self._unused: dict[str, tuple[tuple[int, int], float]] = {}
        #: This process's metrics consumer's acknowledged floor at the last look: where it is
        #: made again if it is removed and no other is there to say where storing stood.
        self._floor = 0
        self._mixed = Throttle(600.0)
        self._tend_warnings = Throttle(600.0)
        self.live = live
        #: Tells the other API processes (workers' parent, other gateways) what was committed.
        self.committed = committed
        #: Told after each commit of actions (the API waits for the action it published).
        self.commits = commits
        self.js = js
        self.store = store
        self.rollups = rollups
        self.latest = latest
        self.subjects: Subjects = config.nats.subjects
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Messages stored but not acknowledged until their rollups are merged, by sequence.
        self._held: dict[int, Msg] = {}
        #: One retry policy for fetch errors and for waiting on the database.
        self.backoff = Backoff(first=0.5, cap=float(config.max_backoff))
        self._consumers = [
            _Consumer(
                metrics_consumer(*share),
                self.subjects.metrics_stream,
                None,
                self._decode_metrics,
                self._write_metrics,
                writers=config.ingest_writers,
                batch=config.fetch_batch * share[1],
                linger=round_linger(config),
            ),
            _Consumer(
                ALERTS_CONSUMER,
                self.subjects.alerts_stream,
                self.subjects.all_alerts,
                self._decode_alert,
                self._write_alerts,
            ),
            _Consumer(
                ACTIONS_CONSUMER,
                self.subjects.alerts_stream,
                self.subjects.actions,
                self._decode_action,
                self._write_actions,
            ),
            _Consumer(
                NOTIFICATIONS_CONSUMER,
                self.subjects.alerts_stream,
                self.subjects.all_notifications,
                self._decode_delivery,
                self._write_deliveries,
            ),
        ]
        self.messages = registry.counter(
            "ingest_messages", "Bus messages stored (metrics: once their rollups are merged)", ["kind"]
        )
        self.samples = registry.counter(
            "ingest_samples", "Samples stored (new rows), counted once their rollups are merged"
        )
        self.committed_samples = registry.counter(
            "ingest_committed_samples",
            "Samples committed to the samples table (new rows), counted at once; ingest_samples counts "
            "them again once their rollups are merged",
        )
        self.duplicates = registry.counter(
            "ingest_duplicate_samples", "Samples already stored (redelivered or repeated)"
        )
        self.events = registry.counter("ingest_events", "Events stored (new rows)")
        self.series = registry.counter("ingest_series_created", "Series seen for the first time")
        self.passed = registry.counter(
            "ingest_passed_messages",
            "Metrics-stream messages of hosts in another ingest worker's share: acknowledged unread",
        )
        self.pruned = registry.counter(
            "ingest_pruned_consumers",
            "Metrics-stream consumers of another number of ingest workers, removed once unused",
        )
        self.rejected = registry.counter(
            "ingest_rejected", "Messages terminated because they can never be stored", ["reason"]
        )
        self.db_errors = registry.counter(
            "db_errors", "Database errors while ingesting (the messages are retried)", ["consumer"]
        )
        self.bus_errors = registry.counter("bus_errors", "NATS errors while fetching", ["consumer"])
        self.rounds = registry.counter(
            "ingest_rounds", "Rounds fetched and written (one transaction each)", ["consumer"]
        )
        self.fetched = registry.counter(
            "ingest_fetched_messages", "Messages fetched, good or bad", ["consumer"]
        )
        self.write_seconds = registry.histogram(
            "ingest_write_seconds",
            "Time one round's database write took (one transaction)",
            ["consumer"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.lag = registry.histogram(
            "ingest_lag_seconds",
            "Time from a message's arrival in JetStream to the commit that stored it",
            ["consumer"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
        )

    async def start(self) -> None:
        """Create (or update) the durable consumers and start fetching."""
        for consumer in self._consumers:
            consumer.batch = consumer.batch or self.config.fetch_batch
            start = await self._resume_point(consumer) if consumer is self._consumers[0] else None
            consumer.subscription = await ensure_durable(
                self.js, consumer.stream, self._wanted(consumer, start)
            )
            consumer.fetcher = Fetcher(
                consumer.subscription,
                consumer.name,
                timeout=float(self.config.fetch_timeout),
                backoff=self.backoff,
                on_error=functools.partial(self._bus_error, consumer.name),
                pause=self._pause,
            )
            self._tasks.append(asyncio.create_task(self._run(consumer), name=f"ingest-{consumer.name}"))
        self._flusher = asyncio.create_task(self._flush_rollups(), name="ingest-rollups")
        self._tasks.append(asyncio.create_task(self._tend_metrics_consumers(), name="ingest-tend"))
        log.info("ingesting", extra={"consumers": ",".join(c.name for c in self._consumers)})

    def _wanted(self, consumer: _Consumer, start: int | None) -> ConsumerConfig:
        """The durable ``consumer`` as this process makes it: from stream sequence ``start``
        (a new share's, see :meth:`_resume_point`) or from the stream's first message."""
        return ConsumerConfig(
            name=consumer.name,
            durable_name=consumer.name,
            description="Signalfire gateway: stores into the database",
            deliver_policy=DeliverPolicy.ALL if start is None else DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=float(self.config.ack_wait),
            max_deliver=self.config.max_deliver,
            # room for the messages held until the next rollup merge
            max_ack_pending=max(2 * consumer.writers * consumer.batch, MAX_ACK_PENDING),
            filter_subject=consumer.filter_subject,
        )

    async def _metrics_consumers(self) -> dict[str, ConsumerInfo]:
        """The gateway's consumers of the metrics stream there are now, by name."""
        infos = await self.js.consumers_info(self.subjects.metrics_stream)
        return {i.name: i for i in infos if metrics_consumer_share(i.name) is not None}

    async def _resume_point(self, consumer: _Consumer) -> int | None:
        """Where the metrics ``consumer`` starts if it must be made: after the lowest
        acknowledged floor of the metrics consumers there are (those of another number of
        workers, when that number changed), so a new share does not store the whole stream
        again; ``None`` (the stream's start) when it exists already or there are none."""
        try:
            await self.js.consumer_info(consumer.stream, consumer.name)
            return None  # where it starts was settled when it was made
        except NotFoundError:
            pass
        try:
            there = await self._metrics_consumers()
        except Exception as exc:  # a bus whose permissions predate the list: it starts at the start
            log.warning(
                "cannot list the metrics stream's consumers (regenerate the bus permissions:"
                " signalfire bus init, docs/security.md); a new one starts at the stream's start",
                extra={"consumer": consumer.name, "reason": repr(exc)},
            )
            there = {}
        return self._start_after(consumer, there)

    def _start_after(self, consumer: _Consumer, there: dict[str, ConsumerInfo]) -> int | None:
        """Where the missing metrics ``consumer`` starts, given the metrics consumers ``there``
        are: after their lowest acknowledged floor (or its own at the last look, when there are
        none); ``None`` (the stream's start) when nothing says where storing stood."""
        if not (there or self._floor):
            return None
        floor = min(
            (i.ack_floor.stream_seq if i.ack_floor else 0 for i in there.values()), default=self._floor
        )
        log.info(
            "a new consumer of the metrics stream starts where storing stood",
            extra={"consumer": consumer.name, "from_seq": floor + 1, "others": ",".join(sorted(there))},
        )
        return floor + 1

    async def _tend_metrics_consumers(self) -> None:
        every = min(TEND_EVERY, float(self.config.ingest_prune_after) / 2)
        while not self._stopping.is_set():
            await self._pause(every)
            if self._stopping.is_set():
                return
            try:
                await self._tend_once()
            except Exception as exc:  # the bus is away: looked at again next time
                self._bus_error(self._consumers[0].name, exc)
                if self._tend_warnings.due(repr(exc)):
                    log.warning("cannot look at the metrics consumers", extra={"reason": repr(exc)})

    async def _tend_once(self) -> None:
        """Make this process's metrics consumer again if it is gone (removed by hand, or by a
        gateway of another number of workers while this one could not read), and remove those
        of another number of workers that no process has read for ``ingest_prune_after`` (no
        pull waiting at any look, their delivered and acknowledged sequences unmoved), once
        every share of this process's number is there (they then store whatever the removed
        ones did)."""
        consumer = self._consumers[0]
        there = await self._metrics_consumers()
        ours = there.get(consumer.name)
        if ours is None:
            start = self._start_after(consumer, there)
            log.warning(
                "the metrics consumer was gone; made again",
                extra={"consumer": consumer.name, "from_seq": start or 1},
            )
            await self.js.add_consumer(consumer.stream, self._wanted(consumer, start))
            return  # the next look sees it (and, with it there, may remove others)
        if ours.ack_floor is not None:
            self._floor = ours.ack_floor.stream_seq
        shares = self.share[1]
        complete = all(metrics_consumer(k, shares) in there for k in range(1, shares + 1))
        unused: dict[str, tuple[tuple[int, int], float]] = {}
        now = time.monotonic()
        for name, info in there.items():
            share = metrics_consumer_share(name)
            if share is None or share[1] == shares:
                continue
            seen = (
                info.delivered.stream_seq if info.delivered else 0,
                info.ack_floor.stream_seq if info.ack_floor else 0,
            )
            before = self._unused.get(name)
            if info.num_waiting or (before is not None and before[0] != seen):
                if self._mixed.due(name):  # a process reads it now, or did since the last look
                    log.warning(
                        "gateways with another number of ingest workers read the metrics stream too:"
                        " both write every sample (stored once, at twice the work); give every"
                        " gateway the same ingest_workers",
                        extra={"consumer": name, "ours": consumer.name},
                    )
                continue
            since = before[1] if before is not None else now
            if not complete or now - since < float(self.config.ingest_prune_after):
                unused[name] = (seen, since)
                continue
            with contextlib.suppress(NotFoundError):  # another process removed it first
                await self.js.delete_consumer(consumer.stream, name)
                self.pruned.inc()
                log.warning(
                    "removed a consumer of the metrics stream no gateway reads any more"
                    " (another number of ingest workers)",
                    extra={"consumer": name, "unstored": info.num_pending, "ours": consumer.name},
                )
        self._unused = unused

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Its loops (a consumer's fetching each, the rollup merges), once started."""
        return [*self._tasks, *([self._flusher] if self._flusher is not None else [])]

    async def stop(self) -> None:
        """Stop fetching; the round in flight is finished (stored and acknowledged) first."""
        self._stopping.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self._flush_once()  # what the last rounds stored
        for consumer in self._consumers:
            if consumer.subscription is not None:
                with contextlib.suppress(Exception):
                    await consumer.subscription.unsubscribe()
                consumer.subscription = None

    # The loop -------------------------------------------------------------------------------

    async def _run(self, consumer: _Consumer) -> None:
        assert consumer.fetcher is not None
        slots = asyncio.Semaphore(consumer.writers)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                msgs = await self._share_of(consumer, await consumer.fetcher.fetch(consumer.batch))
                if not msgs:  # idle, or a fetch error the fetcher has counted and waited out
                    slots.release()
                    continue
                if consumer.linger and len(msgs) < self.config.fetch_batch:
                    room = (self.config.fetch_batch - len(msgs)) * self.share[1]
                    msgs += await self._share_of(consumer, await self._linger(consumer, msgs[0], room))
                self.rounds.labels(consumer=consumer.name).inc()
                self.fetched.labels(consumer=consumer.name).inc(len(msgs))
                task = asyncio.create_task(self._handle_then_release(consumer, msgs, slots))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _linger(self, consumer: _Consumer, oldest: Msg, room: int) -> list[Msg]:
        """Up to ``room`` more messages that arrive until the round's ``oldest`` message has
        waited ``consumer.linger`` since JetStream stored it (a busy stream then fills rounds:
        at 120 batches/s, about 1.2 a round without it). A round of messages that waited that
        long already (the writers were behind) is written at once: lingering would only add
        to a lag that is there."""
        # JetStream stamps a message with the server's wall clock; a skewed clock at worst
        # lingers the whole time or not at all.
        waited = time.time() - oldest.metadata.timestamp.timestamp()
        remaining = min(consumer.linger, consumer.linger - waited)
        if remaining <= 0:
            return []
        await self._pause(remaining)
        if self._stopping.is_set():
            return []
        try:
            # Only what is there now: a short timeout, and no error counted when none came.
            more: list[Msg] = await consumer.subscription.fetch(room, timeout=0.05)
        except Exception:  # TimeoutError (none came), or an error the next fetch meets again
            return []
        return more

    async def _share_of(self, consumer: _Consumer, msgs: list[Msg]) -> list[Msg]:
        """The messages of this process's share of the hosts (all of them but on a share's
        consumer); the others are acknowledged unread: another worker's consumer stores them."""
        share, shares = self.share
        if shares == 1 or consumer is not self._consumers[0] or not msgs:
            return msgs
        own: list[Msg] = []
        for msg in msgs:
            token = msg.subject.rpartition(".")[2]  # the host's subject token
            mine = self._mine.get(token)
            if mine is None:
                if len(self._mine) >= 1 << 16:
                    self._mine.clear()
                mine = self._mine[token] = fnv1a_32(token.encode()) % shares == share - 1
            if mine:
                own.append(msg)
                continue
            try:
                await msg.ack()
            except Exception:  # delivered again after ack_wait, and passed over again
                self._bus_error(consumer.name, RuntimeError("ack failed"))
        self.passed.inc(len(msgs) - len(own))
        return own

    def _bus_error(self, consumer: str, _exc: Exception) -> None:
        self.bus_errors.labels(consumer=consumer).inc()

    async def _flush_rollups(self) -> None:
        # Well within ack_wait, so held messages are not redelivered while they wait.
        every = min(float(self.config.rollup_flush), float(self.config.ack_wait) / 3)
        while not self._stopping.is_set():
            await self._pause(every)
            await self._flush_once(ended_only=self.config.rollup_merge == "minute")
            await self._keep_held()

    async def _keep_held(self) -> None:
        """Tell JetStream the messages still waiting for their minute's merge are in progress,
        so it does not redeliver them after ``ack_wait`` (this runs every ``ack_wait`` / 3 at
        most; a message waits about a minute)."""
        for msg in list(self._held.values()):
            try:
                await msg.in_progress()
            except Exception as exc:  # redelivered later: stored once all the same (rollup_pending)
                log.warning("in-progress failed", extra={"subject": msg.subject, "reason": repr(exc)})
                return

    async def _flush_once(self, *, ended_only: bool = False) -> None:
        """Merge the rollups of what waits (``ended_only``: of the minutes that ended; or fold
        the hours that ended), then acknowledge their messages."""
        try:
            merged = await self.rollups.flush(ended_only=ended_only)
        except Exception as exc:  # they keep waiting; retried next time
            self.db_errors.labels(consumer="rollups").inc()
            log.warning("rollup merge failed; will retry", extra={"reason": repr(exc)})
            return
        stored: list[Msg] = []
        samples = 0
        for seq, new in merged.items():
            msg = self._held.pop(seq, None)
            if msg is not None:
                stored.append(msg)
                samples += new
        # One increment per merge, not per message: a merge acknowledges hundreds of batches.
        self.samples.inc(samples)
        self.messages.labels(kind="metrics").inc(len(stored))
        for msg in stored:
            try:
                await msg.ack()
            except Exception as exc:  # merged already; a redelivery would be a no-op
                log.warning("ack failed", extra={"subject": msg.subject, "reason": repr(exc)})

    async def _handle_then_release(
        self, consumer: _Consumer, msgs: list[Msg], slots: asyncio.Semaphore
    ) -> None:
        try:
            await self._handle(consumer, msgs)
        except Exception as exc:  # never lose the slot; the messages are redelivered
            log.warning("ingest round failed", extra={"consumer": consumer.name, "reason": repr(exc)})
        finally:
            slots.release()

    async def _handle(self, consumer: _Consumer, msgs: list[Msg]) -> None:
        good: list[tuple[Msg, Payload]] = []
        for msg in msgs:
            try:
                good.append((msg, consumer.decode(msg)))
            except Rejected as exc:
                await self._reject(msg, exc)
            except Exception as exc:
                # A decoder bug, not bad input (decoders turn every bad input into Rejected):
                # said loudly, but it costs this message only, never the rest of the round.
                log.exception("cannot decode a message", extra={"subject": msg.subject})
                await self._reject(msg, Rejected("decode_failed", f"{type(exc).__name__}: {exc}"))
        if not good:
            return
        if not await self._store(consumer, good):
            # The database is away: nothing was acknowledged. Wait until it answers, then have
            # the round redelivered at once instead of after ack_wait.
            await self._wait_for_database()
            for msg, _ in good:
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def _store(self, consumer: _Consumer, items: list[tuple[Msg, Payload]]) -> bool:
        """Write ``items`` and acknowledge them; ``False`` when the database could not be reached.

        When the database refuses the data itself, the items are retried one by one so the
        one bad message is terminated and the others are stored.
        """
        started = time.perf_counter()
        try:
            held = await consumer.write(items)
        except Exception as exc:
            if not is_data_error(exc):
                self.db_errors.labels(consumer=consumer.name).inc()
                log.warning(
                    "database write failed; will retry",
                    extra={"consumer": consumer.name, "reason": repr(exc)},
                )
                return False
            if len(items) == 1:
                await self._reject(items[0][0], Rejected("db_rejected", f"the database refused it: {exc}"))
                return True
            for item in items:
                if not await self._store(consumer, [item]):
                    return False
            return True
        self.write_seconds.labels(consumer=consumer.name).observe(time.perf_counter() - started)
        # JetStream stamps a message with the server's wall clock, so the lag is read on it too.
        committed = time.time()
        lag = self.lag.labels(consumer=consumer.name)
        for msg, _ in items:
            lag.observe(max(0.0, committed - msg.metadata.timestamp.timestamp()))
        later = {id(msg) for msg in held}
        for msg, _ in items:
            if id(msg) in later:
                continue
            try:
                await msg.ack()
            except Exception as exc:  # stored already; a redelivery would be a no-op
                log.warning("ack failed", extra={"subject": msg.subject, "reason": repr(exc)})
        return True

    async def _reject(self, msg: Msg, exc: Rejected) -> None:
        self.rejected.labels(reason=exc.reason).inc()
        log.warning(
            "dropped a message", extra={"subject": msg.subject, "reason": exc.reason, "detail": exc.detail}
        )
        try:
            await msg.term()
        except Exception as err:
            log.warning("term failed", extra={"subject": msg.subject, "reason": repr(err)})

    async def _wait_for_database(self) -> None:
        delay = self.backoff.first
        while not self._stopping.is_set():
            await self._pause(delay)
            try:
                await self.store.pool.fetchval("SELECT 1", timeout=5)
            except Exception:
                delay = self.backoff.delay(delay)
                continue
            log.info("database answers again; resuming ingest")
            return

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # Decoding ---------------------------------------------------------------------------------

    def _decode_metrics(self, msg: Msg) -> Payload:
        kind = self.subjects.kind_of(msg.subject)
        payload: MetricBatch | EventBatch | AgentStatus
        try:
            if kind == "metrics":
                payload = decode_metric_batch(msg.data)
                expected = self.subjects.metrics(payload.host)
            elif kind == "events":
                payload = decode(msg.data, EventBatch)
                expected = self.subjects.events(payload.host)
            elif kind == "agents":
                payload = decode(msg.data, AgentStatus)
                expected = self.subjects.agents(payload.host)
            else:
                raise Rejected("unknown_subject", f"no payload type is defined for {msg.subject}")
        except PayloadError as exc:
            raise Rejected("invalid_payload", str(exc)) from None
        self._check_host(msg, payload.host, expected)
        return payload

    def _decode_alert(self, msg: Msg) -> Payload:
        try:
            alert = decode(msg.data, AlertEvent)
        except PayloadError as exc:
            raise Rejected("invalid_payload", str(exc)) from None
        self._check_host(msg, alert.host, self.subjects.alerts(alert.host))
        return alert

    def _decode_action(self, msg: Msg) -> Payload:
        try:
            return decode(msg.data, AlertAction)
        except PayloadError as exc:
            raise Rejected("invalid_payload", str(exc)) from None

    def _decode_delivery(self, msg: Msg) -> Payload:
        try:
            return decode(msg.data, DeliveryResult)
        except PayloadError as exc:
            raise Rejected("invalid_payload", str(exc)) from None

    @staticmethod
    def _check_host(msg: Msg, host: str, expected_subject: str) -> None:
        # NATS permissions let an agent publish only on its own subject; the payload must agree,
        # or one host could write data in another's name.
        if msg.subject != expected_subject:
            raise Rejected(
                "host_mismatch", f"payload host {host!r} belongs on {expected_subject}, not {msg.subject}"
            )

    # Writing ------------------------------------------------------------------------------------

    async def _write_metrics(self, items: list[tuple[Msg, Payload]]) -> list[Msg]:
        metric_items = [(msg, p) for msg, p in items if isinstance(p, MetricBatch)]
        metrics = [p for _, p in metric_items]
        events = [p for _, p in items if isinstance(p, EventBatch)]
        statuses = [p for _, p in items if isinstance(p, AgentStatus)]
        sequences = [msg.metadata.sequence.stream for msg, _ in metric_items]
        rollups = self.rollups.round(sequences)
        written = await self.store.write_metrics(
            metrics,
            events,
            statuses,
            rollups=rollups,
            redelivered=any(msg.metadata.num_delivered > 1 for msg, _ in items),
        )
        # Batches whose rollups wait for the next merge are counted (and acknowledged) then.
        waiting = self.rollups.add(rollups)
        held = [msg for (msg, _), seq in zip(metric_items, sequences, strict=True) if seq in waiting]
        for msg in held:
            self._held[msg.metadata.sequence.stream] = msg
        if self.latest is not None:
            self.latest.note(written)
        if self.live is not None:
            self.live.metrics(written, statuses)
        if self.committed is not None:
            await self.committed.metrics(written, statuses)
        for msg in held:  # held about a minute for the merge: only its reply subject is needed
            msg.data = b""
        self.committed_samples.inc(written.samples)
        self.samples.inc(written.samples - sum(waiting.values()))
        self.duplicates.inc(written.duplicate_samples)
        self.events.inc(written.events)
        self.series.inc(written.new_series)
        counts = (("metrics", len(metrics) - len(held)), ("events", len(events)), ("agents", len(statuses)))
        for name, n in counts:
            if n:
                self.messages.labels(kind=name).inc(n)
        return held

    async def _write_alerts(self, items: list[tuple[Msg, Payload]]) -> list[Msg]:
        alerts = [p for _, p in items if isinstance(p, AlertEvent)]
        await self.store.write_alerts(alerts)
        self.messages.labels(kind="alerts").inc(len(alerts))
        if self.live is not None:
            self.live.alerts(alerts)
        if self.committed is not None:
            await self.committed.alerts(alerts)
        return []

    async def _write_actions(self, items: list[tuple[Msg, Payload]]) -> list[Msg]:
        actions = [p for _, p in items if isinstance(p, AlertAction)]
        await self.store.write_actions(actions)
        if self.commits is not None:
            self.commits.committed()
        self.messages.labels(kind="actions").inc(len(actions))
        if actions and (self.live is not None or self.committed is not None):
            hosts = await self.store.alert_hosts([a.alert_id for a in actions])
            if self.live is not None:
                self.live.actions(actions, hosts)
            if self.committed is not None:
                await self.committed.actions(actions, hosts)
        return []

    async def _write_deliveries(self, items: list[tuple[Msg, Payload]]) -> list[Msg]:
        results = [p for _, p in items if isinstance(p, DeliveryResult)]
        await self.store.write_deliveries(results)
        self.messages.labels(kind="notifications").inc(len(results))
        return []

"""The imperative shell around :class:`signalfire.evaluator.engine.Engine`.

Metric batches, event batches and agent statuses arrive on core NATS subscriptions (lowest
latency; the evaluator needs the present, and reads the stream's history only when it takes
a partition over) and go straight into the engine, with the service's clock; a timer ticks
it for ``for`` expiry, absence and sliding event counts. The engine's alert events become
:class:`~signalfire.events.AlertEvent` publishes on JetStream, de-duplicated by
``Nats-Msg-Id: <alert_id>:<status>``.

Delivery is an outbox: a state with unpublished events is written to the ``alert_state`` KV
bucket *before* the events are published, and again once they are. After a crash, a
restarted evaluator re-publishes what the outbox still holds (the stream drops it if it had
gone out), so a restart neither repeats a firing nor loses a resolve.

With ``partitions`` set, several replicas share the hosts: each judges only the hosts of the
partitions whose lease it holds (:mod:`signalfire.evaluator.leases`), and the rules that pool
every host (``group_by: fleet``) when it holds the ``fleet`` partition. Leases are balanced
over the live replicas (:func:`signalfire.evaluator.partitions.assign`); a replica that
takes a partition over loads its alert states from KV, rebuilds the partition's windows
from the metrics stream's recent history and judges what was published while nobody held it
(:mod:`signalfire.evaluator.replay`); one that gives it up writes what it decided first and
then forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from signalfire.bus import (
    METRICS_DUPLICATE_WINDOW,
    NatsConfig,
    bucket_entries,
    connect,
    delete_if,
    ensure_streams,
)
from signalfire.config import ConfigError, Duration
from signalfire.consumers import Backoff
from signalfire.evaluator import replay
from signalfire.evaluator.engine import Engine, Output, Scope
from signalfire.evaluator.leases import CLOCK_OFFSET_WARN, Entry, LeaseKeeper, Presence
from signalfire.evaluator.partitions import FLEET_PARTITION, assign, partition_names, token_partition
from signalfire.evaluator.rules import DEFAULT_MAX_SERIES, FLEET, Rule, expand_paths, load_rules
from signalfire.evaluator.state import AlertState
from signalfire.events import (
    AgentStatus,
    AlertAction,
    AlertEvent,
    Event,
    EventBatch,
    MetricBatch,
    PayloadError,
    decode,
    encode,
)
from signalfire.runner import Essentials
from signalfire.subjects import subject_token
from signalfire.telemetry import Registry, parse_listen, serve_metrics

log = logging.getLogger("signalfire.evaluator")

#: Waits between two attempts of a failed publish or KV write: 0.1 s doubling to 1 s (a stream
#: electing a leader after a NATS node died answers again within seconds, and an alert
#: waiting for it must go out within a second of that, not up to 5 s later).
RETRY_BACKOFF = Backoff(first=0.1, cap=1.0)
#: How long one attempt of an alert event's publish or of an alert state's write waits for the
#: stream's answer (nats-py's default is 5 s). While a stream elects a leader after a NATS node
#: died, nobody answers: an attempt sent just before the election ends would wait out its whole
#: timeout, and the alert with it. A retry carries the same ``Nats-Msg-Id`` (the stream keeps
#: one copy) or compare-and-set revision (:meth:`EvaluatorService._compare_and_set` tells a
#: write whose answer was lost), so a short wait costs nothing when the answer is merely slow.
WRITE_TIMEOUT = 2.0

#: After a reconnect, decisions by time alone (absence, `for` running out) stay suspended
#: until the payload subscriptions hold at most this many messages not yet evaluated (what
#: arrived meanwhile is read first) ...
CATCH_UP_BACKLOG = 100
#: ... or for at most this long (seconds), so a backlog that never drains cannot keep a dead
#: host from alerting.
CATCH_UP_LIMIT = 30.0

#: After a reconnect, what the bus stored while the connection was away is read back from the
#: metrics stream and judged (core subscriptions deliver nothing while disconnected): from
#: this long (seconds) before the bus was last seen ...
MISSED_MARGIN = 1.0
#: ... for at most this long, retries included (the stream may be electing a leader) ...
MISSED_READ_LIMIT = 30.0
#: ... skipping a metric batch or agent status stored no later than this long after its
#: subject's last live payload (received live, or older than what was) and a batch judged
#: already (see ``JUDGED_KEEP``).
MISSED_SLACK = 0.05
#: Payloads judged are remembered (a hash of subject and bytes) for as long as the metrics
#: stream remembers a ``Nats-Msg-Id``: a publisher that sends a batch again because the
#: stream's acknowledgement was lost (the agent's outbox, the gateway's HTTP ingest) has it
#: stored once, but every core subscription receives it twice; judged once all the same. A
#: catch-up after a reconnect skips what was judged live the same way.
JUDGED_KEEP = METRICS_DUPLICATE_WINDOW
#: Subjects not heard from for this long are forgotten by the catch-up's bookkeeping.
LIVE_SUBJECTS_KEEP = 3600.0
#: After a start or a takeover, the delay of each host with an alert a person resolved by
#: hand within this long (seconds; an agent's outbox of 1,000 batches at a 10 s interval
#: holds under three hours) is measured from its last batch on the metrics stream ...
PLACE_RESOLVED_WITHIN = 3 * 3600.0
#: ... for at most this many hosts, the most recent resolves first, and for at most this
#: long (seconds; 1,000 hosts take 0.15 s, ``bench/place_hosts.py``): a stream electing its
#: leader must not hold a start or a takeover up.
PLACE_MAX_HOSTS = 1000
PLACE_LIMIT = 2.0

#: People's alert actions reach the evaluator on a core subscription too: after a start, a
#: takeover or a reconnect, those stored since the alerts' last writer may have stopped
#: applying them are read back from the alerts stream, from this long (seconds) earlier (for
#: clocks apart, and a write still on its way) ...
ACTIONS_MARGIN = 10.0
#: ... for at most this long, retries included (the stream may be electing a leader).
ACTIONS_READ_LIMIT = 30.0

#: With partitions, a payload callback yields to the event loop when this long (seconds) has
#: passed since it last did: nats-py runs a subscription's callbacks back to back while its
#: queue holds messages, so a backlog would otherwise starve the lease renewals.
YIELD_EVERY = 0.02

#: A partition lease lasts this share of ``failover_after`` without renewal, and leases are
#: read and renewed ``POLLS_PER_FAILOVER`` times per ``failover_after``: a dead replica's
#: partitions are taken over at most ttl + 2 polls (0.8 of failover_after) after its last
#: renewal, which leaves the rest for loading their states.
LEASE_SHARE = 0.6
POLLS_PER_FAILOVER = 10

_REPLICA_ID = re.compile(r"^[A-Za-z0-9_=-]+$")
#: Without ``replica_id``, the ids an evaluator tries: the host name, then ``<host name>-2``
#: up to this suffix, for evaluators started side by side on one host.
MAX_SAME_HOST = 64

#: With partitions, the anomaly baselines of each partition a replica judges are written to
#: the ``alert_state`` bucket (key ``baseline.<partition>``) this often (seconds), so the
#: replica that takes the partition over starts from them rather than afresh.
BASELINE_EVERY = 30.0
BASELINE_PREFIX = "baseline."
#: A partition's snapshot larger than this (bytes) is not written (NATS' max_payload is 1 MiB).
BASELINE_MAX_BYTES = 900 * 1024


class BaselineSnapshot(msgspec.Struct, kw_only=True):
    """A ``baseline.<partition>`` entry: :meth:`Engine.baselines` at ``time``."""

    time: float
    rules: dict[str, Any]
    v: int = 1


class EvaluatorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``signalfire evaluator --config FILE``; every field also from ``SF_*`` variables."""

    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    log_level: str = "info"
    log_format: Literal["logfmt", "json"] = "logfmt"
    #: Rule files, directories (their ``*.yaml``) or globs, relative to the working directory.
    rules: list[str] = msgspec.field(default_factory=lambda: ["rules/default.yaml"])
    #: ``host:port`` to serve ``/metrics`` on; off when unset.
    metrics_listen: str | None = None
    #: How often time advances between payloads: ``for`` expiry, absence, event windows.
    tick_interval: Duration = Duration(1)
    #: How often rule files are checked for changes (reloaded when one changed); 0: never.
    watch_interval: Duration = Duration(1)
    #: Series one rule may track (a rule's own ``max_series`` overrides it); beyond it new
    #: series are dropped, counted and reported, so a label explosion cannot exhaust memory.
    max_series_per_rule: int = DEFAULT_MAX_SERIES
    #: Host partitions shared by the evaluator replicas that run: an evaluator alone holds
    #: them all from its start, a second one started takes its share. 0: this evaluator alone
    #: judges every host, without leases (never run two so). Every replica must have the same
    #: value.
    partitions: int = 16
    #: With ``partitions``: how soon the partitions of a replica that died are judged again
    #: by the others. Every replica must have the same value.
    failover_after: Duration = Duration(10)
    #: With ``partitions``: this replica's name in the leases (letters, digits, ``-``, ``_``,
    #: ``=``). A replica restarted under the same name takes its partitions back at once. Set,
    #: it must be this process's alone: the start fails while a running evaluator has it. Unset:
    #: the host name, or ``<host name>-2``, ``-3`` … when running evaluators have it.
    replica_id: str | None = None

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError("tick_interval: must be greater than zero")
        if self.max_series_per_rule < 1:
            raise ValueError("max_series_per_rule: must be at least 1")
        if not self.rules:
            raise ValueError("rules: name at least one rule file, directory or glob")
        if not 0 <= self.partitions <= 1024:
            raise ValueError("partitions: must be between 0 (not partitioned) and 1024")
        if self.failover_after < 1:
            raise ValueError("failover_after: must be at least 1s")
        if self.replica_id is not None and not _REPLICA_ID.match(self.replica_id):
            raise ValueError("replica_id: use letters, digits, '-', '_' or '=' only")
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except ValueError as exc:
                raise ValueError(f"metrics_listen: {exc}") from None


class StoredAlert(msgspec.Struct, kw_only=True):
    """A KV entry: the state and the events decided but not yet confirmed by the stream."""

    state: AlertState
    outbox: list[AlertEvent] = []
    v: int = 1


class EvaluatorService:
    """Evaluates rules on arriving payloads and publishes alert events.

    ``nc`` may be a connected client to share (it is then not closed on :meth:`stop`);
    ``clock`` is the one time source of the service (unix seconds).
    """

    def __init__(
        self,
        config: EvaluatorConfig,
        nc: NATS | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.subjects = config.nats.subjects
        #: The loops it cannot run without; one that ends stops the process (signalfire.runner).
        self.essentials = Essentials()
        self._nc = nc
        self._own_nc = nc is None
        self._clock = clock
        self.engine = Engine(max_series=config.max_series_per_rule)
        self._outbox: dict[str, list[AlertEvent]] = {}
        #: Fingerprint → the revision of its ``alert_state`` entry as this replica last wrote or
        #: read it: the next write is a compare-and-set on it (unknown: the entry is created).
        self._revisions: dict[str, int] = {}
        #: Fingerprint → the bytes of a write whose answer did not come back (it may have landed).
        self._unconfirmed: dict[str, bytes | None] = {}
        self._dirty: dict[str, None] = {}  # fingerprints to write to KV, in order
        self._arrivals: dict[str, float] = {}  # Nats-Msg-Id → monotonic batch arrival
        self._files: dict[str, tuple[int, int]] = {}  # rule file → (mtime_ns, size) last loaded
        self.last_reload: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Subscription] = []
        self._js: JetStreamContext | None = None
        self._write_js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._metrics_server: asyncio.Server | None = None
        self._reload_lock = asyncio.Lock()
        self._reconnects = 0  # nats-py's reconnect count when the bus was last in sight
        self._catch_up_from: float | None = None  # when the bus came back, until caught up
        #: The last tick the bus was in sight (connected, no reconnect since the tick before).
        self._in_sight_at: float | None = None
        #: Subject → when its last live metric batch or agent status was judged (this clock):
        #: what a catch-up after a reconnect must not judge again.
        self._last_live: dict[str, float] = {}
        #: Payloads judged (hash of subject and bytes → when, oldest first): not judged again
        #: for ``JUDGED_KEEP`` seconds (a publisher's second copy, a catch-up's read).
        self._seen: dict[int, float] = {}
        self._swept_at = 0.0
        #: Catch-ups after a reconnect: what the bus stored from since to until (:meth:`_catch_up`).
        self._catch_ups = replay.Rereads(self._catch_up, "evaluator-catch-up", lambda: self._stopping)
        # Partitions (config.partitions > 0): what this replica judges (None: every host).
        self._judged: set[str] | None = set() if config.partitions else None
        self._leases: LeaseKeeper | None = None
        self._lease_nc: NATS | None = None
        self._leaving: dict[str, AlertState] = {}  # states given up, still to be written
        #: States of partitions lost (another replica may hold them): never written, until
        #: this replica takes their partition again. Fingerprint → partition.
        self._revoked: dict[str, str] = {}
        #: Settled at the start (see `_hold_replica_id`).
        self.replica_id = config.replica_id or _host_replica_id()
        self._partition_cache: dict[str, str] = {}
        self._flushing: str | None = None  # the fingerprint `_deliver` is writing now
        self._yielded = 0.0  # when a payload callback last yielded to the event loop
        self._duplicate_reported = False
        #: This replica's clock minus the NATS server's (seconds), and whether that was warned of.
        self._clock_offset = 0.0
        self._clock_warned = False
        self._buffered: replay.Buffered | None = None  # live payloads of partitions being taken
        #: People's actions read back (:meth:`_actions_missed`): from when (the server's clock),
        #: after what.
        self._action_reads = replay.Rereads(self._actions_missed, "evaluator-actions", lambda: self._stopping)

        self.registry = Registry("signalfire_evaluator")
        r = self.registry
        self.batches = r.counter("batches", "Payloads evaluated", ["kind"])
        self.invalid_batches = r.counter(
            "invalid_batches", "Payloads dropped because they do not match the contract"
        )
        self.duplicate_batches = r.counter(
            "duplicate_batches",
            "Payloads received again (a publisher's retry after a lost acknowledgement), not judged twice",
            ["kind"],
        )
        self.rejected_samples = r.counter(
            "rejected_samples", "Samples skipped because their value is NaN or infinite"
        )
        self.before_resolve = r.counter(
            "before_resolve",
            "Samples (or windows) whose condition held, of payloads taken before a person resolved "
            "their alert and arriving after it (an agent's outbox after an outage): no new alert started",
        )
        self.series_dropped = r.counter(
            "series_dropped", "Samples not evaluated because their rule reached max_series", ["rule"]
        )
        self.alert_events = r.counter("alert_events", "Alert events published", ["status"])
        self.duplicates = r.counter(
            "alert_duplicates", "Alert events the stream dropped as already published"
        )
        self.publish_failures = r.counter(
            "publish_failures", "Failed attempts to publish an alert event (each is retried)"
        )
        self.kv_failures = r.counter(
            "kv_failures", "Failed attempts to read or write alert state in the KV bucket"
        )
        self.state_conflicts = r.counter(
            "state_conflicts",
            "Alert state writes refused because another writer had changed the entry; the "
            "partition is dropped and taken again from the bucket",
        )
        self.invalid_states = r.counter(
            "invalid_states", "Alert states in the KV bucket that could not be read and were skipped"
        )
        self.template_errors = r.counter(
            "template_errors", "Annotations that failed to render (the raw template was sent)", ["rule"]
        )
        self.reloads = r.counter("reloads", "Rule reloads", ["result"])
        self.replayed = r.counter(
            "replayed_batches",
            "Payloads read back from the metrics stream on taking a partition: `warm` filled "
            "windows and baselines only (the previous owner judged them), `judged` were judged; "
            "after a reconnect: `missed`, stored while the connection was away, judged",
            ["mode"],
        )
        self.missed_actions = r.counter(
            "missed_actions_applied",
            "Alerts changed by people's actions (ack, unack, resolve) that no replica judging them "
            "had received live, read back from the alerts stream after a start, a partition "
            "takeover or a reconnect",
        )
        self.replays = r.counter(
            "replays",
            "Partition takeovers that read the metrics stream's history back: `complete`, or "
            "`truncated` by its bounds (time, batches, bytes) or an error",
            ["result"],
        )
        self.handovers = r.counter(
            "partition_handovers",
            "Partitions taken (acquired), given to another replica (released) or lost (not renewed "
            "in time, or taken over)",
            ["change"],
        )
        r.gauge(
            "clock_offset_seconds",
            "This replica's wall clock minus the NATS server's at its last announcement (partitioned "
            "replicas; 0 until known): the for: starts and decision times it writes are its clock's",
            function=lambda: self._clock_offset,
        )
        r.gauge(
            "partitions_judged",
            "Partitions (of hosts, and `fleet`) this replica judges; all of them when not partitioned",
            function=lambda: len(self._judged) if self._judged is not None else 1,
        )
        self.latency = r.histogram(
            "alert_publish_latency_seconds",
            "Batch arrival to the publish of the alert event it caused",
            # milliseconds on a healthy bus; seconds when a publish is retried
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        r.gauge("rules", "Rules loaded", function=lambda: len(self.engine.rules))
        r.gauge("alerts_firing", "Alerts currently firing", function=lambda: self._count("firing"))
        r.gauge(
            "alerts_pending",
            "Alerts pending (condition holds, `for` or cooldown not yet over)",
            function=lambda: self._count("pending"),
        )
        r.gauge(
            "bus_out_of_sight",
            "1 while NATS is out of sight or being caught up with: no absence, `for` or "
            "keep_firing_for is judged by time alone",
            function=lambda: int(self.engine.blind),
        )

    @property
    def rules(self) -> list[Rule]:
        return self.engine.rules

    @property
    def _poll(self) -> float:
        """Seconds between two reads and renewals of the leases."""
        return float(self.config.failover_after) / POLLS_PER_FAILOVER

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the rules and stored alert states, then subscribe. Raises ``ConfigError`` for
        invalid rules and ``OSError``-like errors when NATS is unreachable."""
        self._stopping = False
        self._files = self._file_signature()
        self.engine.set_rules(load_rules(self.config.rules), self._clock())
        if self._nc is None:
            self._nc = await connect(self.config.nats, "signalfire-evaluator")
        nc = self._nc
        self._js = nc.jetstream()
        await ensure_streams(self._js, self.config.nats)
        # the alert states and events are written with WRITE_TIMEOUT; everything else waits as long
        # as nats-py's default
        self._write_js = nc.jetstream(timeout=WRITE_TIMEOUT)
        self._kv = await self._write_js.key_value(self.subjects.bucket("alert_state"))
        payload_subs: list[Subscription] = []
        if self._judged is None:
            await self._load_states()
        else:
            ttl = float(self.config.failover_after) * LEASE_SHARE
            # A connection of their own: on the payloads' connection a renewal's reply would
            # queue behind every batch not yet read, and a backlog would let the leases lapse.
            self._lease_nc = await connect(self.config.nats, "signalfire-evaluator-leases")
            # A request waits at most a poll (at least 1 s; nats-py waits 5 s): while the bucket
            # elects a leader after a NATS node died nobody answers, and a renewal that waited
            # 5 s let every lease lapse; asked again every poll, the first renewal the new
            # leader answers keeps them (a renewal stored whose answer was lost is recognised).
            lease_js = self._lease_nc.jetstream(timeout=max(1.0, self._poll))
            leases = await lease_js.key_value(self.subjects.bucket("evaluator_leases"))
            self._leases = await self._hold_replica_id(leases, ttl)
            self.replica_id = self._leases.replica
            # Subscribed before the first takeover, which judges nothing live yet: what
            # arrives while it reads the history back is held for it (`_take`).
            payload_subs = await self._subscribe_payloads()
            await nc.flush()
            await nc.flush()  # see below
            await self._balance()
        self._reconnects = nc.stats["reconnects"]
        self._in_sight_at = self._clock()
        spawn = self.essentials.spawn
        self._tasks = [
            spawn(self._deliver(), "evaluator-deliver"),  # first: see stop()
            spawn(self._tick_loop(), "evaluator-tick"),
            *self._tasks,  # a first takeover's read-back of actions, under way
        ]
        if self.config.watch_interval > 0:
            self._tasks.append(spawn(self._watch_files(), "evaluator-watch"))
        if self._leases is not None:
            self._tasks += [
                spawn(self._lease_loop(self._renew, "renewed"), "evaluator-renew"),
                spawn(self._lease_loop(self._balance, "read"), "evaluator-balance"),
                spawn(self._snapshot_loop(), "evaluator-baselines"),
            ]
        subjects = self.subjects
        self._subs = [
            *(payload_subs or await self._subscribe_payloads()),
            await nc.subscribe(subjects.actions, cb=self._on_action),
            await nc.subscribe(subjects.control("evaluator", "rules"), cb=self._on_rules_request),
            await nc.subscribe(subjects.control("evaluator", "reload"), cb=self._on_reload_request),
        ]
        # nats-py writes a flush's PING straight to the socket while SUBs wait in its send
        # buffer, so one flush can return before the server has the subscriptions. The
        # second PING goes out after them: once it returns, no batch published now is missed.
        await nc.flush()
        await nc.flush()
        if self._judged is None:
            # what people did to the firing alerts while no evaluator ran (partitioned
            # replicas read them for each partition they take)
            self._read_back_actions(self._written_until(self.engine.states.values()), "start")
        if self.config.metrics_listen:
            host, port = parse_listen(self.config.metrics_listen)
            self._metrics_server = await serve_metrics(self.registry, host, port)
        log.info(
            "evaluator started",
            extra={
                "rules": len(self.rules),
                "alerts_firing": self._count("firing"),
                "alerts_pending": self._count("pending"),
                **(
                    {"replica": self.replica_id, "partitions": ",".join(sorted(self._judged))}
                    if self._judged is not None
                    else {}
                ),
            },
        )

    async def _hold_replica_id(self, leases: KeyValue, ttl: float) -> LeaseKeeper:
        """The leases of this replica under an id no running evaluator has: ``replica_id``, or
        the first free of the host name, ``<host name>-2`` … Raises ``ConfigError`` when
        ``replica_id`` is set and taken (two processes judging under one id would take each
        other's partitions in turn).

        An id is taken when its announcement (``replica.<id>``) is another process's and that
        process answers on the id's control subject; an announcement nobody answers for is an
        earlier life of this replica (killed), whose partitions this one takes back at once.
        The announcement is then written by compare-and-set on the revision read, with the
        answering subscription in place: of two processes starting under one id at once, one
        holds it, and one starting later finds it answered for."""
        assert self._lease_nc is not None
        nc = self._lease_nc
        configured = self.config.replica_id
        host = _host_replica_id()
        candidates = (
            [configured]
            if configured is not None
            else [host, *(f"{host}-{n}" for n in range(2, MAX_SAME_HOST + 1))]
        )
        holders: list[str] = []
        silent = False  # an id passed over was held by a subscriber that gave no answer
        for candidate in candidates:
            keeper = LeaseKeeper(leases, candidate, ttl, wall=self._clock)
            subject = self.subjects.control("evaluator", f"replica.{candidate}")
            revision = await keeper.announcement()
            if revision:
                holder = await self._holder(subject)
                if holder is not None:
                    holders.append(holder[0])
                    silent = silent or not holder[1]
                    continue
            presence = Presence(
                replica=candidate, instance=keeper.instance, host=socket.gethostname(), pid=os.getpid()
            )
            answer = msgspec.json.encode(presence)

            async def present(msg: Msg, answer: bytes = answer) -> None:
                await msg.respond(answer)

            # Answers for the id as long as the leases' connection lives.
            sub = await nc.subscribe(subject, cb=present)
            await nc.flush()
            if await keeper.hold_id(revision):
                if candidate != candidates[0]:
                    # A silent id (no answer: hung, or the bus refusing the question) may be
                    # this host's evaluator killed a moment ago, whose partitions wait for their
                    # leases to lapse rather than coming back at once: worth a warning.
                    (log.warning if silent else log.info)(
                        "a running evaluator has this host's replica id; this one takes the next",
                        extra={"replica": candidate, "taken": ", ".join(holders)},
                    )
                return keeper
            await sub.unsubscribe()
            holders.append(f"{candidate} (announced by another process just now)")
        if configured is not None:
            raise ConfigError(
                f"replica_id {configured!r} is used by a running evaluator ({holders[0]}); give "
                "each evaluator its own replica_id (SF_REPLICA_ID), or leave it unset"
            )
        raise ConfigError(
            f"replica ids {candidates[0]} to {candidates[-1]} are all used by running evaluators; "
            "set replica_id (SF_REPLICA_ID)"
        )

    async def _holder(self, subject: str) -> tuple[str, bool] | None:
        """Who answers for a replica id on ``subject``, and whether it did answer (a
        subscriber that gave no answer in time holds it too); ``None``: no process does."""
        assert self._lease_nc is not None
        wait = self._poll
        try:
            reply = await self._lease_nc.request(subject, b"", timeout=wait)
        except NoRespondersError:
            return None
        except TimeoutError:  # subscribed, but not answering: not free either
            # Or the request was refused: bus accounts rendered before evaluators could ask.
            return (
                f"{subject.rpartition('.')[2]}: no answer within {wait:g}s; if no process hangs under "
                f"this id, allow the evaluator identity to publish on {subject} (render the bus "
                "accounts again, docs/security.md)",
                False,
            )
        try:
            presence = msgspec.json.decode(reply.data, type=Presence)
        except msgspec.DecodeError:
            return f"{subject.rpartition('.')[2]}: a process that answered in an unknown format", True
        return f"{presence.replica}: pid {presence.pid} on {presence.host}", True

    async def _subscribe_payloads(self) -> list[Subscription]:
        """Metrics, events and agent statuses, in this order (`_watch_sight` counts on it)."""
        assert self._nc is not None
        subjects = self.subjects
        return [
            await self._nc.subscribe(subject, cb=self._on_payload)
            for subject in (subjects.all_metrics, subjects.all_events, subjects.all_agents)
        ]

    async def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe, publish what is decided (up to ``timeout`` seconds), then close."""
        self.essentials.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        self._stopping = True
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            deliver, *timers = tasks
            for task in timers:
                task.cancel()
            # The loops also end at their next turn once stopping: Python 3.11's wait_for (under
            # nats-py's next_msg, in a takeover's history read) can swallow a cancellation that
            # lands as its message arrives, and a loop that went on kept stop() waiting for ever.
            _, pending = await asyncio.wait(timers, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending and (await asyncio.wait(pending, timeout=timeout))[1]:
                log.warning("a background task did not stop", extra={"tasks": len(pending)})
            try:
                await asyncio.wait_for(deliver, timeout)
            except TimeoutError:
                log.warning(
                    "stopped with alert events unpublished; they are kept for the next start",
                    extra={"alerts": len(self._dirty)},
                )
            else:
                await self._release_all()
        if self._lease_nc is not None:
            with contextlib.suppress(Exception):
                await self._lease_nc.close()
            self._lease_nc = None
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
            self._metrics_server = None
        if self._own_nc and self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    def set_rules(self, rules: list[Rule]) -> None:
        """Run ``rules`` from now on (states of rules that remain continue)."""
        self._handle(self.engine.set_rules(rules, self._clock()), None)

    async def _load_states(self) -> None:
        """Adopt the stored alert states (at start, not partitioned)."""
        states, outboxes = await self._read_states(None)
        for fp, events in outboxes.items():
            self._outbox[fp] = events
            self._dirty[fp] = None
        self.engine.load(states, self._clock(), await self._last_seen(states))
        await self._place(self.engine)
        if self._dirty:
            self._wake.set()

    async def _place(self, engine: Engine) -> None:
        """Measure the delay (see :class:`~.engine.Lag`) of each host with an alert a person
        resolved by hand that ``engine`` has not heard from, from the host's last batch on the
        metrics stream: the time the stream stored it (on this clock) less its own time. Its
        agent may still hold batches taken before the resolve (its NATS node died); judged
        after a start or a takeover without it, the first would count as taken on arrival and
        could start the alert the person resolved again. Best effort: a host not found (or not
        read within :data:`PLACE_LIMIT`) keeps counting from its first batch."""
        now = self._clock()
        hosts = engine.unplaced(now - PLACE_RESOLVED_WITHIN)[:PLACE_MAX_HOSTS]
        if not hosts:
            return
        last: dict[str, tuple[float, bytes] | None] = {}
        subjects = {self.subjects.metrics(host): host for host in hosts}
        try:
            await asyncio.wait_for(self._last_messages(subjects, last), PLACE_LIMIT)
        except TimeoutError:
            log.warning(
                "hosts resolved by hand not all placed in time: a batch of theirs held back "
                "through an outage may count as taken on arrival",
                extra={"hosts": len(hosts), "placed": len(last), "seconds": PLACE_LIMIT},
            )
        for subject, found in last.items():
            if found is None:
                continue
            with contextlib.suppress(PayloadError):
                batch = decode(found[1], MetricBatch)
                if batch.host == subjects[subject]:
                    engine.note_delay(batch.host, found[0] + self._clock_offset - batch.time, now)

    async def _last_messages(
        self, subjects: Iterable[str], into: dict[str, tuple[float, bytes] | None]
    ) -> None:
        """The last message of each of ``subjects`` on the metrics stream, into ``into``: the
        time the stream stored it (the server's clock) and its data, or ``None`` when it has
        none (or may not be read). A few requests at a time: thousands of hosts must not flood
        the server. Filled as the answers come, so a caller that stops waiting keeps those."""
        assert self._js is not None
        js, stream = self._js, self.subjects.metrics_stream

        async def look_up(subject: str) -> None:
            try:
                msg = await js.get_last_msg(stream, subject)
            except Exception:  # nothing stored for it (or no right to read): not known
                into[subject] = None
                return
            into[subject] = (msg.time.timestamp(), msg.data or b"") if msg.time is not None else None

        pending = sorted(subjects)
        while pending:
            batch, pending = pending[:32], pending[32:]
            await asyncio.gather(*(look_up(subject) for subject in batch))

    async def _read_states(
        self, partitions: set[str] | None, baselines: list[BaselineSnapshot] | None = None
    ) -> tuple[list[AlertState], dict[str, list[AlertEvent]]]:
        """The stored alert states (only those of ``partitions``, when given) and the outbox of
        those that have one, by fingerprint; the anomaly baselines of ``partitions`` into
        ``baselines``."""
        assert self._kv is not None
        states: list[AlertState] = []
        outboxes: dict[str, list[AlertEvent]] = {}
        rules = {rule.name: rule for rule in self.rules}
        for entry in (await bucket_entries(self._kv)).values():
            if entry.key.startswith(BASELINE_PREFIX):
                wanted = partitions is not None and entry.key.removeprefix(BASELINE_PREFIX) in partitions
                if baselines is not None and wanted:
                    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                        baselines.append(msgspec.json.decode(entry.value or b"", type=BaselineSnapshot))
                continue
            try:
                # events.decode: any bytes become a StoredAlert or a PayloadError
                stored = decode(entry.value or b"", StoredAlert)
            except PayloadError as exc:
                self.invalid_states.inc()
                log.warning("skipped unreadable alert state", extra={"key": entry.key, "reason": str(exc)})
                continue
            fp = stored.state.fingerprint
            if partitions is not None and self._partition_of(stored.state, rules) not in partitions:
                continue
            self._revoked.pop(fp, None)
            self._revisions[fp] = entry.revision or 0
            states.append(stored.state)
            if stored.outbox:
                outboxes[fp] = list(stored.outbox)
        return states, outboxes

    async def _last_seen(self, states: list[AlertState]) -> dict[str, float]:
        """When each series an ``absent`` rule watches was last seen, by fingerprint, from the
        last message of its host on the metrics stream (and an ``online`` agent status): the
        time the stream stored it. A series missing from its host's last batch, or whose host
        has nothing in the stream, is left out (the engine then counts from now)."""
        rules = {rule.name: rule for rule in self.rules if rule.kind == "absent"}
        watched = [s for s in states if s.rule in rules and not s.retired]
        last: dict[str, tuple[float, bytes] | None] = {}
        subjects = {self.subjects.metrics(s.host) for s in watched}
        subjects |= {self.subjects.agents(s.host) for s in watched if not rules[s.rule].metric}
        await self._last_messages(subjects, last)
        seen: dict[str, float] = {}
        for state in watched:
            rule = rules[state.rule]
            times: list[float] = []
            found = last.get(self.subjects.metrics(state.host))
            if found is not None:
                try:
                    batch_ = decode(found[1], MetricBatch)
                except PayloadError:
                    batch_ = None
                if batch_ is not None and (
                    not rule.metric
                    or any(x.name == rule.metric and x.labels == state.labels for x in batch_.samples)
                ):
                    times.append(found[0])
            if not rule.metric:
                status = last.get(self.subjects.agents(state.host))
                if status is not None:
                    try:
                        if decode(status[1], AgentStatus).status == "online":
                            times.append(status[0])
                    except PayloadError:
                        pass
            if times:
                seen[state.fingerprint] = max(times)
        return seen

    # Reload ------------------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Load the rule files again. A bad file keeps the running rules; the reply (and the
        log) says why: ``{"ok": false, "error": "file:line: field: reason"}``."""
        async with self._reload_lock:
            self._files = self._file_signature()
            try:
                rules = load_rules(self.config.rules)
            except ConfigError as exc:
                self.reloads.labels(result="failed").inc()
                log.error(
                    "rule reload failed; the previous rules keep running",
                    extra={"reason": str(exc), "rules": len(self.rules)},
                )
                self.last_reload = {"ok": False, "error": str(exc), "time": self._clock()}
                return {**self.last_reload, "rules": len(self.rules)}
            self.set_rules(rules)
            self.reloads.labels(result="ok").inc()
            log.info("rules reloaded", extra={"rules": len(rules)})
            self.last_reload = {"ok": True, "time": self._clock()}
            return {**self.last_reload, "rules": len(rules)}

    async def reload_on_signal(self) -> None:
        """The SIGHUP handler for :func:`signalfire.runner.serve`."""
        await self.reload()

    def _file_signature(self) -> dict[str, tuple[int, int]]:
        files, _ = expand_paths(self.config.rules)
        signature: dict[str, tuple[int, int]] = {}
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                signature[str(path)] = (-1, -1)
                continue
            signature[str(path)] = (stat.st_mtime_ns, stat.st_size)
        return signature

    async def _watch_files(self) -> None:
        while not self._stopping:
            await asyncio.sleep(float(self.config.watch_interval))
            if self._file_signature() != self._files:
                await self.reload()

    # Partitions --------------------------------------------------------------------------

    def _token_partition(self, token: str) -> str:
        partition = self._partition_cache.get(token)
        if partition is None:
            partition = self._partition_cache[token] = token_partition(token, self.config.partitions)
        return partition

    def _in_partition(self, partition: str, host: str) -> bool:
        return self._host_partition(host) == partition

    def _host_partition(self, host: str) -> str:
        return self._token_partition(subject_token(host))

    def _partition_of(self, state: AlertState, rules: dict[str, Rule]) -> str:
        rule = rules.get(state.rule)
        if rule is not None and rule.group_by == FLEET:
            return FLEET_PARTITION
        return self._host_partition(state.host)

    def _replay_scope(self, subject: str, partitions: frozenset[str] | set[str]) -> Scope | None:
        """Which rules of ``partitions`` judge a payload on ``subject`` (None: none of them)."""
        hosts = self._token_partition(subject.rpartition(".")[2]) in partitions
        fleet = FLEET_PARTITION in partitions
        if hosts:
            return "all" if fleet else "host"
        return "fleet" if fleet else None

    def _scope(self, subject: str) -> Scope | None:
        """Which rules judge a payload on ``subject`` here (None: none, another replica's)."""
        judged = self._judged
        if judged is None:
            return "all"
        hosts = self._token_partition(subject.rpartition(".")[2]) in judged
        fleet = FLEET_PARTITION in judged
        if hosts:
            return "all" if fleet else "host"
        return "fleet" if fleet else None

    async def _lease_loop(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        period = self._poll
        failures = 0
        started = time.monotonic()
        while not self._stopping:
            # A poll every `period` from start to start: a round slowed by a loaded machine
            # does not push every later one back by its own length.
            await asyncio.sleep(max(period / 4, period - (time.monotonic() - started)))
            started = time.monotonic()
            try:
                await step()
                failures = 0
            except Exception as exc:  # NATS away or slow: the leases stay valid until they lapse
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "partition leases not %s; retrying",
                        what,
                        extra={"reason": str(exc) or type(exc).__name__, "attempts": failures},
                    )
            self._expire_leases()

    async def _renew(self) -> None:
        """Renew every held lease at once (one round trip, not one per partition: a busy
        replica gets few turns of its event loop). Its own task, so that a partition being
        given up (waiting for its writes) never delays the renewal of the others."""
        leases = self._leases
        assert leases is not None
        held = list(leases.held)
        renewed = await asyncio.gather(*(leases.renew(p) for p in held), return_exceptions=True)
        taken_over = [p for p, ok in zip(held, renewed, strict=True) if ok is False]
        if taken_over:
            self._lose(taken_over, "taken over by another replica")
        failed = [r for r in renewed if isinstance(r, BaseException)]
        if failed:
            raise failed[0]  # NATS away: they stay valid until they lapse

    def _expire_leases(self) -> None:
        if self._leases is not None:
            lapsed = self._leases.lapsed()
            if lapsed:
                self._lose(lapsed, "not renewed in time")

    def _note_clock_offset(self, offset: float | None) -> None:
        """Keep the offset of this replica's clock from the NATS server's, and warn once when it
        passes ``CLOCK_OFFSET_WARN`` (again after it came back under half of that)."""
        if offset is None:
            return
        self._clock_offset = offset
        if abs(offset) > CLOCK_OFFSET_WARN and not self._clock_warned:
            self._clock_warned = True
            log.warning(
                "this replica's clock is off the NATS server's: the for: starts and decision times "
                "it writes are off by as much, and they move with its partitions; keep the clocks "
                "of the evaluator hosts in sync (NTP)",
                extra={"replica": self.replica_id, "offset_seconds": round(offset, 3)},
            )
        elif abs(offset) < CLOCK_OFFSET_WARN / 2:
            self._clock_warned = False

    async def _balance(self) -> None:
        """One round of leases: announce this replica, give up what another live replica
        should hold, take what is free (or expired) and this replica's share, or left without
        an owner for twice the lease (renewals: :meth:`_renew`)."""
        leases = self._leases
        assert leases is not None and self._judged is not None
        names = partition_names(self.config.partitions)
        entries = await leases.read(f"partition.{name}" for name in names)
        self._note_clock_offset(leases.own_clock_offset(entries))
        if leases.duplicate(entries) and not self._duplicate_reported:
            self._duplicate_reported = True
            log.error(
                "another running evaluator uses this replica_id; give each replica its own",
                extra={"replica": self.replica_id},
            )
        await leases.announce(self._judged, self.config.partitions)
        owners = assign(names, leases.live_replicas(entries))
        taken: set[str] = set()
        previous: dict[str, Entry | None] = {}
        for partition in names:
            key = f"partition.{partition}"
            entry = entries.get(key)
            if partition in leases.held:
                if owners[partition] != self.replica_id:
                    await self._release(partition)
                continue
            free = entry is None or leases.expired(key, entry)
            mine = entry is not None and entry.lease.replica == self.replica_id
            orphaned = free and leases.unchanged_for(key, entry) >= 2 * leases.ttl
            wanted = (owners[partition] == self.replica_id and (free or mine)) or orphaned
            if wanted and await leases.claim(partition, entry):
                taken.add(partition)
                previous[partition] = entry
        if taken:
            await self._take(taken, previous)

    async def _take(self, taken: set[str], previous: dict[str, Entry | None]) -> None:
        """Start judging the partitions just claimed. Their alert states come from KV; their
        recent history from the metrics stream goes into an engine of their own: what the
        previous holder judged fills windows, baselines and last-seen times, what was
        published after (nobody judged it) is judged, at the time the stream stored it; then
        the live payloads that arrived meanwhile; and only then, in one step, does the
        running engine take it all over."""
        assert self._judged is not None and self._js is not None and self._leases is not None
        started = time.monotonic()
        now = self._clock()
        failover = float(self.config.failover_after)
        poll = self._poll
        # What the previous holder judged: up to its last renewal (less a poll, for what was
        # still on its way to it); a free partition was given up a poll or two ago. Never more
        # than two failover_after back: older history fills windows only. All on the NATS
        # server's clock, the clock of the history's timestamps: the time the server stored
        # the renewal, not the time the holder wrote in it (the holder's clock may be off).
        server_now = self._leases.server_time or now
        judged_until: dict[str, float] = {}
        for partition in taken:
            entry = previous.get(partition)
            until = entry.stored - poll if entry is not None else server_now - 2 * poll
            judged_until[partition] = max(until, server_now - 2 * failover)
        # The fleet partition needs the history (every host's) only for rules that pool it.
        fleet = any(rule.group_by == FLEET for rule in self.rules)
        replayed = frozenset(taken if fleet else taken - {FLEET_PARTITION})
        buffered = self._buffered = replay.Buffered(replayed)
        outputs: list[Output] = []
        read = replay.Read()
        counts = {"warm": 0, "judged": 0, "live": 0, "duplicate": 0}
        seen: set[int] = set()  # history that may also be in the buffer
        recent: list[int] = []  # what a publisher may still send again (see `JUDGED_KEEP`)
        baselines = 0  # anomaly baselines restored
        rules = {rule.name: rule for rule in self.rules}
        try:
            snapshots: list[BaselineSnapshot] = []
            states, outboxes = await self._read_states(taken, snapshots)
            scratch = Engine(self.engine.rules, max_series=self.engine.max_series)
            scratch.load(states, now, await self._last_seen(states), handover=True)
            for snapshot in snapshots:
                baselines += scratch.restore_baselines(snapshot.rules, snapshot.time)
            guard = scratch.replaying({state.fingerprint: _decided_at(state) for state in states})
            lookback = min(max((rule.window for rule in scratch.rules), default=0.0), replay.MAX_LOOKBACK)
            keep_from = min((judged_until[p] for p in replayed), default=server_now)
            start = keep_from - lookback - poll
            if snapshots:
                # The samples after a baseline snapshot bring its baselines up to date: from the
                # oldest snapshot on (older history is read only as time allows, oldest left out).
                start = min(start, max(min(s.time for s in snapshots), keep_from - replay.MAX_LOOKBACK))
            subjects = self.subjects
            history = replay.read_history(
                self._js,
                subjects.metrics_stream,
                start,
                keep_from=keep_from,
                wanted=lambda subject: self._replay_scope(subject, replayed) is not None,
                seconds=failover * replay.TIME_SHARE,
                result=read,
            )
            try:
                if not replayed:
                    await history.aclose()  # nothing to read: the fleet partition, no fleet rules
                async with contextlib.aclosing(history):
                    async for subject, data, stored in history:
                        scope = self._replay_scope(subject, replayed)
                        if scope is None:
                            continue
                        payload = self._decode(subject, data, report=False)
                        if payload is None:
                            continue
                        judged = False
                        for part, warm in self._replay_parts(subject, scope, stored, judged_until):
                            if warm and isinstance(payload, AgentStatus) and payload.status != "online":
                                continue  # a retirement the previous holder applied already
                            guard.warming = warm
                            _keep(outputs, _feed(scratch, payload, stored, part))
                            judged = judged or not warm
                        # Judged here or by the previous holder: not again from the buffer, nor
                        # as a publisher's retry arriving live later (see `JUDGED_KEEP`).
                        key = hash((subject, data))
                        seen.add(key)
                        if stored >= server_now - JUDGED_KEEP:
                            recent.append(key)
                        counts["judged" if judged else "warm"] += 1
            except Exception as exc:  # the stream unreadable: what the KV holds, as before
                read.truncated = "error"
                log.warning(
                    "partition history not read back; windows start afresh",
                    extra={"reason": str(exc) or type(exc).__name__},
                )
            await self._place(scratch)  # hosts resolved by hand the history did not show
        except BaseException:
            self._buffered = None
            for partition in taken:  # not judged: let the leases lapse, to be taken again
                self._leases.drop(partition)
            raise
        # From here on nothing awaits: no live payload slips between the buffer and the engine.
        self._buffered = None
        guard.warming = False
        for subject, data, arrived in buffered.messages:
            key = hash((subject, data))
            if key in seen:
                counts["duplicate"] += 1
                continue
            seen.add(key)
            recent.append(key)
            scope = self._replay_scope(subject, replayed)
            payload = self._decode(subject, data)
            if scope is None or payload is None:
                continue
            _keep(outputs, _feed(scratch, payload, arrived, scope))
            self.batches.labels(kind=self.subjects.kind_of(subject)).inc()
            counts["live"] += 1
        scratch.replayed()
        self._seen.update(dict.fromkeys(recent, now))
        lost = {partition for partition in taken if partition not in self._leases.held}
        gone: set[str] = set()  # alerts of partitions lost meanwhile
        if lost:
            for partition in lost:
                gone |= set(self._forget(partition, scratch))
            gone |= {s.fingerprint for s in states if self._partition_of(s, rules) in lost}
        kept = taken - lost
        # Alerts of a partition lost earlier and taken back are this replica's to write again,
        # also those the bucket does not hold (their state never reached it).
        for fp, partition in list(self._revoked.items()):
            if partition in kept:
                del self._revoked[fp]
        self.engine.adopt(scratch, now)
        for fp, events in outboxes.items():
            if fp not in gone:
                self._outbox[fp] = events
                self._dirty[fp] = None
        for out in outputs:
            if gone:
                out.events = [e for e in out.events if e.fingerprint not in gone]
                out.changed = {fp: None for fp in out.changed if fp not in gone}
            self._handle(out, None)
        if self._dirty:
            self._wake.set()
        self._judged |= kept
        # What people did to their alerts while nobody judged them, read back now that the
        # running engine holds them (live ones from here on apply to it as they come).
        self._read_back_actions(self._taken_until(states, kept, previous, poll, rules), "takeover")
        self.handovers.labels(change="acquired").inc(len(kept))
        self.replayed.labels(mode="warm").inc(counts["warm"])
        self.replayed.labels(mode="judged").inc(counts["judged"])
        truncated = read.truncated or ("buffer" if buffered.overflow else None)
        if truncated is None and read.trimmed:
            truncated = "oldest"
        self.replays.labels(result="truncated" if truncated else "complete").inc()
        extra: dict[str, Any] = {
            "replica": self.replica_id,
            "partitions": ",".join(sorted(kept)),
            "alerts": len(states),
            "history_from": round(server_now - start, 1),
            "history_read": read.messages,
            "warm": counts["warm"],
            "judged": counts["judged"],
            "live": counts["live"],
            "baselines": baselines,
            "seconds": round(time.monotonic() - started, 3),
        }
        if lost:
            extra["lost_meanwhile"] = ",".join(sorted(lost))
        if truncated:
            extra["truncated"] = truncated
            log.warning("partitions taken; their history was cut short", extra=extra)
        else:
            log.info("partitions taken", extra=extra)

    async def _snapshot_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(BASELINE_EVERY)
            try:
                await self._snapshot_baselines()
            except Exception as exc:  # NATS away: the next round writes them
                self.kv_failures.inc()
                log.warning("anomaly baselines not written", extra={"reason": str(exc) or type(exc).__name__})

    async def _snapshot_baselines(self) -> None:
        """Write the anomaly baselines of each partition judged here (``baseline.<name>``)."""
        if self._judged is None or self._kv is None or not any(r.kind == "anomaly" for r in self.rules):
            return
        for partition in sorted(self._judged - {FLEET_PARTITION}):
            if partition in self._judged:
                await self._write_baselines(partition, self._baselines_of(partition))

    def _baselines_of(self, partition: str) -> BaselineSnapshot | None:
        """The anomaly baselines of ``partition`` as the engine holds them now (``None``: none)."""
        if partition == FLEET_PARTITION or not any(r.kind == "anomaly" for r in self.rules):
            return None
        rules = self.engine.baselines(partial(self._in_partition, partition))
        return BaselineSnapshot(time=self._clock(), rules=rules) if rules else None

    async def _write_baselines(self, partition: str, snapshot: BaselineSnapshot | None) -> None:
        if snapshot is None or self._kv is None:
            return
        data = msgspec.json.encode(snapshot)
        if len(data) > BASELINE_MAX_BYTES:
            log.warning(
                "anomaly baselines of a partition too large to write; they start afresh on a new owner",
                extra={"partition": partition, "bytes": len(data)},
            )
            return
        await self._kv.put(BASELINE_PREFIX + partition, data)

    async def _hand_over_baselines(self, partition: str, snapshot: BaselineSnapshot | None) -> None:
        """Write ``partition``'s baselines as judging it ends, before its lease is given up: the
        next owner starts from every sample this replica saw (not the last 30 s snapshot)."""
        try:
            await self._write_baselines(partition, snapshot)
        except Exception as exc:  # the next owner reads the stream from the older snapshot on
            self.kv_failures.inc()
            log.warning(
                "anomaly baselines not handed over",
                extra={"partition": partition, "reason": str(exc) or type(exc).__name__},
            )

    def _replay_parts(
        self, subject: str, scope: Scope, stored: float, judged_until: dict[str, float]
    ) -> list[tuple[Scope, bool]]:
        """How a payload of the history is fed: per part of ``scope`` (the partition of its
        host, and ``fleet``), whether it only warms (the previous holder judged it)."""
        host = self._token_partition(subject.rpartition(".")[2])
        if scope == "host":
            return [("host", stored <= judged_until[host])]
        fleet = stored <= judged_until[FLEET_PARTITION]
        if scope == "fleet":
            return [("fleet", fleet)]
        hosts = stored <= judged_until[host]
        return [("all", hosts)] if hosts == fleet else [("host", hosts), ("fleet", fleet)]

    def _forget(self, partition: str, engine: Engine | None = None) -> dict[str, AlertState]:
        engine = engine or self.engine
        if partition == FLEET_PARTITION:
            return engine.forget(lambda host: False, fleet=True)
        return engine.forget(lambda host: self._host_partition(host) == partition, fleet=False)

    async def _release(self, partition: str) -> None:
        """Give ``partition`` to the replica that should hold it: stop judging it, write what
        was decided for it, then delete the lease (the other takes it at its next poll)."""
        assert self._leases is not None and self._judged is not None
        self._judged.discard(partition)
        baselines = self._baselines_of(partition)  # every sample judged here, and no later one
        leaving = self._forget(partition)
        for fp, state in leaving.items():
            if fp in self._dirty or fp == self._flushing:
                self._leaving[fp] = state
        while any(fp in self._leaving for fp in leaving):
            if partition not in self._leases.held:  # lapsed meanwhile
                return
            await asyncio.sleep(0.05)
        for fp in leaving:
            self._revisions.pop(fp, None)
            self._unconfirmed.pop(fp, None)
        await self._hand_over_baselines(partition, baselines)
        await self._leases.release(partition)
        self.handovers.labels(change="released").inc()
        log.info("partition given up", extra={"replica": self.replica_id, "partition": partition})

    def _lose(self, partitions: list[str], reason: str) -> None:
        """Stop judging ``partitions`` at once and never write their states again: another
        replica may hold them already. Nothing is published."""
        assert self._leases is not None and self._judged is not None
        for partition in partitions:
            self._leases.drop(partition)
            self._judged.discard(partition)
            gone = set(self._forget(partition))
            gone |= {fp for fp, state in self._leaving.items() if self._partition_of_fp(state) == partition}
            for fp in gone:
                self._revoked[fp] = partition
                self._revisions.pop(fp, None)
                self._unconfirmed.pop(fp, None)
                self._dirty.pop(fp, None)
                self._outbox.pop(fp, None)
                self._leaving.pop(fp, None)
            self.handovers.labels(change="lost").inc()
            log.warning(
                "partition lost: %s", reason, extra={"replica": self.replica_id, "partition": partition}
            )

    def _partition_of_fp(self, state: AlertState) -> str:
        return self._partition_of(state, {rule.name: rule for rule in self.rules})

    async def _release_all(self) -> None:
        """At a clean stop, after everything decided is written: free every lease and the
        announcement, so the other replicas take over at their next poll."""
        if self._leases is None:
            return
        try:
            for partition in list(self._leases.held):
                await self._hand_over_baselines(partition, self._baselines_of(partition))
                await self._leases.release(partition)
            await self._leases.withdraw()
        except Exception as exc:
            log.warning(
                "leases not released; the other replicas take over when they expire",
                extra={"reason": str(exc) or type(exc).__name__},
            )

    # Evaluation --------------------------------------------------------------------------

    async def _on_payload(self, msg: Msg) -> None:
        arrived = time.monotonic()
        if self._judged is not None and arrived - self._yielded > YIELD_EVERY:
            await asyncio.sleep(0)
            self._yielded = arrived = time.monotonic()
        buffered = self._buffered
        if buffered is not None and self._replay_scope(msg.subject, buffered.partitions) is not None:
            # A partition being taken: judged once its history is read (see `_take`).
            buffered.add(msg.subject, msg.data, self._clock())
        # Another replica's host is skipped before its payload is decoded: the subject names
        # the host (a payload naming another host than its subject is dropped below).
        scope = self._scope(msg.subject)
        if scope is None:
            return
        kind = self.subjects.kind_of(msg.subject)
        key = hash((msg.subject, msg.data))
        if key in self._seen:  # judged already: a publisher's retry (see `JUDGED_KEEP`)
            self.duplicate_batches.labels(kind=kind).inc()
            return
        now = self._clock()
        payload = self._decode(msg.subject, msg.data)
        if payload is None:
            return
        out = _feed(self.engine, payload, now, scope)
        self._seen[key] = now
        if kind != "events":
            self._last_live[msg.subject] = now
        self.batches.labels(kind=kind).inc()
        self._handle(out, arrived)

    def _decode(
        self, subject: str, data: bytes, *, report: bool = True
    ) -> MetricBatch | EventBatch | AgentStatus | None:
        """The payload on ``subject``; ``None`` (counted and logged when ``report``) when it
        does not match the contract."""
        kind = self.subjects.kind_of(subject)
        payload: MetricBatch | EventBatch | AgentStatus
        try:
            if kind == "metrics":
                payload = decode(data, MetricBatch)
            elif kind == "events":
                payload = decode(data, EventBatch)
            else:
                payload = decode(data, AgentStatus)
            expected = f"{self.subjects.prefix}.{kind}.{subject_token(payload.host)}"
            if subject != expected:
                # The bus lets an agent publish on its own host's subjects only; a payload that
                # names another host would raise and resolve that host's alerts.
                raise PayloadError(f"payload host {payload.host!r} belongs on {expected}, not {subject}")
        except PayloadError as exc:
            if report:
                self.invalid_batches.inc()
                log.warning("dropped invalid payload", extra={"subject": subject, "reason": str(exc)})
            return None
        return payload

    def tick(self, now: float) -> None:
        """Advance time to ``now`` (``for`` expiry, absence, sliding windows)."""
        self._handle(self.engine.tick(now), None)

    async def _on_action(self, msg: Msg) -> None:
        try:
            action = decode(msg.data, AlertAction)
        except PayloadError as exc:
            self.invalid_batches.inc()
            log.warning("dropped invalid alert action", extra={"subject": msg.subject, "reason": str(exc)})
            return
        self._handle(self.engine.action(action, self._clock()), None)

    def _written_until(self, states: Iterable[AlertState]) -> float | None:
        """From when (the server's clock) the actions on ``states`` may not have been applied
        by whoever wrote them last: its newest decision among them (it ran until then at
        least, and had applied every action it received before). None when none of them
        fires: an action changes only a firing alert."""
        states = list(states)
        if not any(state.status == "firing" for state in states):
            return None
        return max(_decided_at(state) for state in states) - self._clock_offset

    def _taken_until(
        self,
        states: list[AlertState],
        kept: set[str],
        previous: dict[str, Entry | None],
        poll: float,
        rules: dict[str, Rule],
    ) -> float | None:
        """:meth:`_written_until` for the states of the partitions taken (``kept``): a
        partition whose holder's lease was left behind (it died) was judged until its last
        renewal less a poll; one given up cleanly (no lease left) had its states written at
        its release."""
        held: dict[str, list[AlertState]] = {}
        for state in states:
            if (partition := self._partition_of(state, rules)) in kept:
                held.setdefault(partition, []).append(state)
        until: list[float] = []
        for partition, group in held.items():
            entry = previous.get(partition)
            written = self._written_until(group)
            if written is not None:
                until.append(entry.stored - poll if entry is not None else written)
        return min(until, default=None)

    def _read_back_actions(self, since: float | None, after: str) -> None:
        """Have people's actions stored from ``since`` (the server's clock) on read back and
        applied (:meth:`_actions_missed`), in the background: now, or right after the read
        under way, in one read with what it still waits for. Nothing when ``since`` is None
        (nothing fires)."""
        if since is None or self._js is None or self._stopping:
            return
        self._track_task(self._action_reads.ask(since, after))

    def _track_task(self, task: asyncio.Task[None] | None) -> None:
        """Keep ``task`` among those :meth:`stop` ends."""
        if task is not None:
            self._tasks = [t for t in self._tasks if not t.done()] + [task]

    async def _actions_missed(self, since: float, after: str) -> None:
        """Read back the people's actions the alerts stream stored from ``since`` less
        :data:`ACTIONS_MARGIN` on and apply them to the running engine, oldest first.

        They reach the evaluator live on a core subscription, which delivers nothing to a
        replica that is not running, not connected, or not yet holding the alert's
        partition: a resolve made then would be lost and the alert fire on. Read back, they
        are applied as live ones are (:meth:`Engine.action`: what was applied already
        changes nothing, and of acks and unacks the newest stands). The stream may be
        electing a leader (after a NATS node died): the read is tried again until
        :data:`ACTIONS_READ_LIMIT`, then given up with a warning."""
        assert self._js is not None
        js = self._js
        actions: list[AlertAction] = []
        read = replay.Read()

        async def once(deadline: float) -> None:
            nonlocal read
            read = replay.Read()
            actions.clear()
            reader = replay.read_actions(
                js,
                self.subjects.alerts_stream,
                self.subjects.actions,
                since - ACTIONS_MARGIN,
                seconds=max(0.0, deadline - time.monotonic()),
                result=read,
            )
            async with contextlib.aclosing(reader):
                async for data, _stored in reader:
                    with contextlib.suppress(PayloadError):  # counted when it came live
                        actions.append(decode(data, AlertAction))

        failed = await self._retried(once, ACTIONS_READ_LIMIT)
        if failed is not None:
            log.warning(
                "alert actions not read back: an ack or resolve made while no evaluator received it "
                "is not applied",
                extra={"after": after, "reason": str(failed) or type(failed).__name__},
            )
        if failed is not None or self._stopping:
            return
        outputs, changed = self._apply_actions(self.engine, actions, self._clock())
        for out in outputs:
            self._handle(out, None)
        extra = {"after": after, "read": len(actions), "alerts_changed": changed}
        if read.truncated:
            log.warning("alert actions read back only in part", extra={**extra, "truncated": read.truncated})
        elif changed:
            log.info("applied alert actions no evaluator had received", extra=extra)

    async def _retried(self, read: Callable[[float], Awaitable[None]], limit: float) -> Exception | None:
        """Run ``read(deadline)`` (``deadline`` on the monotonic clock) until it completes, again
        every 0.5 s while it raises (a stream electing its leader after a NATS node died), for
        up to ``limit`` seconds: None once it completed (or the service stops), else its last
        error."""
        deadline = time.monotonic() + limit
        while not self._stopping:
            try:
                await read(deadline)
                return None
            except Exception as exc:
                if time.monotonic() >= deadline:
                    return exc
                await asyncio.sleep(0.5)
        return None

    def _apply_actions(
        self, engine: Engine, actions: list[AlertAction], now: float
    ) -> tuple[list[Output], int]:
        """Apply actions read back to ``engine``, in order: what they decided, and how many
        alerts they changed (those applied live already change nothing)."""
        before: dict[str, AlertState | None] = {}
        outputs: list[Output] = []
        for action in actions:
            fp = action.fingerprint or action.alert_id.rpartition(":")[0]
            before.setdefault(fp, engine.states.get(fp))
            _keep(outputs, engine.action(action, now))
        changed = sum(1 for fp, state in before.items() if engine.states.get(fp) != state)
        self.missed_actions.inc(changed)
        return outputs, changed

    def _handle(self, out: Output, arrived: float | None) -> None:
        """Queue what the engine decided: events to the outbox, changed states to storage."""
        for event in out.events:
            self._outbox.setdefault(event.fingerprint, []).append(event)
            if arrived is not None:
                self._arrivals[_msg_id(event)] = arrived
        for fp in out.changed:
            self._dirty[fp] = None
        if out.changed:
            self._wake.set()
        if out.rejected:
            self.rejected_samples.inc(out.rejected)
        if out.before_resolve:
            self.before_resolve.inc(out.before_resolve)
        for rule, count in out.series_dropped.items():
            self.series_dropped.labels(rule=rule).inc(count)
        for rule in out.limit_reached:
            self._report_series_limit(rule)
        for rule, key in out.template_errors:
            self.template_errors.labels(rule=rule).inc()
            log.warning(
                "annotation template failed; sent the raw template", extra={"rule": rule, "annotation": key}
            )

    def _report_series_limit(self, rule: str) -> None:
        limit = next((r.max_series for r in self.rules if r.name == rule), None) or self.engine.max_series
        message = (
            f"rule {rule} tracks {limit} series, its limit; samples of new series are dropped "
            "(a label with unbounded values?). Raise max_series or narrow the rule's `where`."
        )
        log.warning("series limit reached", extra={"rule": rule, "limit": limit})
        if self._nc is None or self._nc.is_closed:
            return
        host = socket.gethostname() or "evaluator"
        batch = EventBatch(
            host=host,
            time=self._clock(),
            events=[Event(type="evaluator.series_limit", message=message, labels={"rule": rule})],
        )
        task = asyncio.ensure_future(self._nc.publish(self.subjects.events(host), encode(batch)))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _tick_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(float(self.config.tick_interval))
            now = self._clock()
            self._expire_leases()
            self._watch_sight(now)
            self.tick(now)

    def _watch_sight(self, now: float) -> None:
        """Tell the engine when the bus goes out of sight and when it is back (checked each
        tick, so a connection shared with others works the same). While disconnected, agents
        buffer and later replay; after a reconnect, what arrived meanwhile is evaluated first
        (up to :data:`CATCH_UP_LIMIT`). Only then does time alone decide again (absence,
        ``for``, ``keep_firing_for``), counting from now."""
        nc = self._nc
        if nc is None:
            return
        connected = nc.is_connected
        reconnects = nc.stats["reconnects"]
        if connected and reconnects == self._reconnects:
            self._in_sight_at = now
            self._forget_seen(now)
            if now - self._swept_at >= 60.0:
                self._sweep_live(now)
        if not connected or reconnects != self._reconnects:  # down, or down and back since
            if not self.engine.blind:
                self.engine.disconnected()
                log.warning("NATS out of sight: absence and `for` not judged until it is back and caught up")
            if not connected:
                self._catch_up_from = None
                return
            self._reconnects = reconnects
            self._catch_up_from = now
            if self._in_sight_at is not None:
                self._missed(self._in_sight_at, now)
        if self.engine.blind and self._catch_up_from is not None:
            backlog = sum(sub.pending_msgs for sub in self._subs[:3])  # metrics, events, agents
            waited = now - self._catch_up_from
            if backlog <= CATCH_UP_BACKLOG or waited >= CATCH_UP_LIMIT:
                self.engine.reconnected(now)
                self._catch_up_from = None
                log.info(
                    "NATS in sight again: absence and `for` judged again, counting from now",
                    extra={"backlog": backlog, "caught_up_after": round(waited, 3)},
                )

    def _sweep_live(self, now: float) -> None:
        """Forget subjects too old for any catch-up to need."""
        self._swept_at = now
        self._last_live = {s: t for s, t in self._last_live.items() if t >= now - LIVE_SUBJECTS_KEEP}

    def _forget_seen(self, now: float) -> None:
        """Forget the payloads judged more than ``JUDGED_KEEP`` ago: each tick, oldest first,
        so only those are visited (a tick's worth, not a minute's in one go)."""
        seen, until = self._seen, now - JUDGED_KEEP
        for key in [key for key, _ in itertools.takewhile(lambda item: item[1] < until, seen.items())]:
            del seen[key]

    def _missed(self, since: float, until: float) -> None:
        """Have what the bus stored from ``since`` to ``until`` judged (:meth:`_catch_up`):
        now, or right after the catch-up under way, in one window with what it still waits for."""
        if self._js is None or self._stopping:
            return
        self._track_task(self._catch_ups.ask(since, until))

    async def _catch_up(self, since: float, until: float) -> None:
        """Judge what the metrics stream stored while this replica's connection was away.

        Payloads come on core NATS subscriptions, which deliver nothing to a connection that
        is down: after a NATS node's death the replica reconnects to another within a second,
        and the batches stored meanwhile (agents on other nodes publish on) would never be
        judged; a spike or a burst of events in them would go unalerted. They are read back
        from ``since`` (the last tick the bus was in sight) less :data:`MISSED_MARGIN` to
        ``until`` (the tick that saw the reconnect), on the server's clock, and judged now,
        oldest first, but for what was judged live: a metric batch or agent status not newer
        than its subject's last live one (received, or superseded: judging an older value
        after a newer one would undo it) and an event batch judged live (remembered by its
        bytes). A replica taking a partition over reads its history itself (`_take`)."""
        offset = self._clock_offset  # this clock minus the server's (0 until measured)
        # `since` is a tick old at most when the connection dropped
        margin = MISSED_MARGIN + float(self.config.tick_interval)
        start, end = since - offset - margin, until - offset + MISSED_MARGIN
        assert self._js is not None
        js = self._js
        counts = {"judged": 0, "skipped": 0}
        read = replay.Read()

        async def once(deadline: float) -> None:
            nonlocal read
            read = replay.Read()
            history = replay.read_window(
                js,
                self.subjects.metrics_stream,
                start,
                end,
                wanted=lambda subject: self._scope(subject) is not None,
                seconds=max(0.0, deadline - time.monotonic()),
                result=read,
            )
            async with contextlib.aclosing(history):
                # A read cut short is read again whole: what it judged the first time is
                # skipped as judged live is (`_judge_missed` notes it).
                async for subject, data, stored in history:
                    if self._judge_missed(subject, data, stored + offset):
                        counts["judged"] += 1
                    else:
                        counts["skipped"] += 1

        failed = await self._retried(once, MISSED_READ_LIMIT)
        if failed is not None:
            read.truncated = "error"
            log.warning(
                "what the bus stored while NATS was out of sight was not read back",
                extra={"reason": str(failed) or type(failed).__name__, "judged": counts["judged"]},
            )
        self.replayed.labels(mode="missed").inc(counts["judged"])
        if any(state.status == "firing" for state in self.engine.states.values()):
            self._read_back_actions(since - offset, "reconnect")
        # skipped: judged live already, or not this replica's (anymore)
        extra = {"seconds": round(end - start, 1), "read": read.messages, **counts}
        if read.truncated:
            log.warning(
                "judged what the bus stored while NATS was out of sight; the read was cut short",
                extra={**extra, "truncated": read.truncated},
            )
        else:
            log.info("judged what the bus stored while NATS was out of sight", extra=extra)

    def _judge_missed(self, subject: str, data: bytes, stored: float) -> bool:
        """Judge a payload read back after a reconnect (``stored`` on this clock) unless it was
        judged live; whether it was judged now."""
        scope = self._scope(subject)
        if scope is None:  # its partition given up meanwhile
            return False
        now = self._clock()
        kind = self.subjects.kind_of(subject)
        key = hash((subject, data))
        if key in self._seen:
            return False
        if kind != "events":
            last = self._last_live.get(subject)
            if last is not None and last >= stored - MISSED_SLACK:
                return False
            self._last_live[subject] = stored  # judged: a later catch-up skips it, not newer ones
        self._seen[key] = now  # judged: not again by a later catch-up or a publisher's retry
        payload = self._decode(subject, data, report=False)
        if payload is None:
            return False
        self._handle(_feed(self.engine, payload, now, scope), None)
        self.batches.labels(kind=kind).inc()
        return True

    def _count(self, status: str) -> int:
        return sum(1 for state in self.engine.states.values() if state.status == status)

    # Delivery ----------------------------------------------------------------------------

    async def _deliver(self) -> None:
        """The one writer: persists states and publishes their events, in decision order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                fp = next(iter(self._dirty))
                del self._dirty[fp]
                self._flushing = fp
                flushed = await self._flush(fp)
                self._flushing = None
                if not flushed:
                    self._dirty[fp] = None  # keep it for the next start
                    return
            if self._stopping:
                return

    def _state(self, fp: str) -> AlertState | None:
        """The state to write for ``fp``: the engine's, or one just given to another replica."""
        return self.engine.states.get(fp) or self._leaving.get(fp)

    async def _flush(self, fp: str) -> bool:
        """Persist ``fp``'s state and publish its outbox. ``False`` when stopping cut it short."""
        if not await self._write(fp):
            return False
        self._leaving.pop(fp, None)
        return True

    async def _write(self, fp: str) -> bool:
        outbox = self._outbox.get(fp)
        if outbox:
            # The intent first: a crash from here on re-publishes, and the stream de-duplicates.
            if self._state(fp) is not None and not await self._retry("kv", lambda: self._put(fp)):
                return False
            # Only while this outbox is still the alert's: its partition lost meanwhile (the
            # outbox dropped unwritten) and taken back, the alert was judged afresh from the
            # bucket and the history, and its new outbox is the one to publish, not this one.
            while outbox and self._outbox.get(fp) is outbox and fp not in self._revoked:
                if not await self._publish(outbox[0]):
                    return False
                outbox.pop(0)
            if self._outbox.get(fp) is outbox:
                del self._outbox[fp]
        if fp in self._revoked:
            return True  # another replica holds it now: its state is that replica's to write

        async def delete() -> None:
            if fp not in self._revoked:
                await self._compare_and_set(fp, None)

        if self._state(fp) is None:
            return await self._retry("kv", delete)
        return await self._retry("kv", lambda: self._put(fp))

    async def _put(self, fp: str) -> None:
        state = self._state(fp)
        if state is None or fp in self._revoked:
            return
        record = StoredAlert(state=state, outbox=list(self._outbox.get(fp, [])))
        await self._compare_and_set(fp, msgspec.json.encode(record))

    async def _compare_and_set(self, fp: str, data: bytes | None) -> None:
        """Write ``fp``'s entry (delete it: ``data`` None) only if it is still the revision this
        replica last wrote or read. A write refused so is another writer's change: a replica
        that lost the partition, whose write the NATS client had buffered through a
        disconnection and sent once it was back, or the replica that holds it now. Then this
        one drops the partition (:meth:`_conflict`) and, if it is still its own, takes it
        again from the bucket, rather than overwrite the newer state."""
        assert self._kv is not None
        revision = self._revisions.get(fp)
        earlier = [self._unconfirmed[fp]] if fp in self._unconfirmed else []
        self._unconfirmed[fp] = data
        try:
            if data is None:
                await delete_if(self._kv, fp, revision)
            elif revision:
                written = await self._kv.update(fp, data, last=revision)
            else:
                written = await self._kv.create(fp, data)
        except KeyWrongLastSequenceError:
            await self._conflict(fp, data, earlier)
            return
        del self._unconfirmed[fp]
        if data is None:
            self._revisions.pop(fp, None)
        else:
            self._revisions[fp] = written

    async def _conflict(self, fp: str, data: bytes | None, earlier: list[bytes | None]) -> None:
        """A compare-and-set of ``fp`` refused: adopt the entry if it is what this replica
        wrote (``data``, or an ``earlier`` attempt whose answer was lost), else drop the
        partition (with one evaluator alone, whose partition nobody else may hold, the write
        is made over the entry, as before)."""
        assert self._kv is not None
        try:
            current = await self._kv.get(fp)
        except (KeyNotFoundError, KeyDeletedError):
            current = None
        value = current.value if current is not None else None
        if value == data or value in earlier:
            if current is None:
                self._revisions.pop(fp, None)
            elif current.revision:
                self._revisions[fp] = current.revision
            self._unconfirmed.pop(fp, None)
            if value != data:
                await self._compare_and_set(fp, data)  # the write after the earlier one
            return
        self.state_conflicts.inc()
        theirs = None
        if value:
            with contextlib.suppress(PayloadError):
                theirs = decode(value, StoredAlert).state
        state = self._state(fp) or theirs
        if self._leases is None or state is None:
            log.warning(
                "alert state changed by another writer; written over (run one evaluator without "
                "partitions, or give every replica the same partitions)",
                extra={"fingerprint": fp},
            )
            if data is None:
                await self._kv.delete(fp)
                self._revisions.pop(fp, None)
            else:
                self._revisions[fp] = await self._kv.put(fp, data)
            self._unconfirmed.pop(fp, None)
            return
        partition = self._partition_of_fp(state)
        log.warning(
            "alert state changed by another writer: partition dropped, to be taken again from the bucket",
            extra={"replica": self.replica_id, "partition": partition, "fingerprint": fp},
        )
        self._lose([partition], "its alert state was written by another replica")

    async def _publish(self, event: AlertEvent) -> bool:
        assert self._write_js is not None
        js = self._write_js
        msg_id = _msg_id(event)
        subject = self.subjects.alerts(event.host)
        payload = encode(event)
        acks: list[Any] = []

        async def send() -> None:
            acks.append(await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}))

        if not await self._retry("publish", send):
            return False
        if acks and getattr(acks[-1], "duplicate", False):
            self.duplicates.inc()
        else:
            self.alert_events.labels(status=event.status).inc()
        arrived = self._arrivals.pop(msg_id, None)
        if arrived is not None:
            self.latency.observe(time.monotonic() - arrived)
        log.info(
            "alert %s",
            event.status,
            extra={"rule": event.rule, "host": event.host, "alert_id": event.id, "value": event.value},
        )
        return True

    async def _retry(self, what: Literal["kv", "publish"], attempt: Callable[[], Awaitable[object]]) -> bool:
        """Run ``attempt`` until it succeeds, backing off; gives up only while stopping."""
        counter = self.kv_failures if what == "kv" else self.publish_failures
        delay = RETRY_BACKOFF.first
        failures = 0
        while True:
            try:
                await attempt()
                return True
            except Exception as exc:  # any NATS/JetStream error is worth another try
                counter.inc()
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "alert %s failed; retrying",
                        "state write" if what == "kv" else "publish",
                        extra={"reason": str(exc) or type(exc).__name__, "attempts": failures},
                    )
                if self._stopping and failures >= 3:
                    return False
                await asyncio.sleep(delay)
                delay = RETRY_BACKOFF.delay(delay)

    # Control -----------------------------------------------------------------------------

    async def _on_rules_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        await msg.respond(msgspec.json.encode(self.describe()))

    async def _on_reload_request(self, msg: Msg) -> None:
        result = await self.reload()
        if msg.reply:
            await msg.respond(msgspec.json.encode(result))

    def describe(self) -> dict[str, Any]:
        """The loaded rules, each with its pending and firing alerts (the control reply)."""
        active: dict[str, list[dict[str, Any]]] = {}
        for state in self.engine.states.values():
            if state.status != "inactive":
                active.setdefault(state.rule, []).append(
                    {
                        "fingerprint": state.fingerprint,
                        "status": state.status,
                        "alert_id": state.alert_id if state.status == "firing" else None,
                        "host": state.host,
                        "labels": {**state.context, **state.labels},
                        "value": state.value,
                        "active_since": state.active_since,
                        "fired_at": state.fired_at,
                        "flapping": state.flapping,
                        "acked_by": state.acked_by,
                    }
                )
        replica = None
        if self._judged is not None:
            replica = {
                "id": self.replica_id,
                "partitions": self.config.partitions,
                "judged": sorted(self._judged),
            }
        return {
            "replica": replica,
            "rules": [
                {
                    **rule.describe(),
                    "series": self.engine.series_count(rule.name),
                    "alerts": active.get(rule.name, []),
                }
                for rule in self.rules
            ],
            "last_reload": self.last_reload or None,
        }


def _feed(
    engine: Engine, payload: MetricBatch | EventBatch | AgentStatus, now: float, scope: Scope
) -> Output:
    if isinstance(payload, MetricBatch):
        return engine.metrics(payload, now, scope)
    if isinstance(payload, EventBatch):
        return engine.events(payload, now, scope)
    return engine.agent(payload, now, scope)


def _keep(outputs: list[Output], out: Output) -> None:
    """Append ``out`` unless it decided nothing (most payloads of a history do not)."""
    decided = out.events or out.changed or out.rejected or out.before_resolve
    if decided or out.series_dropped or out.limit_reached or out.template_errors:
        outputs.append(out)


def _decided_at(state: AlertState) -> float:
    """The last time the replica that stored ``state`` decided on it (its last sample, or
    transition): a payload stored at or before it was judged already."""
    times = (state.last_seen, state.active_since, state.fired_at, state.resolved_at, state.clearing_since)
    return max((t for t in times if t is not None), default=-math.inf)


def _msg_id(event: AlertEvent) -> str:
    return f"{event.id}:{event.status}"


def _host_replica_id() -> str:
    """The replica id an evaluator wants when none is set: its host name."""
    return _sanitized(socket.gethostname()) or "evaluator"


def _sanitized(name: str) -> str:
    """``name`` with every character a lease key cannot hold replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9_=-]", "-", name)

"""The gateway's configuration (``gateway.yaml``, every field also from ``SF_*`` variables)."""

from __future__ import annotations

from typing import Literal

import msgspec

from signalfire.bus import NatsConfig
from signalfire.config import Duration
from signalfire.telemetry import parse_listen


class RetentionConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How long each kind of data is kept; ``0s`` keeps it forever."""

    #: Raw samples (and events).
    raw: Duration = Duration(30 * 86400.0)
    #: The 1-minute rollups.
    rollup_1m: Duration = Duration(90 * 86400.0)
    #: The 5-minute rollups.
    rollup_5m: Duration = Duration(180 * 86400.0)
    #: The 1-hour rollups.
    rollup_1h: Duration = Duration(365 * 86400.0)
    #: How often the gateway looks for data to drop (without the Timescale-licensed edition)
    #: and for orphaned batches to repair (every edition; see ``rollup_repair_after``).
    check_every: Duration = Duration(3600.0)

    def __post_init__(self) -> None:
        # A negative keep time is refused by Duration itself (``a duration cannot be negative``).
        if self.check_every <= 0:
            raise ValueError("retention.check_every: must be more than 0s")


#: Pooled connections kept from the range queries for the writers other than the metrics
#: ingest (alert, event and notification consumers, the silences mirror, the API's writes).
QUERY_RESERVED_CONNECTIONS = 2


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the gateway stores data, where it listens, and how it ingests.

    ``SF_DATABASE_URL`` overrides ``database_url`` and ``SF_LISTEN`` overrides ``listen``.
    """

    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    database_url: str = "postgresql://signalfire@127.0.0.1:5432/signalfire"
    #: ``host:port`` of the HTTP API, the live stream and the dashboard.
    listen: str = "127.0.0.1:8080"
    #: Where the first start writes the bootstrap admin API token (mode 0600).
    admin_token_file: str = ".signalfire/admin-token"
    db_pool_size: int = 10
    #: Messages fetched (and written in one transaction) at most per ingest round. Small enough
    #: that one fetch (up to ~8 MB of 1,000-sample batches) is read before NATS gives up on a
    #: busy client; ``ingest_writers`` rounds are in flight at once.
    fetch_batch: int = 200
    #: How long one fetch waits for messages; also bounds how long ``stop()`` waits for a fetch.
    fetch_timeout: Duration = Duration(1.0)
    #: JetStream redelivers an unacknowledged message after this long.
    ack_wait: Duration = Duration(30.0)
    #: A message that could not be stored after this many deliveries is dropped by JetStream.
    max_deliver: int = 10
    #: Longest pause between retries while the database or NATS is unreachable.
    max_backoff: Duration = Duration(30.0)
    #: A host that reported no interval is ``down`` after this long without data
    #: (hosts that report their interval are down after three missed intervals).
    host_down_after: Duration = Duration(30.0)
    #: The most points one ``/api/v1/query`` answer may hold.
    query_max_points: int = 200_000
    #: Database connections one range query over many series uses at once (its series dealt
    #: among that many statements, at least 32 series each): PostgreSQL runs a statement on one
    #: core. 1: one statement. All the range queries and exports of a process together use no
    #: more than :attr:`query_connections`.
    query_parallelism: int = 2
    #: Database transactions writing ingested batches at once (each one a large ``COPY``), per
    #: ingesting process.
    ingest_writers: int = 2
    #: Ingest worker processes (``signalfire gateway --workers N``): 0 ingests in the API's own
    #: process; N > 0 starts N processes that ingest while this one serves the API, maintenance
    #: and the silences mirror (docs/scaling.md, "Gateway ingest workers").
    ingest_workers: int = 0
    #: With ingest workers each takes a share of the hosts through a consumer of its own,
    #: named by the number of workers (``gateway-metrics-2of3``). Those of another number (the
    #: setting changed) that no process has read for this long (no pull waiting, nothing
    #: delivered or acknowledged, as each ingesting process sees them) are removed by the
    #: gateways running now, which took over from where they had stored (docs/scaling.md).
    ingest_prune_after: Duration = Duration(120.0)
    #: How long a metrics round that is not full waits for more messages before it is written,
    #: counted from when its oldest message reached JetStream: one transaction then carries every
    #: batch of that time (a commit, a ``hosts`` upsert and the rollups' bookkeeping per round,
    #: not per batch). 100 ms: rounds of ~7 batches instead of ~2 at 60,000 samples/s, the whole
    #: ingest path ~10 % cheaper per sample. 250 ms made rounds of ~19 and the path cheaper
    #: still, but under a loaded machine a round's write grew with its size and publish→commit
    #: p99 rose past 2 s (``bench/ingest.py``, docs/benchmarks.md). 0: write what one fetch brought.
    ingest_linger: Duration = Duration(0.1)
    #: How often the rollups of ingested samples are merged (many rounds at once); at most a
    #: third of ``ack_wait`` is used, since messages are acknowledged after their merge. Every
    #: merge is an upsert per series and bucket: 10 s instead of 5 s took PostgreSQL's CPU per
    #: million samples from 6.5 to 5.0 s in ``bench/ingest.py`` (docs/benchmarks.md).
    rollup_flush: Duration = Duration(10.0)
    #: When the waiting rollups are merged: ``minute`` (the default), by every flush once their
    #: minute has ended (5 s ago), so each 1-minute row is written once (their messages are
    #: acknowledged then, and kept in progress meanwhile); ``flush``, everything waiting at
    #: every ``rollup_flush``: fresher rows, each written up to 60 s / ``rollup_flush`` times
    #: (queries read the last minutes from the raw samples either way).
    rollup_merge: Literal["minute", "flush"] = "minute"
    #: A batch stored this long ago whose rollups are still not merged is an orphan: its
    #: message will not come back (``max_deliver`` used up, or the stream discarded it), so
    #: maintenance recomputes the rollups it is missing from the raw samples. At least
    #: ``ack_wait`` * ``max_deliver``, the longest a stored batch can wait for its redelivery.
    rollup_repair_after: Duration = Duration(3600.0)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    #: Origins a browser may call the API from (``*`` for any); empty: no CORS headers.
    cors_origins: list[str] = msgspec.field(default_factory=list)
    #: Requests per second one token may make on average (bursts up to ``rate_burst``); 0: no limit.
    rate_limit: float = 50.0
    rate_burst: int = 200
    #: Failed authentications (401s) per second one client address may make on average
    #: (bursts up to ``auth_failure_burst``); beyond that its requests are answered 429, except
    #: those with a token that authenticated at this gateway before. 0: no limit.
    auth_failure_rate: float = 10.0
    auth_failure_burst: int = 20
    #: The largest request body accepted (bytes); larger ones are answered with 413.
    max_body_bytes: int = 4 << 20
    #: How long a request to another service (e.g. the evaluator's rules) may take.
    control_timeout: Duration = Duration(2.0)
    #: How far back a reconnecting dashboard tab can resume the live stream without a reload.
    stream_ring_seconds: Duration = Duration(300.0)
    #: How often the tokens of open live streams are checked; a stream whose token was revoked
    #: elsewhere (the CLI, another replica) or deleted ends within this long.
    stream_token_recheck: Duration = Duration(5.0)
    #: How long an alert action made through the API waits for the gateway's consumer to
    #: store it, so the answer shows it; an action not stored by then is answered 202
    #: (published, being applied). A silence change is copied into the table by the API
    #: itself; only when the table refused that does it wait this long for the watch, then
    #: answer 201/200 as the KV bucket holds it.
    apply_wait: Duration = Duration(5.0)
    #: How long an alert action, a silence made or expired, or a batch posted to the ingest
    #: endpoints, through the API, is written again while NATS does not take it (the
    #: connection moving to another node, a JetStream leader being elected after a node died:
    #: seconds); each is stored once however often it was sent (an action by its id, a batch
    #: by an id made of its bytes, a silence by its key). 0: tried once.
    publish_wait: Duration = Duration(15.0)
    log_level: str = "info"
    log_format: Literal["logfmt", "json"] = "logfmt"

    @property
    def query_connections(self) -> int:
        """Pooled connections the range queries and exports of this process may hold at once: the pool
        less what ingest in this process (``ingest_writers`` rounds, with ``ingest_workers``
        0) and the other writers (alerts, events, silences, the API's own writes) need, so a
        burst of fleet charts cannot take every connection while a round waits to commit.
        At least 1."""
        ingest = self.ingest_writers if self.ingest_workers == 0 else 0
        return max(1, self.db_pool_size - ingest - QUERY_RESERVED_CONNECTIONS)

    def __post_init__(self) -> None:
        try:
            parse_listen(self.listen)
        except ValueError as exc:
            raise ValueError(f"listen: {exc}") from None
        for name in (
            "db_pool_size",
            "fetch_batch",
            "max_deliver",
            "query_max_points",
            "query_parallelism",
            "ingest_writers",
            "max_body_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if not 0 <= self.ingest_workers <= 64:
            raise ValueError("ingest_workers: must be 0 (ingest in the API process) to 64")
        if float(self.ingest_prune_after) < 3 * float(self.fetch_timeout):
            raise ValueError("ingest_prune_after: must be at least 3 fetch_timeouts (a reader waits one)")
        if self.fetch_timeout <= 0:
            raise ValueError("fetch_timeout: must be more than 0s")
        if not 0 <= self.ingest_linger < float(self.ack_wait) / 3:
            # the round's messages, fetched already, must be stored well within ack_wait
            raise ValueError("ingest_linger: must be at least 0s and less than a third of ack_wait")
        if self.rollup_flush <= 0:
            raise ValueError("rollup_flush: must be more than 0s")
        redelivered_within = float(self.ack_wait) * self.max_deliver
        if self.rollup_repair_after <= 0:
            raise ValueError("rollup_repair_after: must be more than 0s")
        if self.rollup_repair_after < redelivered_within:
            raise ValueError(
                f"rollup_repair_after: must be at least ack_wait * max_deliver ({redelivered_within:g}s), "
                "the longest a stored batch can wait for its redelivery"
            )
        if self.rate_limit < 0:
            raise ValueError("rate_limit: must not be negative")
        if self.rate_burst < 1:
            raise ValueError("rate_burst: must be at least 1")
        if self.auth_failure_rate < 0:
            raise ValueError("auth_failure_rate: must not be negative")
        if self.auth_failure_burst < 1:
            raise ValueError("auth_failure_burst: must be at least 1")
        if self.apply_wait < 0:
            raise ValueError("apply_wait: must not be negative")
        if self.publish_wait < 0:
            raise ValueError("publish_wait: must not be negative")
        if self.stream_token_recheck <= 0:
            raise ValueError("stream_token_recheck: must be more than 0s")
        if not self.database_url:
            raise ValueError("database_url: must not be empty")

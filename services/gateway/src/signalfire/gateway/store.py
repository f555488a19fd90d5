"""Writes what arrives on the bus into PostgreSQL/TimescaleDB.

Every write is idempotent, because JetStream redelivers whatever was not acknowledged:
samples and events go through a staging table (filled with ``COPY``) into tables with unique
indexes and ``ON CONFLICT DO NOTHING``; hosts and alerts are upserts that never let an older
message overwrite a newer one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg
import msgspec

from signalfire.events import AgentStatus, AlertAction, AlertEvent, DeliveryResult, EventBatch, MetricBatch
from signalfire.gateway import rollup

#: (host, metric name, labels as canonical JSON): one stored series.
SeriesKey = tuple[str, str, str]

# Unit suffixes of metric names (``disk.read_bytes_per_second`` → ``bytes_per_second``).
_UNIT_SUFFIXES = (
    "bytes_per_second",
    "per_second",
    "percent",
    "bytes",
    "seconds",
    "ms",
)

_json = msgspec.json.Encoder(order="sorted")


def labels_json(labels: Mapping[str, str]) -> str:
    """Labels as canonical JSON (sorted keys), the form series are keyed by."""
    return _json.encode(labels).decode()


def unit_of(metric: str) -> str:
    """The unit a metric name carries in its suffix, or ``""``."""
    last = metric.rsplit(".", 1)[-1]
    for suffix in _UNIT_SUFFIXES:
        if last == suffix or last.endswith("_" + suffix):
            return suffix
    return ""


class LatestValues:
    """The newest (time, value) of every series seen since start, kept in memory."""

    def __init__(self) -> None:
        self._values: dict[SeriesKey, tuple[float, float]] = {}

    def update(self, key: SeriesKey, time: float, value: float) -> None:
        current = self._values.get(key)
        if current is None or time >= current[0]:
            self._values[key] = (time, value)

    def get(self, key: SeriesKey) -> tuple[float, float] | None:
        return self._values.get(key)

    def items(self) -> Iterable[tuple[SeriesKey, tuple[float, float]]]:
        return self._values.items()

    def __len__(self) -> int:
        return len(self._values)


@dataclass
class MetricsWritten:
    """What one call of :meth:`Store.write_metrics` stored."""

    samples: int = 0
    duplicate_samples: int = 0
    events: int = 0
    new_series: int = 0
    rows: list[tuple[SeriesKey, float, float]] = field(default_factory=list)


_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS samples_in (
    t double precision, series_id bigint, value double precision
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS events_in (
    t double precision, host text, type text, message text, labels text, value double precision
) ON COMMIT DELETE ROWS;
"""

_INSERT_SERIES = """
INSERT INTO series (host, name, labels, unit)
SELECT h, n, l::jsonb, u FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(h, n, l, u)
ON CONFLICT (host, name, labels) DO NOTHING
"""

_SELECT_SERIES = """
SELECT t.i, s.id
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(h, n, l, i)
JOIN series s ON s.host = t.h AND s.name = t.n AND s.labels = t.l::jsonb
"""

_HOST_SEEN = """
INSERT INTO hosts (host, first_seen, last_seen, labels)
VALUES ($1, least(to_timestamp($2), now()), least(to_timestamp($2), now()), $3::jsonb)
ON CONFLICT (host) DO UPDATE SET
    last_seen = greatest(hosts.last_seen, EXCLUDED.last_seen),
    status = CASE WHEN hosts.status_at IS NULL OR EXCLUDED.last_seen > hosts.status_at
                  THEN 'online' ELSE hosts.status END
"""

_HOST_STATUS = """
INSERT INTO hosts AS h (host, first_seen, last_seen, status, status_at, interval, facts, labels)
VALUES ($1, least(to_timestamp($3), now()), least(to_timestamp($3), now()), $2, to_timestamp($3),
        $4, $5::jsonb, $6::jsonb)
ON CONFLICT (host) DO UPDATE SET
    last_seen = greatest(h.last_seen, EXCLUDED.last_seen),
    status = CASE WHEN h.status_at IS NULL OR EXCLUDED.status_at >= h.status_at
                  THEN EXCLUDED.status ELSE h.status END,
    interval = CASE WHEN h.status_at IS NULL OR EXCLUDED.status_at >= h.status_at
                    THEN coalesce(EXCLUDED.interval, h.interval) ELSE h.interval END,
    facts = CASE WHEN h.status_at IS NULL OR EXCLUDED.status_at >= h.status_at
                 THEN EXCLUDED.facts ELSE h.facts END,
    labels = CASE WHEN h.status_at IS NULL OR EXCLUDED.status_at >= h.status_at
                  THEN EXCLUDED.labels ELSE h.labels END,
    status_at = greatest(h.status_at, EXCLUDED.status_at)
"""

# (seq, time) orders the events of one alert; a redelivered or late older event changes nothing.
_UPSERT_ALERT = """
INSERT INTO alerts AS a (id, fingerprint, rule, status, severity, host, labels, annotations, value,
                         threshold, starts_at, ends_at, last_event_at, seq)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, to_timestamp($11), to_timestamp($12),
        to_timestamp($13), $14)
ON CONFLICT (id) DO UPDATE SET
    fingerprint = EXCLUDED.fingerprint, rule = EXCLUDED.rule, status = EXCLUDED.status,
    severity = EXCLUDED.severity, host = EXCLUDED.host, labels = EXCLUDED.labels,
    annotations = EXCLUDED.annotations, value = EXCLUDED.value, threshold = EXCLUDED.threshold,
    starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
    last_event_at = EXCLUDED.last_event_at, seq = EXCLUDED.seq
WHERE (EXCLUDED.seq, EXCLUDED.last_event_at) > (a.seq, a.last_event_at)
"""

_ALERT_HISTORY = """
INSERT INTO alert_history (alert_id, time, event, seq, payload)
VALUES ($1, to_timestamp($2), $3, $4, $5::jsonb)
ON CONFLICT DO NOTHING
"""


_INSERT_SAMPLES = (
    "INSERT INTO samples (time, series_id, value) "
    "SELECT to_timestamp(t), series_id, value FROM samples_in ON CONFLICT DO NOTHING"
)


class _Duplicates(Exception):
    """Some staged samples were stored already: redo the insert reporting which were new."""


def _inserted(status: str) -> int:
    """Rows inserted, from a command status like ``INSERT 0 42``."""
    return int(status.rsplit(" ", 1)[-1])


class Store:
    """Idempotent writes of bus payloads; caches series ids across calls."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._series: dict[SeriesKey, int] = {}

    async def write_metrics(
        self,
        metrics: list[MetricBatch],
        events: list[EventBatch] | None = None,
        statuses: list[AgentStatus] | None = None,
    ) -> MetricsWritten:
        """Store metric batches, event batches and agent statuses in one transaction."""
        events = events or []
        statuses = statuses or []
        written = MetricsWritten()
        for batch in metrics:
            for sample in batch.samples:
                labels = {**batch.labels, **sample.labels} if batch.labels else sample.labels
                when = sample.time if sample.time is not None else batch.time
                written.rows.append(((batch.host, sample.name, labels_json(labels)), when, sample.value))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_CREATE_STAGING)
            new_series = await self._resolve_series(conn, {key for key, _, _ in written.rows})
            if written.rows:
                ids = self._series
                records = [
                    (when, ids[key] if key in ids else new_series[key], value)
                    for key, when, value in written.rows
                ]
                await conn.copy_records_to_table(
                    "samples_in", records=records, columns=["t", "series_id", "value"]
                )
                new_rows = await self._insert_samples(conn, records)
                written.samples = len(new_rows)
                written.duplicate_samples = len(records) - written.samples
                await self._roll_up(conn, new_rows)
            event_records = [
                (
                    event.time if event.time is not None else batch.time,
                    batch.host,
                    event.type,
                    event.message,
                    labels_json({**batch.labels, **event.labels}),
                    event.value,
                )
                for batch in events
                for event in batch.events
            ]
            if event_records:
                await conn.copy_records_to_table(
                    "events_in",
                    records=event_records,
                    columns=["t", "host", "type", "message", "labels", "value"],
                )
                status = await conn.execute(
                    "INSERT INTO events (time, host, type, message, labels, value) "
                    "SELECT to_timestamp(t), host, type, message, labels::jsonb, value FROM events_in "
                    "ON CONFLICT DO NOTHING"
                )
                written.events = _inserted(status)
            seen: dict[str, MetricBatch | EventBatch] = {}
            arrivals: list[MetricBatch | EventBatch] = [*metrics, *events]
            for arrived in arrivals:
                if arrived.host not in seen or arrived.time > seen[arrived.host].time:
                    seen[arrived.host] = arrived
            if seen:
                await conn.executemany(
                    _HOST_SEEN, [(host, b.time, labels_json(b.labels)) for host, b in sorted(seen.items())]
                )
            if statuses:
                await conn.executemany(
                    _HOST_STATUS,
                    [
                        (
                            s.host,
                            s.status,
                            s.time,
                            s.interval,
                            msgspec.json.encode(s.facts).decode(),
                            labels_json(s.labels),
                        )
                        for s in statuses
                    ],
                )
        # Only now: ids of series created by a rolled-back transaction do not exist.
        self._series.update(new_series)
        written.new_series = len(new_series)
        return written

    async def _insert_samples(
        self, conn: asyncpg.Connection, records: list[tuple[float, int, float]]
    ) -> list[tuple[int, float, float]]:
        """Move the staged samples into ``samples``; returns the new ones as (series, time, value).

        Usually every staged sample is new and the insert reports only a count. When some were
        stored already (a redelivery), the insert is rolled back to a savepoint and redone
        returning the new rows, so rollups count each sample once.
        """
        try:
            async with conn.transaction():
                if _inserted(await conn.execute(_INSERT_SAMPLES)) != len(records):
                    raise _Duplicates
        except _Duplicates:
            rows = await conn.fetch(
                _INSERT_SAMPLES + " RETURNING series_id, extract(epoch FROM time)::float8 AS t, value"
            )
            return [(row["series_id"], row["t"], row["value"]) for row in rows]
        return [(series_id, when, value) for when, series_id, value in records]

    @staticmethod
    async def _roll_up(conn: asyncpg.Connection, rows: list[tuple[int, float, float]]) -> None:
        """Merge the new samples into the 1-minute and 1-hour rollups."""
        if not rows:
            return
        for width, table in rollup.TABLES.items():
            cells = rollup.aggregate(rows, width)
            await conn.execute(rollup.upsert_sql(table), *rollup.upsert_args(cells))

    async def _resolve_series(self, conn: asyncpg.Connection, keys: set[SeriesKey]) -> dict[SeriesKey, int]:
        """Ids of the series in ``keys`` missing from the cache, creating those that do not exist."""
        missing = sorted(key for key in keys if key not in self._series)
        if not missing:
            return {}
        hosts = [k[0] for k in missing]
        names = [k[1] for k in missing]
        labels = [k[2] for k in missing]
        await conn.execute(_INSERT_SERIES, hosts, names, labels, [unit_of(n) for n in names])
        rows = await conn.fetch(_SELECT_SERIES, hosts, names, labels)
        return {missing[row["i"] - 1]: row["id"] for row in rows}

    async def write_alerts(self, alerts: list[AlertEvent]) -> None:
        """Upsert alert rows (newest ``seq`` wins) and append their history, in one transaction."""
        if not alerts:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                _UPSERT_ALERT,
                [
                    (
                        a.id,
                        a.fingerprint,
                        a.rule,
                        a.status,
                        a.severity,
                        a.host,
                        labels_json(a.labels),
                        labels_json(a.annotations),
                        a.value,
                        a.threshold,
                        a.starts_at,
                        (a.ends_at if a.ends_at is not None else a.time) if a.status == "resolved" else None,
                        a.time,
                        a.seq,
                    )
                    for a in alerts
                ],
            )
            await conn.executemany(
                _ALERT_HISTORY,
                [(a.id, a.time, a.status, a.seq, msgspec.json.encode(a).decode()) for a in alerts],
            )

    async def load_latest(self, latest: LatestValues, within: float = 3600.0) -> int:
        """Fill ``latest`` from the 1-minute rollups of the last ``within`` seconds (after a
        restart the cache would otherwise be empty until every series reports again)."""
        rows = await self.pool.fetch(
            """
            SELECT DISTINCT ON (r.series_id) s.host, s.name, s.labels::text AS labels,
                   extract(epoch FROM r.last_time)::float8 AS t, r.last
            FROM samples_1m r JOIN series s ON s.id = r.series_id
            WHERE r.bucket >= now() - make_interval(secs => $1)
            ORDER BY r.series_id, r.bucket DESC
            """,
            within,
        )
        for row in rows:
            key = (row["host"], row["name"], labels_json(msgspec.json.decode(row["labels"])))
            latest.update(key, row["t"], row["last"])
        return len(rows)

    async def write_actions(self, actions: list[AlertAction]) -> int:
        """Apply people's actions to their alerts and record them in the history.

        An action already recorded (same alert, action and time) changes nothing again.
        Returns how many actions were new.
        """
        applied = 0
        if not actions:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            for action in sorted(actions, key=lambda a: (a.alert_id, a.time)):
                status = await conn.execute(
                    _ALERT_HISTORY,
                    action.alert_id,
                    action.time,
                    action.action,
                    0,
                    msgspec.json.encode(action).decode(),
                )
                if _inserted(status) == 0:
                    continue
                applied += 1
                await conn.execute(_ACTION_SQL[action.action], *_action_args(action))
        return applied

    async def alert_hosts(self, alert_ids: list[str]) -> dict[str, str]:
        """The host of each known alert id (for routing live frames)."""
        rows = await self.pool.fetch("SELECT id, host FROM alerts WHERE id = ANY($1::text[])", alert_ids)
        return {row["id"]: row["host"] for row in rows}

    async def write_deliveries(self, results: list[DeliveryResult]) -> int:
        """Store delivery results from the notifier; a redelivered result is stored once."""
        if not results:
            return 0
        stored = 0
        async with self.pool.acquire() as conn, conn.transaction():
            for r in results:
                status = await conn.execute(
                    _INSERT_DELIVERY,
                    r.time,
                    r.alert_id,
                    r.channel,
                    r.status,
                    r.attempt,
                    msgspec.json.encode(r).decode(),
                    r.transition,
                    r.rule,
                    r.host,
                    r.error,
                    r.reason,
                )
                stored += _inserted(status)
        return stored


_INSERT_DELIVERY = """
INSERT INTO notifications (time, alert_id, channel, status, attempt, payload, transition, rule, host,
                           error, reason)
VALUES (to_timestamp($1), $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11)
ON CONFLICT DO NOTHING
"""

# An action's statement and its arguments. Acks and unacks apply in time order; a resolve by
# hand ends the alert until a newer event of the evaluator says otherwise.
_ACTION_SQL = {
    "ack": """
        UPDATE alerts SET acknowledged_by = $2, acknowledged_at = to_timestamp($3)
        WHERE id = $1 AND (acknowledged_at IS NULL OR acknowledged_at <= to_timestamp($3))
    """,
    "unack": """
        UPDATE alerts SET acknowledged_by = NULL, acknowledged_at = NULL
        WHERE id = $1 AND acknowledged_at <= to_timestamp($2)
    """,
    "resolve": """
        UPDATE alerts SET status = 'resolved', resolved_by = $2, resolved_at = to_timestamp($3),
                          ends_at = coalesce(ends_at, to_timestamp($3))
        WHERE id = $1
    """,
    "note": """
        UPDATE alerts SET notes = notes || jsonb_build_array(
            jsonb_build_object('time', $3::float8, 'author', $2::text, 'note', $4::text))
        WHERE id = $1
    """,
}


def _action_args(action: AlertAction) -> tuple[object, ...]:
    if action.action == "unack":
        return (action.alert_id, action.time)
    if action.action == "note":
        return (action.alert_id, action.actor, action.time, action.note)
    return (action.alert_id, action.actor, action.time)

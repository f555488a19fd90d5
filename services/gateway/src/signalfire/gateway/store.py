"""Writes what arrives on the bus into PostgreSQL/TimescaleDB.

Every write is idempotent, because JetStream redelivers whatever was not acknowledged.
A metric batch whose samples share its time is copied (binary ``COPY``) as one row into
``sample_batches``: its time, its layout (the ordered series ids, stored once in ``layouts``)
and its values; a batch whose samples carry times of their own is copied a row per sample into
``sample_rows`` (migration 0010; ``samples`` is a view over both). Both tables' unique indexes
refuse what was stored before; only then (a batch sent twice, a redelivery) is the round redone
through staging tables with ``ON CONFLICT DO NOTHING``, which tell the new from the old.
Events go through a staging table the same way; hosts and alerts are upserts that never let an
older message overwrite a newer one.

The rollups of the samples are not written here: :meth:`Store.write_metrics` tells the round
of :class:`~signalfire.gateway.rollup.Rollups` it is handed, inside its transaction, which
batches it wrote whole and which rows were new, and that unit does the rest.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, repeat

import asyncpg
import msgspec

from signalfire.events import (
    AgentStatus,
    AlertAction,
    AlertEvent,
    DeliveryResult,
    EventBatch,
    MetricBatch,
    Sample,
)
from signalfire.gateway.rollup import RollupRound, StoredBatch

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
_labels_json = _json.encode


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


#: Batches :class:`LatestValues` lets wait for a read at most (one per batch layout).
_LATEST_WAITING = 100_000
#: Seconds between two applications of the waiting batches by :meth:`LatestValues.count`.
_COUNT_EVERY = 5.0


class LatestValues:
    """The newest (time, value) of every series seen since start, kept in memory (times and
    values in two dicts, so a whole batch is checked and updated by builtins).

    A batch whose time is the newest of its host (the usual case) is not applied sample by
    sample when it arrives: it waits, by its layout (the series keys list its shape shares),
    until something reads, and a newer batch of the same layout replaces it. So a host that
    sends every second while the cache is read every few seconds costs one dict update per
    series and read, not per sample (the update was 9 % of an ingesting gateway's CPU)."""

    def __init__(self, clock: Callable[[], float] = _time.monotonic) -> None:
        self._clock = clock
        self._times: dict[SeriesKey, float] = {}
        self._values: dict[SeriesKey, float] = {}
        #: Changes with every update: answers built from the values can be cached by it.
        self.version = 0
        #: The newest time of any series of each host.
        self._newest: dict[str, float] = {}
        #: Batches not applied yet, by the id of their keys list (held here, so the id stays
        #: theirs), oldest first: (keys, time, values).
        self._waiting: dict[int, tuple[Sequence[SeriesKey], float, Sequence[float]]] = {}
        #: When :meth:`count` last applied the waiting batches (``clock`` seconds).
        self._counted_at = -math.inf

    def update(self, key: SeriesKey, time: float, value: float) -> None:
        self._settle()
        self.version += 1
        self._apply(key, time, value)

    def _apply(self, key: SeriesKey, time: float, value: float) -> None:
        if time >= self._times.get(key, -math.inf):
            self._times[key] = time
            self._values[key] = value
            if time > self._newest.get(key[0], -math.inf):
                self._newest[key[0]] = time

    def update_batch(
        self, host: str, keys: Sequence[SeriesKey], time: float, values: Sequence[float]
    ) -> None:
        """:meth:`update` of every ``keys[i]`` (series of ``host``) with ``(time, values[i])``."""
        if not keys:
            return
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} series keys for {len(values)} values")
        self.version += 1
        if time >= self._newest.get(host, -math.inf):  # the usual case: nothing of the host is newer
            self._newest[host] = time
            # Moved to the end: applied after every batch that waits from before it.
            self._waiting.pop(id(keys), None)
            self._waiting[id(keys)] = (keys, time, values)
            if len(self._waiting) > _LATEST_WAITING:  # layouts made anew (cache cleared), unread
                self._settle()
            return
        waiting = self._waiting.get(id(keys))
        if waiting is not None and waiting[1] >= time:
            # A newer batch of the same layout waits (rounds written in parallel commit out of
            # order): it overwrites every one of these series anyway.
            return
        self._settle()
        for key, value in zip(keys, values, strict=True):
            self._apply(key, time, value)

    def _settle(self) -> None:
        """Apply the batches that wait, oldest first (each was the newest of its host when it
        came, so it overwrites without comparing)."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, {}
        times, values = self._times, self._values
        for keys, time, batch_values in waiting.values():
            times.update(zip(keys, repeat(time)))
            values.update(zip(keys, batch_values, strict=True))

    def note(self, written: MetricsWritten) -> None:
        """Take the latest values of what :meth:`Store.write_metrics` saw (here, or in
        another ingest process: its committed frames)."""
        for host, keys, when, values in written.uniform:
            self.update_batch(host, keys, when, values)
        for key, when, value in written.rows:
            self.update(key, when, value)

    def get(self, key: SeriesKey) -> tuple[float, float] | None:
        self._settle()
        time = self._times.get(key)
        return None if time is None else (time, self._values[key])

    def items(self) -> Iterable[tuple[SeriesKey, tuple[float, float]]]:
        self._settle()
        values = self._values
        return ((key, (time, values[key])) for key, time in self._times.items())

    def __len__(self) -> int:
        self._settle()
        return len(self._times)

    def count(self) -> int:
        """The number of series with a value, for a gauge read often (``latest_series``, at
        every ``/metrics`` scrape): the waiting batches are applied for it at most every
        :data:`_COUNT_EVERY` seconds, so a new series is counted within that long. (Applying
        them at every scrape undid the waiting: 16 % of an ingesting gateway's CPU under a
        4 Hz scrape.)"""
        now = self._clock()
        if now - self._counted_at >= _COUNT_EVERY:
            self._counted_at = now
            self._settle()
        return len(self._times)


class _Shape:
    """The series keys of a batch layout (host, labels and sample names and labels in order),
    and their ids once every one of them is stored: agents send the same layout every time."""

    __slots__ = ("ids", "keys", "layout")

    def __init__(self, keys: list[SeriesKey]) -> None:
        self.keys = keys
        self.ids: list[int] | None = None
        #: The id of its row in ``layouts`` once stored.
        self.layout: int | None = None


#: Series keys remembered across batch layouts at most (then the layouts are forgotten and
#: made again as batches come). Room for 10,000 hosts of ~150 series (docs/scaling.md), at
#: ~213 bytes a key with its layout (measured on 150-series layouts): at most ~430 MB. At
#: 1 M, such a fleet overflowed it every few seconds and most batches made their layout anew.
_SHAPE_KEYS = 2_000_000


@dataclass
class MetricsWritten:
    """What one call of :meth:`Store.write_metrics` stored."""

    samples: int = 0
    duplicate_samples: int = 0
    events: int = 0
    new_series: int = 0
    rows: list[tuple[SeriesKey, float, float]] = field(default_factory=list)
    #: The samples of batches with one time for all: (host, series keys, time, values) per batch
    #: (the other batches' samples are in ``rows``).
    uniform: list[tuple[str, list[SeriesKey], float, Sequence[float]]] = field(default_factory=list)


_SAMPLE_COLUMNS = ["time", "series_id", "value"]
_BATCH_COLUMNS = ["time", "layout_id", "vals"]

_CREATE_SAMPLES_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS samples_in (
    time timestamptz, series_id bigint, value double precision
) ON COMMIT DELETE ROWS
"""

_CREATE_BATCHES_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS batches_in (
    time timestamptz, layout_id integer, vals double precision[]
) ON COMMIT DELETE ROWS
"""

_INSERT_LAYOUT = (
    "INSERT INTO layouts (digest, series_ids) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING RETURNING id"
)
_INSERT_LAYOUT_SERIES = """
INSERT INTO layout_series (series_id, layout_id, position)
SELECT series_id, $1, position FROM unnest($2::bigint[]) WITH ORDINALITY AS u(series_id, position)
ON CONFLICT DO NOTHING
"""
_SELECT_LAYOUTS = "SELECT id, digest FROM layouts WHERE digest = ANY($1::bytea[])"

_CREATE_EVENTS_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS events_in (
    t double precision, host text, type text, message text, labels text, value double precision
) ON COMMIT DELETE ROWS
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

# Either identity (the action id, or alert, event, seq and time) makes a repeated action a no-op.
_ACTION_HISTORY = """
INSERT INTO alert_history (alert_id, time, event, seq, payload, action_id)
VALUES ($1, to_timestamp($2), $3, 0, $4::jsonb, $5)
ON CONFLICT DO NOTHING
"""


def _records(batches: Iterable[StoredBatch]) -> list[tuple[datetime, int, float]]:
    """``COPY`` records of ``samples`` (one datetime per distinct time, not per sample)."""
    records: list[tuple[datetime, int, float]] = []
    stamps: dict[float, datetime] = {}
    for stored in batches:
        if stored.times is None:
            stamp = datetime.fromtimestamp(stored.time, UTC)
            records.extend(zip(repeat(stamp), stored.ids, stored.values, strict=False))
            continue
        for when, series_id, value in zip(stored.times, stored.ids, stored.values, strict=True):
            stamp = stamps.get(when) or stamps.setdefault(when, datetime.fromtimestamp(when, UTC))
            records.append((stamp, series_id, value))
    return records


# Binary COPY of (time, series_id, value): a header, then per row the field count and each
# field's length and big-endian value (timestamptz as microseconds since 2000-01-01), then -1.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_COPY_ROW = "hiqiqid"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_row_structs: dict[int, struct.Struct] = {}


def _pg_time(when: float) -> int:
    """``when`` as PostgreSQL stores a timestamptz, rounded exactly as asyncpg rounds it."""
    return (datetime.fromtimestamp(when, UTC) - _PG_EPOCH) // _MICROSECOND


#: Row templates of uniform batches' layouts: by the id of the layout's ids list (held in the
#: value, so the id stays its own), every row's constant bytes with holes for time and value.
_templates: dict[int, tuple[list[int], bytes]] = {}
_template_rows = 0
_ROW = struct.calcsize(">" + _COPY_ROW)  # 38 bytes
_TIME_AT, _VALUE_AT = 6, 30  # offsets of the time and value in a row
#: Row templates kept at most, in rows (38 bytes each): then they are made anew.
_TEMPLATE_ROWS = 1_000_000
_value_structs: dict[int, struct.Struct] = {}


def _template(ids: list[int]) -> bytes:
    """The ``COPY`` rows of ``ids`` with time and value zero, made once per batch layout."""
    global _template_rows
    found = _templates.get(id(ids))
    if found is not None and found[0] is ids:
        return found[1]
    rows = struct.pack(">" + _COPY_ROW * len(ids), *chain.from_iterable((3, 8, 0, 8, i, 8, 0.0) for i in ids))
    _template_rows += len(ids)
    if _template_rows > _TEMPLATE_ROWS:
        _templates.clear()
        _template_rows = len(ids)
    _templates[id(ids)] = (ids, rows)
    return rows


def _packed_values(values: Sequence[float]) -> bytes:
    """``values`` as big-endian float8s, with one ``struct`` per batch size."""
    n = len(values)
    packer = _value_structs.get(n)
    if packer is None:
        if len(_value_structs) > 64:
            _value_structs.clear()
        packer = _value_structs[n] = struct.Struct(f">{n}d")
    return packer.pack(*values)


def _uniform_rows(stored: StoredBatch) -> bytearray:
    """The ``COPY`` rows of a batch with one time for all its samples: its layout's template
    with the time and the values written in as 16 strided byte copies, not a ``struct`` field
    per sample (a sixth of the cost at 1,000 samples a batch)."""
    n = len(stored.ids)
    rows = bytearray(_template(stored.ids))
    stamp = struct.pack(">q", _pg_time(stored.time))
    packed = _packed_values(stored.values)
    for j in range(8):
        rows[_TIME_AT + j :: _ROW] = stamp[j : j + 1] * n
        rows[_VALUE_AT + j :: _ROW] = packed[j::8]
    return rows


def layout_digest(ids: Sequence[int]) -> bytes:
    """The key of a layout in ``layouts``: a digest of its series ids in order."""
    return hashlib.blake2b(struct.pack(f">{len(ids)}q", *ids), digest_size=16).digest()


#: Binary ``COPY`` of (time, layout_id, vals): per row 3 fields; the array as PostgreSQL sends
#: it (dimensions 1, no nulls, element type float8 (701), length, lower bound 1), then each
#: element's length and value.
_BATCH_ROW = struct.Struct(">hiqiiiiiiii")
_FLOAT8_OID = 701
_array_templates: dict[int, bytes] = {}


def _batch_row(stored: StoredBatch, layout: int) -> bytearray:
    """The ``COPY`` row of a batch with one time for all its samples."""
    n = len(stored.ids)
    template = _array_templates.get(n)
    if template is None:
        if len(_array_templates) > 256:
            _array_templates.clear()
        template = _array_templates[n] = struct.pack(
            ">" + "id" * n, *chain.from_iterable((8, 0.0) for _ in range(n))
        )
    head = _BATCH_ROW.pack(3, 8, _pg_time(stored.time), 4, layout, 20 + 12 * n, 1, 0, _FLOAT8_OID, n, 1)
    row = bytearray(head) + template
    packed = _packed_values(stored.values)
    at = len(head) + 4
    for j in range(8):
        row[at + j :: 12] = packed[j::8]
    return row


def _batch_data(batches: Iterable[tuple[StoredBatch, int]]) -> tuple[bytes, int]:
    """The binary ``COPY`` data of ``sample_batches`` rows and how many samples they hold."""
    parts: list[bytes | bytearray] = [_COPY_HEADER]
    samples = 0
    for stored, layout in batches:
        parts.append(_batch_row(stored, layout))
        samples += len(stored.ids)
    parts.append(_COPY_TRAILER)
    return b"".join(parts), samples


def _copy_data(batches: Iterable[StoredBatch]) -> tuple[bytes, int]:
    """The binary ``COPY`` data of the samples of ``batches`` and how many rows it holds, built
    per batch (a layout's template, or one ``struct`` call) instead of a Python tuple and
    datetime per sample."""
    parts: list[bytes | bytearray] = [_COPY_HEADER]
    rows = 0
    stamps: dict[float, int] = {}
    for stored in batches:
        n = len(stored.ids)
        if not n:
            continue
        rows += n
        if stored.times is None:
            parts.append(_uniform_rows(stored))
            continue
        packer = _row_structs.get(n)
        if packer is None:
            if len(_row_structs) > 64:
                _row_structs.clear()
            packer = _row_structs[n] = struct.Struct(">" + _COPY_ROW * n)
        for when in set(stored.times).difference(stamps):
            stamps[when] = _pg_time(when)
        times = map(stamps.__getitem__, stored.times)
        fields = zip(repeat(3), repeat(8), times, repeat(8), stored.ids, repeat(8), stored.values)
        parts.append(packer.pack(*chain.from_iterable(fields)))
    parts.append(_COPY_TRAILER)
    return b"".join(parts), rows


def _inserted(status: str) -> int:
    """Rows inserted, from a command status like ``INSERT 0 42``."""
    return int(status.rsplit(" ", 1)[-1])


def _columns(
    batch: MetricBatch, keys: list[SeriesKey], written: MetricsWritten
) -> tuple[list[float] | None, list[float]]:
    """The sample times (``None``: all at the batch's time) and values of ``batch``, whose
    series are ``keys``; notes them in ``written`` for the latest values."""
    samples, at = batch.samples, batch.time
    values = [s.value for s in samples]
    if any(s.time is not None for s in samples):
        times = [at if s.time is None else s.time for s in samples]
        written.rows.extend(zip(keys, times, values, strict=True))
        return times, values
    written.uniform.append((batch.host, keys, at, values))
    return None, values


async def open_pool(database_url: str, max_size: int) -> asyncpg.Pool:
    """The gateway's connection pool (the API's process and every ingest worker open one)."""
    return await asyncpg.create_pool(
        # min_size=0: while the database is away, the pool does not retry (and log) in the
        # background; ingest waits for it on its own.
        database_url,
        min_size=0,
        max_size=max_size,
        command_timeout=60,
        # The API's queries are short; PostgreSQL's JIT spent up to 0.8 s compiling a
        # fleet-wide query that runs in a fraction of that.
        # Range queries' points come as PostgreSQL's text of float8 arrays: 1 is the shortest
        # form that reads back as the same float (PostgreSQL 12's default), whatever the
        # server's configuration says.
        server_settings={"jit": "off", "extra_float_digits": "1"},
    )


class Store:
    """Idempotent writes of bus payloads; caches series ids across calls."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._series: dict[SeriesKey, int] = {}
        self._shapes: dict[bytes, _Shape] = {}
        self._shape_keys = 0

    async def write_metrics(
        self,
        metrics: list[MetricBatch],
        events: list[EventBatch] | None = None,
        statuses: list[AgentStatus] | None = None,
        *,
        rollups: RollupRound,
        redelivered: bool = False,
    ) -> MetricsWritten:
        """Store metric batches, event batches and agent statuses in one transaction.

        The samples are copied straight into ``samples``; should one of them be stored already
        (or ``redelivered``: some batches may have been stored before), the round is redone
        through a staging table that keeps only the new ones. ``rollups`` (whose sequences are
        those of ``metrics``) is told, inside the transaction, which batches to leave out and
        what was written; its rollups commit or roll back with the samples.
        """
        events = events or []
        statuses = statuses or []
        written = MetricsWritten()
        shapes = [self._shape(batch.host, batch.labels, batch.samples) for batch in metrics]
        columns = [_columns(batch, shape.keys, written) for batch, shape in zip(metrics, shapes, strict=True)]
        unknown = {key for shape in shapes if shape.ids is None for key in shape.keys}
        async with self.pool.acquire() as conn, conn.transaction():
            new_series = await self._resolve_series(conn, unknown)
            ids = {**self._series, **new_series} if new_series else self._series
            # (a shape's ids are shared by its batches, never changed)
            stored = [
                StoredBatch(
                    batch.time,
                    shape.ids if shape.ids is not None else list(map(ids.__getitem__, shape.keys)),
                    values,
                    times,
                )
                for batch, shape, (times, values) in zip(metrics, shapes, columns, strict=True)
            ]
            skip = await rollups.exclude(
                conn, [(b.host, s) for b, s in zip(metrics, stored, strict=True)], redelivered=redelivered
            )
            fresh = [i for i in range(len(stored)) if i not in skip]
            written.duplicate_samples = sum(len(stored[i].ids) for i in skip)
            # A row per batch where its samples share its time and name each series once (a
            # stored layout did); a row per sample otherwise, whose index keeps the first of a
            # series' samples at one time.
            uniform = [
                i
                for i in fresh
                if stored[i].times is None
                and stored[i].ids
                and (shapes[i].layout is not None or len(set(stored[i].ids)) == len(stored[i].ids))
            ]
            packed = set(uniform)
            per_row = [i for i in fresh if i not in packed]
            new_layouts = await self._resolve_layouts(
                conn, [stored[i].ids for i in uniform if shapes[i].layout is None]
            )
            placed = [
                (
                    stored[i],
                    layout
                    if (layout := shapes[i].layout) is not None
                    else new_layouts[layout_digest(stored[i].ids)],
                )
                for i in uniform
            ]
            rows, row_count = _copy_data(stored[i] for i in per_row)
            batches, batch_count = _batch_data(placed)
            count = row_count + batch_count
            if not redelivered and await self._copy_samples(conn, rows, row_count, batches, len(placed)):
                written.samples = count
                await rollups.copied(conn, fresh)
            elif count:
                # A batch some of whose samples are stored already (under another layout, or a
                # row each) keeps only its new ones, a row each: every sample is stored once.
                held = await self._stored_already(conn, placed)
                whole: list[tuple[StoredBatch, int]] = []
                part: list[StoredBatch] = []
                for b, layout in placed:
                    stamp = datetime.fromtimestamp(b.time, UTC)
                    if not any(held.get((i, stamp), {layout}) - {layout} for i in b.ids):
                        whole.append((b, layout))  # new, or its own row again (refused below)
                        continue
                    keep = [k for k, i in enumerate(b.ids) if (i, stamp) not in held]
                    part.append(StoredBatch(b.time, [b.ids[k] for k in keep], [b.values[k] for k in keep]))
                new_rows = await self._insert_samples(conn, _records([*(stored[i] for i in per_row), *part]))
                new_rows += await self._insert_batches(conn, whole)
                written.samples = len(new_rows)
                written.duplicate_samples += count - written.samples
                await rollups.inserted(conn, new_rows)
            written.events = await self._write_events(conn, events)
            await self._write_hosts(conn, [*metrics, *events], statuses)
        # Only now: ids of series (and layouts) created by a rolled-back transaction do not exist.
        self._series.update(new_series)
        for shape, batch in zip(shapes, stored, strict=True):
            if shape.ids is None:
                shape.ids = batch.ids
        if new_layouts:
            for i in uniform:
                if shapes[i].layout is None:
                    shapes[i].layout = new_layouts[layout_digest(stored[i].ids)]
        written.new_series = len(new_series)
        return written

    @staticmethod
    async def _write_hosts(
        conn: asyncpg.Connection, arrivals: list[MetricBatch | EventBatch], statuses: list[AgentStatus]
    ) -> None:
        """Mark the hosts of ``arrivals`` seen (the newest batch of each) and store ``statuses``."""
        seen: dict[str, MetricBatch | EventBatch] = {}
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
                    # by host (stable: a host's statuses keep their order), like the rows above,
                    # so concurrent ingest workers lock the hosts in one order
                    for s in sorted(statuses, key=lambda s: s.host)
                ],
            )

    def _shape(self, host: str, base: dict[str, str], samples: Sequence[Sample]) -> _Shape:
        """The series keys of a batch's samples, from the cache of batch layouts."""
        layout = _labels_json((host, base, [s.name for s in samples], [s.labels for s in samples]))
        shape = self._shapes.get(layout)
        if shape is not None:
            return shape
        if base:
            keys = [(host, s.name, labels_json({**base, **s.labels})) for s in samples]
        else:
            keys = [(host, s.name, _labels_json(s.labels).decode() if s.labels else "{}") for s in samples]
        self._shape_keys += len(keys)
        if self._shape_keys > _SHAPE_KEYS:
            self._shapes.clear()
            self._shape_keys = len(keys)
        shape = self._shapes[layout] = _Shape(keys)
        return shape

    @staticmethod
    async def _copy_samples(
        conn: asyncpg.Connection, rows: bytes, row_count: int, batches: bytes, batch_count: int
    ) -> bool:
        """``COPY`` the per-sample rows and the batch rows (binary ``COPY`` data) straight into
        their tables; ``False`` (and nothing written) when one of them is stored already, e.g.
        an agent sent the same batch twice."""
        if not row_count and not batch_count:
            return True
        try:
            async with conn.transaction():  # a savepoint: a conflict undoes only the copies
                # memoryviews: asyncpg would take bytes for a file name
                if row_count:
                    await conn.copy_to_table(
                        "sample_rows", source=memoryview(rows), columns=_SAMPLE_COLUMNS, format="binary"
                    )
                if batch_count:
                    await conn.copy_to_table(
                        "sample_batches", source=memoryview(batches), columns=_BATCH_COLUMNS, format="binary"
                    )
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def _resolve_layouts(self, conn: asyncpg.Connection, layouts: list[list[int]]) -> dict[bytes, int]:
        """Ids in ``layouts`` of these series id lists (by :func:`layout_digest`), storing those
        that are not there yet with their series' positions (a layout another process stored
        is only looked up: a restarted gateway writes no ``layout_series`` rows again)."""
        wanted = {layout_digest(ids): ids for ids in layouts}
        if not wanted:
            return {}
        digests = sorted(wanted)  # one order, so concurrent writers lock them alike
        found = {row["digest"]: row["id"] for row in await conn.fetch(_SELECT_LAYOUTS, digests)}
        for digest in digests:
            if digest in found:
                continue
            layout = await conn.fetchval(_INSERT_LAYOUT, digest, wanted[digest])
            if layout is None:  # another writer stored it meanwhile (its transaction committed)
                layout = await conn.fetchval(_SELECT_LAYOUTS, [digest])
            else:
                await conn.execute(_INSERT_LAYOUT_SERIES, layout, wanted[digest])
            found[digest] = layout
        return found

    @staticmethod
    async def _stored_already(
        conn: asyncpg.Connection, placed: list[tuple[StoredBatch, int]]
    ) -> dict[tuple[int, datetime], set[int | None]]:
        """The samples of ``placed`` stored already: (series, time) → the layouts of the batch
        rows holding them (``None``: a row of their own)."""
        held: dict[tuple[int, datetime], set[int | None]] = {}
        if not placed:
            return held
        rows = await conn.fetch(
            "SELECT series_id, time, NULL::integer AS layout FROM sample_rows"
            " WHERE series_id = ANY($1::bigint[]) AND time = ANY($2::timestamptz[])"
            " UNION ALL"
            " SELECT ls.series_id, b.time, b.layout_id FROM sample_batches b"
            " JOIN layout_series ls ON ls.layout_id = b.layout_id"
            " WHERE ls.series_id = ANY($1::bigint[]) AND b.time = ANY($2::timestamptz[])",
            sorted({i for b, _ in placed for i in b.ids}),
            sorted({datetime.fromtimestamp(b.time, UTC) for b, _ in placed}),
        )
        for row in rows:
            held.setdefault((row["series_id"], row["time"]), set()).add(row["layout"])
        return held

    @staticmethod
    async def _insert_batches(
        conn: asyncpg.Connection, placed: list[tuple[StoredBatch, int]]
    ) -> list[tuple[int, float, float]]:
        """Insert the batch rows that are not stored yet; returns their samples as (series,
        time, value)."""
        if not placed:
            return []
        records = []
        by_key: dict[tuple[int, datetime], StoredBatch] = {}
        for stored, layout in placed:
            stamp = datetime.fromtimestamp(stored.time, UTC)
            by_key[(layout, stamp)] = stored
            records.append((stamp, layout, list(stored.values)))
        await conn.execute(_CREATE_BATCHES_STAGING)
        await conn.copy_records_to_table("batches_in", records=records, columns=_BATCH_COLUMNS)
        rows = await conn.fetch(
            "INSERT INTO sample_batches (time, layout_id, vals) SELECT time, layout_id, vals FROM batches_in "
            "ON CONFLICT DO NOTHING RETURNING layout_id, time"
        )
        new: list[tuple[int, float, float]] = []
        for row in rows:
            stored = by_key[(row["layout_id"], row["time"])]
            new.extend(zip(stored.ids, repeat(stored.time), stored.values, strict=False))
        return new

    @staticmethod
    async def _write_events(conn: asyncpg.Connection, events: list[EventBatch]) -> int:
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
        if not event_records:
            return 0
        await conn.execute(_CREATE_EVENTS_STAGING)
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
        return _inserted(status)

    async def _insert_samples(
        self, conn: asyncpg.Connection, records: list[tuple[datetime, int, float]]
    ) -> list[tuple[int, float, float]]:
        """Insert the samples that are not stored yet; returns the new ones as (series, time, value)."""
        if not records:
            return []
        await conn.execute(_CREATE_SAMPLES_STAGING)
        await conn.copy_records_to_table("samples_in", records=records, columns=_SAMPLE_COLUMNS)
        rows = await conn.fetch(
            "INSERT INTO sample_rows (time, series_id, value) SELECT time, series_id, value FROM samples_in "
            "ON CONFLICT DO NOTHING RETURNING series_id, time"
        )
        floats = {(series_id, when): (when.timestamp(), value) for when, series_id, value in records}
        return [(row["series_id"], *floats[(row["series_id"], row["time"])]) for row in rows]

    async def _resolve_series(self, conn: asyncpg.Connection, keys: set[SeriesKey]) -> dict[SeriesKey, int]:
        """Ids of the series in ``keys`` missing from the cache, creating those that do not exist."""
        # (not ``keys - self._series.keys()``: that walks the whole cache, every round)
        cache = self._series
        missing = sorted(k for k in keys if k not in cache)
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
                    # by id: ingest workers writing at once lock the rows in one order
                    for a in sorted(alerts, key=lambda a: a.id)
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

        An action already recorded (the same ``id``; for actions without one, the same alert,
        action and time) changes nothing again. Returns how many actions were new.
        """
        applied = 0
        if not actions:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            for action in sorted(actions, key=lambda a: (a.alert_id, a.time)):
                status = await conn.execute(
                    _ACTION_HISTORY,
                    action.alert_id,
                    action.time,
                    action.action,
                    msgspec.json.encode(action).decode(),
                    action.id or None,
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

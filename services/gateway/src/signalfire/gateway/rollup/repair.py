"""Repair of orphaned rollups: batches whose samples are stored but whose rollup merge never
happened, because their message never came back (a gateway died holding it, and it ran out of
deliveries).

Every stored batch has a ``rollup_pending`` row until its merge commits (see
:mod:`.pending`). A row older than ``rollup_repair_after`` belongs to such an orphan: the
1-minute rollups of its host over the minutes its samples fall in are recomputed from
``samples``, then the 5-minute and 1-hour rollups of those intervals that are folded already
from the 1-minute ones (:func:`repair_rollups`, :mod:`.fold`; an open interval's are made at
its fold);
:func:`plan_repair` decides, without I/O, which orphans
can be repaired now.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg

from signalfire.gateway.config import RetentionConfig
from signalfire.gateway.rollup import fold
from signalfire.gateway.rollup.cells import MERGE_LOCK

log = logging.getLogger("signalfire.gateway.rollup")

# One replica at a time repairs rollups.
_REPAIR_LOCK_KEY = 0x5F72_6570  # "_rep"


@dataclass(frozen=True)
class PendingBatch:
    """A ``rollup_pending`` row: a stored batch whose rollups are not merged yet, with its host
    and earliest and latest sample time (``None`` in rows written before migration 0005)."""

    seq: int
    host: str | None = None
    t_min: float | None = None
    t_max: float | None = None

    def minutes(self) -> tuple[float, float] | None:
        """``[start, end)`` of the 1-minute buckets its samples fall in; ``None`` when unknown."""
        if self.host is None or self.t_min is None or self.t_max is None:
            return None
        return self.t_min - self.t_min % 60, self.t_max - self.t_max % 60 + 60


@dataclass
class RepairPlan:
    """What :func:`plan_repair` decided for the orphans it was given."""

    #: Per host, the ``[start, end)`` minute ranges to recompute (sorted, not overlapping).
    minutes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    repair: list[PendingBatch] = field(default_factory=list)
    #: Orphans that cannot be repaired, with why; dropped.
    unrepairable: list[tuple[PendingBatch, str]] = field(default_factory=list)
    #: Orphans left for a later run: a younger batch of their host in the same minutes still
    #: waits for its merge, which adds its samples to the rollups a recompute would include.
    deferred: list[PendingBatch] = field(default_factory=list)


def _merged(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _intervals_of(minutes: Sequence[tuple[float, float]], width: int) -> list[tuple[float, float]]:
    """The ``[start, end)`` ranges of the ``width``-second buckets that hold the minute ranges."""
    return _merged((start - start % width, end + (-end) % width) for start, end in minutes)


def plan_repair(
    orphans: Iterable[PendingBatch],
    younger: Iterable[PendingBatch],
    *,
    raw_since: float | None = None,
    minutes_since: float | None = None,
) -> RepairPlan:
    """Which orphans to repair, drop or leave for later (no I/O).

    ``younger``: the pending batches that are not orphans (their merge is still to come).
    ``raw_since``/``minutes_since``: the oldest time raw samples / 1-minute rollups are still
    kept from (``None``: forever); a repair needs every raw sample of the minutes it recomputes
    and every 1-minute row of the hours.
    """
    plan = RepairPlan()
    waiting: dict[str, list[tuple[float, float]]] = {}
    unknown_waits = False  # a younger row without host or range (a gateway before 0005)
    for batch in younger:
        span = batch.minutes()
        if span is None or batch.host is None:
            unknown_waits = True
        else:
            waiting.setdefault(batch.host, []).append(span)
    spans: dict[str, list[tuple[float, float]]] = {}
    for batch in orphans:
        span = batch.minutes()
        if span is None or batch.host is None:
            plan.unrepairable.append((batch, "no host or time range (stored before migration 0005)"))
            continue
        start, end = span
        if raw_since is not None and start < raw_since:
            plan.unrepairable.append((batch, "its raw samples are past retention.raw"))
            continue
        if minutes_since is not None and start - start % 3600 < minutes_since:
            plan.unrepairable.append((batch, "its 1-minute rollups are past retention.rollup_1m"))
            continue
        if unknown_waits or any(s < end and start < e for s, e in waiting.get(batch.host, ())):
            plan.deferred.append(batch)
            continue
        plan.repair.append(batch)
        spans.setdefault(batch.host, []).append(span)
    plan.minutes = {host: _merged(host_spans) for host, host_spans in sorted(spans.items())}
    return plan


@dataclass
class RollupRepair:
    """What one :func:`repair_rollups` did, in orphaned batches."""

    repaired: int = 0
    unrepairable: int = 0
    deferred: int = 0


_ORPHANS = """
SELECT seq, host, t_min, t_max FROM rollup_pending WHERE created_at < to_timestamp($1) ORDER BY seq
"""

_YOUNGER = """
SELECT seq, host, t_min, t_max FROM rollup_pending
WHERE created_at >= to_timestamp($1) AND (host IS NULL OR t_min IS NULL OR host = ANY($2::text[]))
"""

_DELETE_ROLLUPS = """
DELETE FROM {table} r USING series s
WHERE s.host = $1 AND r.series_id = s.id AND r.bucket >= to_timestamp($2) AND r.bucket < to_timestamp($3)
"""

# The rows are new: the rows of the range were just deleted. A row another transaction wrote
# since this one's snapshot conflicts, and under REPEATABLE READ that conflict is a
# serialization failure (the repair is retried later), not a silent DO NOTHING.
_MINUTES_FROM_SAMPLES = """
WITH raw AS MATERIALIZED (
    SELECT x.series_id, floor(extract(epoch FROM x.time) / 60) * 60 AS b, x.time, x.value
    FROM samples x JOIN series s ON s.id = x.series_id
    WHERE s.host = $1 AND x.time >= to_timestamp($2) AND x.time < to_timestamp($3)
), hists AS (  -- as rollup.merge_rows: the values in a row of at most rollup.EXACT_MAX
    SELECT series_id, b, jsonb_build_object('v', jsonb_agg(to_jsonb(value) ORDER BY time)) AS hist
    FROM raw GROUP BY 1, 2 HAVING count(*) <= 32
    UNION ALL  -- else counts per bucket key
    SELECT series_id, b, jsonb_object_agg(k, n) AS hist
    FROM (SELECT series_id, b, sf_hist_key(value) AS k, count(*) AS n, sum(count(*)) OVER w AS total
          FROM raw GROUP BY 1, 2, 3 WINDOW w AS (PARTITION BY series_id, b)) AS t
    WHERE total > 32
    GROUP BY 1, 2
), cells AS (
    SELECT series_id, b, count(*) AS c, sum(value) AS su, min(value) AS mi, max(value) AS ma,
           (array_agg(value ORDER BY time DESC))[1] AS la, max(time) AS lt
    FROM raw GROUP BY 1, 2
)
INSERT INTO samples_1m (series_id, bucket, count, sum, min, max, last, last_time, hist)
SELECT c.series_id, to_timestamp(c.b), c.c, c.su, c.mi, c.ma, c.la, c.lt, h.hist
FROM cells c JOIN hists h USING (series_id, b)
ORDER BY 1, 2
ON CONFLICT (series_id, bucket) DO NOTHING
"""

# One host's rows of a folded interval, remade from its 1-minute rows (an open interval's are
# made at its fold, .fold).
_OF_HOST = "AND series_id IN (SELECT id FROM series WHERE host = $2)"

_DELETE_INTERVAL_OF_HOST = """
DELETE FROM {table} r USING series s
WHERE s.host = $2 AND r.series_id = s.id AND r.bucket = to_timestamp($1)
"""


def _pending(rows: Iterable[asyncpg.Record]) -> list[PendingBatch]:
    return [PendingBatch(row["seq"], row["host"], row["t_min"], row["t_max"]) for row in rows]


async def repair_rollups(
    conn: asyncpg.Connection,
    older_than: float,
    retention: RetentionConfig | None = None,
    *,
    now: float,
) -> RollupRepair:
    """Repair the rollups of orphaned batches, in one REPEATABLE READ transaction.

    An orphan is a ``rollup_pending`` row older than ``older_than`` seconds at ``now``: its batch's
    samples are stored, but its message will not come back to have their rollups merged. For
    each orphan's host the 1-minute rollups of the minutes its samples fall in are recomputed
    from ``samples`` (every batch stored in them counts once, merged or not), then the 5-minute
    and 1-hour rollups of those intervals (the folded ones) from the 1-minute ones, and the row
    is deleted. Orphans without a
    host (rows from before migration 0005) or whose samples are past ``retention`` are deleted
    unrepaired; orphans that share minutes with a younger pending batch of their host wait for
    a later run. A repair that meets a concurrent write to the same rollup rows fails with
    :class:`asyncpg.exceptions.TransactionRollbackError` and changes nothing. Another replica
    repairing (holding the lock) makes this a no-op.
    """
    retention = RetentionConfig() if retention is None else retention
    cutoff = now - older_than
    done = RollupRepair()
    async with conn.transaction(isolation="repeatable_read"):
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _REPAIR_LOCK_KEY):
            return done
        # Every writer of the rollups holds it (.cells.MERGE_LOCK). A merge that committed while
        # this waited is not in this snapshot: rows it changed make the repair fail, as above.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MERGE_LOCK)
        orphans = _pending(await conn.fetch(_ORPHANS, cutoff))
        if not orphans:
            return done
        hosts = sorted({o.host for o in orphans if o.host is not None})
        younger = _pending(await conn.fetch(_YOUNGER, cutoff, hosts))
        plan = plan_repair(
            orphans,
            younger,
            raw_since=now - float(retention.raw) if retention.raw > 0 else None,
            minutes_since=now - float(retention.rollup_1m) if retention.rollup_1m > 0 else None,
        )
        folded = await fold.horizons(conn)
        await conn.execute(fold.PLANNER)
        for host, minutes in plan.minutes.items():
            for start, end in minutes:
                await conn.execute(_DELETE_ROLLUPS.format(table="samples_1m"), host, start, end)
                await conn.execute(_MINUTES_FROM_SAMPLES, host, start, end)
            for tier in fold.TIERS:
                since = folded.since_five if tier is fold.FIVE_MINUTES else -math.inf
                for start, end in _intervals_of(minutes, tier.width):
                    interval = max(start, since)
                    while interval < min(end, folded.folded(tier)):  # folded intervals only
                        await conn.execute(_DELETE_INTERVAL_OF_HOST.format(table=tier.table), interval, host)
                        await conn.execute(fold.fold_sql(tier, where=_OF_HOST), interval, host)
                        interval += tier.width
        gone = [batch.seq for batch in plan.repair] + [batch.seq for batch, _ in plan.unrepairable]
        await conn.execute("DELETE FROM rollup_pending WHERE seq = ANY($1::bigint[])", gone)
    for batch in plan.repair:
        log.warning(
            "repaired the rollups of a batch whose message never came back",
            extra={"seq": batch.seq, "host": batch.host, "t_min": batch.t_min, "t_max": batch.t_max},
        )
    for batch, reason in plan.unrepairable:
        log.warning(
            "dropped an orphaned batch whose rollups cannot be repaired",
            extra={"seq": batch.seq, "host": batch.host, "reason": reason},
        )
    if plan.deferred:
        log.info(
            "orphaned batches wait for younger batches of their hosts to be merged",
            extra={"batches": len(plan.deferred)},
        )
    done.repaired = len(plan.repair)
    done.unrepairable = len(plan.unrepairable)
    done.deferred = len(plan.deferred)
    return done

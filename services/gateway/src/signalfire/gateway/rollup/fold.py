"""The 5-minute and 1-hour rollups, made once per series and interval from the rows of its
minutes when the interval has ended.

A merge of ingested batches (:func:`merge`) writes their 1-minute rows only, while their 5
minutes are open. Once 5 minutes have ended :data:`FOLD_DELAY` ago, :func:`fold` makes their
5-minute rows from their 1-minute rows in one ``INSERT … SELECT`` and moves
``rollup_fold.horizon_5m`` past them (migration 0011); once an hour has, its 1-hour rows from
its 1-minute rows, moving ``rollup_fold.horizon`` (migration 0009). Every interval before a
horizon is *folded*. Samples of folded intervals that arrive later are merged into the 1-minute
rows and the folded tiers' rows at once. Each sample therefore reaches each tier exactly once:
with its interval at the fold, or directly when it came later. Queries read the intervals since a
horizon from the 1-minute rows (:mod:`signalfire.gateway.api.query`).

A row is thus written once, not once per minute: a fold that added each minute's rows to the
hour's rows as the minute ended rewrote every row's histogram sixty times an hour, and was half
of PostgreSQL's work in ``bench/ingest.py`` (docs/benchmarks.md).

The 5-minute rows hold the totals only (count, sum, min, max, newest value; no histogram):
they serve every aggregate but the percentiles, which read the minutes' histograms. With a
histogram, the 5-minute fold cost 41 µs per series and minute, 1.7 times the hour's, and the
hour made from such rows saved a fifth of its own; the totals alone cost 2.6-2.9 µs
(``bench/fold.py``, docs/benchmarks.md). They exist from ``rollup_fold.since_5m`` on:
``-infinity`` in a database created with them, the time of migration 0011 in one that had
rollups before (its older minutes are not folded again).

Merges and folds hold :data:`~.cells.MERGE_LOCK`, so an interval cannot be folded between a
merge's look at the horizons and that merge's commit. The repair (:mod:`.repair`) remakes the
rows of folded intervals only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from signalfire.gateway.rollup import cells
from signalfire.gateway.rollup.cells import StoredBatch

#: How long after an interval ends its rows are made: the merges of its last minutes (every
#: ``rollup_flush``) come first; batches stamped in it that arrive later are merged into the
#: folded tiers at once (correct, just dearer).
FOLD_DELAY = 120.0
#: The span of each tier folded at most per call: a day (a database whose gateways were stopped
#: for days catches up over several rounds, each transaction short).
MAX_SPAN = 86400


@dataclass(frozen=True)
class Tier:
    """A rollup table folded from the rows of narrower buckets."""

    width: int
    table: str
    #: its column in ``rollup_fold``: every interval before it is folded
    horizon: str


FIVE_MINUTES = Tier(300, "samples_5m", "horizon_5m")  # totals only
HOURS = Tier(3600, "samples_1h", "horizon")
TIERS = (FIVE_MINUTES, HOURS)


@dataclass(frozen=True)
class Horizons:
    """Where the folds stand (unix seconds; ``-inf`` before the first fold)."""

    five: float
    hour: float
    #: the first 5 minutes with 5-minute rows (migration 0011)
    since_five: float

    def folded(self, tier: Tier) -> float:
        return self.five if tier is FIVE_MINUTES else self.hour


_HORIZONS = """
SELECT extract(epoch FROM horizon_5m)::float8, extract(epoch FROM horizon)::float8,
       extract(epoch FROM since_5m)::float8
FROM rollup_fold
"""

_NEXT_MINUTE = """
SELECT extract(epoch FROM min(bucket))::float8 FROM samples_1m
WHERE ($1::float8 IS NULL OR bucket >= to_timestamp($1)) AND bucket < to_timestamp($2)
"""

# The 5-minute rows of the 5 minutes starting at $1 from their 1-minute rows: the totals, no
# histogram.
_FIVE = """
INSERT INTO samples_5m (series_id, bucket, count, sum, min, max, last, last_time)
SELECT series_id, to_timestamp($1), sum(count)::bigint, sum(sum), min(min), max(max),
       (array_agg(last ORDER BY last_time DESC))[1], max(last_time)
FROM samples_1m
WHERE bucket >= to_timestamp($1) AND bucket < to_timestamp($1) + interval '300 seconds' {where}
GROUP BY series_id
ORDER BY 1
"""

# The 1-hour rows of the hour starting at $1 from its 1-minute rows, as the merges would have
# left them (.cells.merge): the values kept while every minute kept its own and they total at
# most EXACT_MAX, else the bucket counts added up.
_HOUR = f"""
WITH m AS MATERIALIZED (
    SELECT series_id, bucket, count, sum, min, max, last, last_time, hist FROM samples_1m
    WHERE bucket >= to_timestamp($1) AND bucket < to_timestamp($1) + interval '1 hour'
    {{where}}
), exact AS (
    SELECT series_id FROM m GROUP BY 1
    HAVING bool_and(hist ? 'v' OR hist = '{{{{}}}}'::jsonb) AND sum(count) <= {cells.EXACT_MAX}
), hists AS (
    SELECT series_id, jsonb_build_object('v', jsonb_agg(x.x ORDER BY m.bucket, x.i)) AS hist
    FROM exact JOIN m USING (series_id)
    CROSS JOIN LATERAL jsonb_array_elements(coalesce(m.hist -> 'v', '[]'::jsonb)) WITH ORDINALITY AS x(x, i)
    GROUP BY 1
    UNION ALL  -- else the counts: a minute's own, or made here from its values (sf_hist_key
               -- inlined: sf_hist_counts per row costs a function call of ~100 µs)
    SELECT series_id, jsonb_object_agg(k, n) AS hist
    FROM (SELECT series_id, k, sum(n) AS n
          FROM (SELECT m.series_id, e.k, e.n::bigint AS n
                FROM m, jsonb_each_text(m.hist) AS e(k, n)
                WHERE NOT m.hist ? 'v' AND m.series_id NOT IN (SELECT series_id FROM exact)
                UNION ALL
                SELECT m.series_id, sf_hist_key(x.x::float8) AS k, 1::bigint AS n
                FROM m, jsonb_array_elements_text(m.hist -> 'v') AS x(x)
                WHERE m.hist ? 'v' AND m.series_id NOT IN (SELECT series_id FROM exact)) AS c
          GROUP BY 1, 2) AS t
    GROUP BY 1
), totals AS (
    SELECT series_id, sum(count)::bigint AS c, sum(sum) AS su, min(min) AS mi, max(max) AS ma,
           (array_agg(last ORDER BY last_time DESC))[1] AS la, max(last_time) AS lt
    FROM m GROUP BY 1
)
INSERT INTO samples_1h (series_id, bucket, count, sum, min, max, last, last_time, hist)
SELECT t.series_id, to_timestamp($1), t.c, t.su, t.mi, t.ma, t.la, t.lt, coalesce(h.hist, '{{{{}}}}')
FROM totals t LEFT JOIN hists h USING (series_id)
ORDER BY 1
"""


#: For the rest of the transaction, how a fold runs fast: its join of the interval's totals to
#: their histograms is misestimated at one row, and a nested loop over it took 5 of 6 s for
#: 5,000 series' hour; hashed, with room for its sorts, 16-19 µs per series and minute
#: (docs/benchmarks.md). Without JIT, on whatever connection (the gateway's pool turns it off
#: already; a connection of the tests or a tool need not): the nested loops' disabling cost puts
#: every fold past ``jit_above_cost``, and compiling its plan took ~0.6 CPU-seconds a statement
#: whatever its size (`bench/fold.py`, 2,000 series: twelve 5-minute folds in 11.3 CPU-seconds
#: with JIT, 4.4 without).
PLANNER = "SET LOCAL enable_nestloop = off; SET LOCAL work_mem = '64MB'; SET LOCAL jit = off"
#: Samples grouped per part of a merge (about 50 ms of Python on the event loop).
PART_SAMPLES = 50_000
#: Seconds between the parts of a merge (its transaction, holding :data:`~.cells.MERGE_LOCK`,
#: stays open that much longer; a minute of 3.6 million samples is 72 parts, 3.6 s of pauses).
PART_PAUSE = 0.05


def fold_sql(tier: Tier, where: str = "") -> str:
    """The statement making ``tier``'s rows of the interval starting at ``$1`` from its 1-minute
    rows, with an extra condition on them (e.g. one host's series, for the repair)."""
    return (_FIVE if tier is FIVE_MINUTES else _HOUR).format(where=where)


async def horizons(conn: asyncpg.Connection) -> Horizons:
    """Where the folds stand."""
    row = await conn.fetchrow(_HORIZONS)
    assert row is not None  # migration 0008 inserts the one row
    five, hour, since = (-math.inf if v is None else float(v) for v in row)
    return Horizons(five=five, hour=hour, since_five=since)


async def merge(conn: asyncpg.Connection, batches: Sequence[StoredBatch], *, now: float) -> float:
    """Merge the rollups of ``batches`` in ``conn``'s transaction (1-minute rows; the rows of a
    coarser tier too for the samples of its folded intervals), then :func:`fold` the intervals
    that ended; returns when the next fold is due."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", cells.MERGE_LOCK)  # held to the commit
    folded = await horizons(conn)
    minutes = cells.minutes_of(batches)
    late = {
        FIVE_MINUTES.width: {m for m in minutes if folded.since_five <= m < folded.five},
        HOURS.width: {m for m in minutes if m < folded.hour},
    }
    # A minute of a busy fleet is millions of samples: merged a few layouts at a time, on the
    # event loop, each part's upsert awaited before the next is grouped, so ingest rounds run in
    # between. (In a thread, the merge's pure Python held the GIL against the event loop and
    # publish -> commit lag rose to 3 s for 13 s after every minute at 60,000 samples/s.) A
    # series in two parts (its host's layout changed in the minute) is upserted twice: the
    # second statement sees the first's row and adds to it.
    for i, part in enumerate(cells.parts_by_layout(batches, PART_SAMPLES)):
        if i:  # PostgreSQL writes ingest's COPYs in between, not behind the merge's rows
            await asyncio.sleep(PART_PAUSE)
        for table, args in cells.merge_rows(part, late=late).items():
            if args[0]:
                await conn.execute(cells.upsert_sql(table), *args)
    return await fold(conn, now=now, locked=folded)


async def fold(conn: asyncpg.Connection, *, now: float, locked: Horizons | None = None) -> float:
    """Make the rows of every open interval of each tier that ended :data:`FOLD_DELAY` before
    ``now`` (at most :data:`MAX_SPAN` of each tier, intervals without 1-minute rows skipped)
    from their 1-minute rows and move the horizons past them, in ``conn``'s transaction (taking
    :data:`~.cells.MERGE_LOCK` until it ends). Returns when the next fold is due (the end of
    the first open interval + :data:`FOLD_DELAY`; ``now`` when intervals are left for the next
    call). ``locked``: the horizons, read by a caller that holds the lock in this
    transaction."""
    if locked is None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", cells.MERGE_LOCK)
        locked = await horizons(conn)
    planned = False
    due = math.inf
    for tier in TIERS:
        first = locked.folded(tier)
        end = (now - FOLD_DELAY) // tier.width * tier.width  # the first that may not be folded yet
        start, done = first, 0
        while start < end and done < MAX_SPAN // tier.width:
            # the next interval with 1-minute rows (intervals without any have nothing to fold)
            minute = await conn.fetchval(_NEXT_MINUTE, None if start == -math.inf else start, end)
            if minute is None:
                start = end
                break
            start = float(minute) // tier.width * tier.width
            if not planned:
                await conn.execute(PLANNER)
                planned = True
            if tier is HOURS:  # rows left in an open hour by a gateway before 0009 are replaced
                await conn.execute("DELETE FROM samples_1h WHERE bucket = to_timestamp($1)", start)
            await conn.execute(fold_sql(tier), start)
            start += tier.width
            done += 1
        if start != first:
            await conn.execute(f"UPDATE rollup_fold SET {tier.horizon} = to_timestamp($1)", start)
        due = min(due, now if start < end else max(start, end) + tier.width + FOLD_DELAY)
    return due

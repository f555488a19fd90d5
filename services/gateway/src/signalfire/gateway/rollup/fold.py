"""The 1-hour rollups, made once per series and hour from the 1-minute rows when the hour ended.

A merge of ingested batches (:func:`merge`) writes their 1-minute rows only, while their hour is
open. Once an hour has ended :data:`FOLD_DELAY` ago, :func:`fold` makes its 1-hour rows from
its 1-minute rows in one ``INSERT … SELECT`` and moves ``rollup_fold.horizon`` past it: every
hour before the horizon is *folded* (migration 0009). Samples of a folded hour that arrive later
are merged into both tables at once. Each sample therefore reaches the 1-hour rows exactly once:
with its hour at the fold, or directly when it came later. Queries read the hours since the
horizon from the 1-minute rows (:mod:`signalfire.gateway.api.query`).

A 1-hour row is thus written once, not once per minute: a fold that added each minute's rows
to the hour's rows as the minute ended rewrote every row's histogram sixty times an hour, and
was half of PostgreSQL's work in ``bench/ingest.py`` (docs/benchmarks.md).

Merges and folds hold :data:`~.cells.MERGE_LOCK`, so an hour cannot be folded between a merge's
look at the horizon and that merge's commit. The repair (:mod:`.repair`) remakes the 1-hour
rows of folded hours only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import asyncpg

from signalfire.gateway.rollup import cells
from signalfire.gateway.rollup.cells import StoredBatch

#: How long after an hour ends its 1-hour rows are made: the merges of its last minutes (every
#: ``rollup_flush``) come first; batches stamped in the hour that arrive later are merged into
#: both tables (correct, just dearer).
FOLD_DELAY = 120.0
#: Hours folded at most per call (a database whose gateways were stopped for days catches up
#: over several rounds, each transaction short).
MAX_HOURS = 24

_HORIZON = "SELECT extract(epoch FROM horizon)::float8 FROM rollup_fold"

_NEXT_MINUTE = """
SELECT extract(epoch FROM min(bucket))::float8 FROM samples_1m
WHERE ($1::float8 IS NULL OR bucket >= to_timestamp($1)) AND bucket < to_timestamp($2)
"""

_MOVE = "UPDATE rollup_fold SET horizon = to_timestamp($1)"

_DELETE_HOUR = "DELETE FROM samples_1h WHERE bucket = to_timestamp($1)"

# The 1-hour rows of the hour starting at $1 from its 1-minute rows, as the merges would have
# left them (.cells.merge): the values kept while every minute kept its own and they total at
# most EXACT_MAX, else the bucket counts added up.
HOUR_FROM_MINUTES = f"""
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


#: For the rest of the transaction, how :data:`HOUR_FROM_MINUTES` runs fast: its join of the
#: hours' totals to their histograms is misestimated at one row, and a nested loop over it took
#: 5 of 6 s for 5,000 series; hashed, with room for its sorts, 16-19 µs per series and minute
#: (docs/benchmarks.md).
#: Samples grouped per part of a merge (about 50 ms of Python on the event loop).
PART_SAMPLES = 50_000
#: Seconds between the parts of a merge (its transaction, holding :data:`~.cells.MERGE_LOCK`,
#: stays open that much longer; a minute of 3.6 million samples is 72 parts, 3.6 s of pauses).
PART_PAUSE = 0.05

PLANNER = "SET LOCAL enable_nestloop = off; SET LOCAL work_mem = '64MB'"


def hour_from_minutes_sql(where: str = "") -> str:
    """:data:`HOUR_FROM_MINUTES` with an extra condition on the 1-minute rows ``m`` (e.g. one
    host's series, for the repair)."""
    return HOUR_FROM_MINUTES.format(where=where)


async def horizon(conn: asyncpg.Connection) -> float:
    """The start of the first hour not folded yet (``-inf`` before the first fold)."""
    value = await conn.fetchval(_HORIZON)
    return -math.inf if value is None else float(value)


async def merge(conn: asyncpg.Connection, batches: Sequence[StoredBatch], *, now: float) -> float:
    """Merge the rollups of ``batches`` in ``conn``'s transaction (1-minute rows; 1-hour rows
    too for the samples of folded hours), then :func:`fold` the hours that ended; returns when
    the next fold is due."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", cells.MERGE_LOCK)  # held to the commit
    folded_before = await horizon(conn)
    minutes = cells.minutes_of(batches)
    hourly = {m for m in minutes if m < folded_before}
    # A minute of a busy fleet is millions of samples: merged a few layouts at a time, on the
    # event loop, each part's upsert awaited before the next is grouped, so ingest rounds run in
    # between. (In a thread, the merge's pure Python held the GIL against the event loop and
    # publish -> commit lag rose to 3 s for 13 s after every minute at 60,000 samples/s.) A
    # series in two parts (its host's layout changed in the minute) is upserted twice: the
    # second statement sees the first's row and adds to it.
    for i, part in enumerate(cells.parts_by_layout(batches, PART_SAMPLES)):
        if i:  # PostgreSQL writes ingest's COPYs in between, not behind the merge's rows
            await asyncio.sleep(PART_PAUSE)
        for table, args in cells.merge_rows(part, hourly=hourly).items():
            if args[0]:
                await conn.execute(cells.upsert_sql(table), *args)
    return await fold(conn, now=now, locked_at=folded_before)


async def fold(conn: asyncpg.Connection, *, now: float, locked_at: float | None = None) -> float:
    """Make the 1-hour rows of every open hour that ended :data:`FOLD_DELAY` before ``now``
    (at most :data:`MAX_HOURS` of them, hours without 1-minute rows skipped) from their 1-minute
    rows and move the horizon past them, in ``conn``'s transaction (taking
    :data:`~.cells.MERGE_LOCK` until it ends); returns when the next fold is due (the end of the
    first open hour + :data:`FOLD_DELAY`; ``now`` when hours are left for the next call).
    ``locked_at``: the horizon, read by a caller that holds the lock in this transaction."""
    if locked_at is None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", cells.MERGE_LOCK)
        first = await horizon(conn)
    else:  # a merge holding the lock read the horizon already
        first = locked_at
    end = (now - FOLD_DELAY) // 3600 * 3600  # the first hour that may not be folded yet
    hour, done = first, 0
    while hour < end and done < MAX_HOURS:
        # the next hour with 1-minute rows (hours without any have nothing to fold)
        minute = await conn.fetchval(_NEXT_MINUTE, None if hour == -math.inf else hour, end)
        if minute is None:
            hour = end
            break
        hour = float(minute) // 3600 * 3600
        if not done:
            await conn.execute(PLANNER)
        await conn.execute(_DELETE_HOUR, hour)  # left by an older gateway's minute-by-minute fold
        await conn.execute(hour_from_minutes_sql(), hour)
        hour += 3600
        done += 1
    if hour != first:
        await conn.execute(_MOVE, hour)
    return now if hour < end else max(hour, end) + 3600 + FOLD_DELAY

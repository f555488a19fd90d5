"""The 1-hour rollups made from closed minutes: one merge per series and minute.

A merge of ingested batches (:func:`merge`) writes their 1-minute rows; the 1-hour rows get
only the samples of minutes that are *folded* already. A minute is open from its first merge
(a ``rollup_minutes`` row) until :func:`fold` adds its 1-minute rows to the 1-hour rows, once
it ended :data:`FOLD_DELAY` ago; after that, late samples of it are merged into both tables at
once. Each sample therefore reaches the 1-hour rows exactly once: with its minute's rows at the
fold, or directly when it came later. Merges and folds hold
:data:`~.cells.MERGE_LOCK`, so a minute cannot be folded between a merge's look at it and
that merge's commit. The repair (:mod:`.repair`) makes 1-hour rows from folded minutes only.

A minute before the database's ``rollup_fold.horizon`` (migration 0008) counts as folded: a
gateway before that migration merged its samples into both tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from signalfire.gateway.rollup import cells
from signalfire.gateway.rollup.cells import StoredBatch

#: How long after a minute ends its 1-minute rows are added to the 1-hour rows: batches stamped
#: in the minute that arrive later are merged into both tables (correct, just dearer).
FOLD_DELAY = 5.0

# Of the given minutes (epoch seconds), those still open (not folded).
_OPEN = """
SELECT m FROM unnest($1::float8[]) AS t(m)
WHERE to_timestamp(m) >= (SELECT horizon FROM rollup_fold)
  AND NOT EXISTS (SELECT 1 FROM rollup_minutes f WHERE f.bucket = to_timestamp(t.m) AND f.folded)
"""

_OPENED = """
INSERT INTO rollup_minutes (bucket) SELECT to_timestamp(m) FROM unnest($1::float8[]) AS t(m)
ON CONFLICT (bucket) DO NOTHING
"""

_CLOSED = """
SELECT extract(epoch FROM bucket)::float8 AS m FROM rollup_minutes
WHERE NOT folded AND bucket <= to_timestamp($1) ORDER BY bucket
"""

_FOLDED = "UPDATE rollup_minutes SET folded = true WHERE bucket = to_timestamp($1)"

#: How long folded minutes stay listed in ``rollup_minutes`` before :func:`prune` moves the
#: horizon past them (a minute before the horizon counts as folded: the same answer, no row).
KEEP_MINUTES = 86400.0

# The horizon moved to the cut-off, but never past a minute still open (those must be folded
# first), and the folded minutes before it dropped from the list; returns the new horizon.
_PRUNE = """
WITH cut AS (
    SELECT least(to_timestamp($1),
                 coalesce((SELECT min(bucket) FROM rollup_minutes WHERE NOT folded), 'infinity')) AS c
), moved AS (
    UPDATE rollup_fold SET horizon = greatest(horizon, (SELECT c FROM cut)) RETURNING horizon
)
DELETE FROM rollup_minutes WHERE bucket < (SELECT horizon FROM moved)
"""


async def merge(conn: asyncpg.Connection, batches: Sequence[StoredBatch], *, now: float) -> set[float]:
    """Merge the rollups of ``batches`` in ``conn``'s transaction (1-minute rows; 1-hour rows for
    the samples of folded minutes), then :func:`fold` the minutes that ended; returns the
    minutes of ``batches`` left open."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", cells.MERGE_LOCK)  # held to the commit
    minutes = sorted(cells.minutes_of(batches))
    opened = {row["m"] for row in await conn.fetch(_OPEN, minutes)} if minutes else set()
    # In a thread: grouping a flush's samples takes ~1 s of Python per 600,000, which on the
    # event loop would hold up every ingest round (and the publish -> commit lag) meanwhile.
    merged = await asyncio.to_thread(cells.merge_rows, batches, hourly=set(minutes) - opened)
    for table, args in merged.items():
        if args[0]:
            await conn.execute(cells.upsert_sql(table), *args)
    if opened:
        await conn.execute(_OPENED, sorted(opened))
    return opened - set(await fold(conn, now=now))


async def fold(conn: asyncpg.Connection, *, now: float) -> list[float]:
    """Add the 1-minute rows of every open minute that ended :data:`FOLD_DELAY` before ``now``
    to the 1-hour rows, in ``conn``'s transaction (taking :data:`~.cells.MERGE_LOCK` until it ends);
    returns those minutes."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", cells.MERGE_LOCK)
    closed = [row["m"] for row in await conn.fetch(_CLOSED, now - 60 - FOLD_DELAY)]
    for minute in closed:
        await conn.execute(cells.fold_sql(), minute)
        await conn.execute(_FOLDED, minute)
    return closed


async def prune(conn: asyncpg.Connection, *, now: float) -> int:
    """Drop the folded minutes older than :data:`KEEP_MINUTES` from ``rollup_minutes`` by moving
    the horizon past them, in ``conn``'s transaction (under :data:`~.cells.MERGE_LOCK`); the list
    then holds a day of minutes, not every minute since the migration. Returns the rows dropped."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", cells.MERGE_LOCK)
    status = await conn.execute(_PRUNE, now - KEEP_MINUTES)
    return int(status.rsplit(" ", 1)[-1])

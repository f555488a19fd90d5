"""The rollups of ingested batches: which batches wait for their merge, the merge, the repair.

A batch's samples are written (by :meth:`~signalfire.gateway.store.Store.write_metrics`) in
one transaction with a ``rollup_pending`` row per batch (:meth:`RollupRound.copied`); the
batch then waits in memory (:meth:`Rollups.add`) until :meth:`Rollups.flush` merges many rounds
at once, deleting their rows in the merge's transaction. The row is what makes each batch
count exactly once: a redelivered batch whose row is still there is not written again but
waits for the merge again (:meth:`RollupRound.exclude`); a flush merges only the batches whose
rows it deleted (another gateway, or an earlier flush, may have merged the others); a row left
behind by a gateway that died is an orphan that :meth:`Rollups.repair` recomputes from the raw
samples (:mod:`.repair`).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable

import asyncpg

from signalfire.gateway.config import RetentionConfig
from signalfire.gateway.rollup import cells, fold
from signalfire.gateway.rollup.cells import StoredBatch
from signalfire.gateway.rollup.repair import RollupRepair, repair_rollups
from signalfire.telemetry import Registry

# With each sequence its batch's host and earliest and latest sample time: what the repair
# recomputes should the message never come back (:func:`.repair.repair_rollups`).
_ADD_PENDING = """
INSERT INTO rollup_pending (seq, host, t_min, t_max)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::float8[])
ON CONFLICT DO NOTHING
"""

_PENDING = "SELECT seq FROM rollup_pending WHERE seq = ANY($1::bigint[])"

_TAKE_PENDING = "DELETE FROM rollup_pending WHERE seq = ANY($1::bigint[]) RETURNING seq"


#: How long after a minute ends its waiting batches are merged (``flush(ended_only=True)``):
#: batches stamped in it that arrive later are merged on their own (correct, just dearer).
MERGE_GRACE = 5.0


class RollupRound:
    """The rollups of one write transaction of metric batches (from :meth:`Rollups.round`).

    The writer calls, inside its transaction and in this order, :meth:`exclude` once with
    every batch, then :meth:`copied` or :meth:`inserted` for what it wrote; after the commit,
    :meth:`Rollups.add` takes what waits for the merge. A round whose transaction fails is
    dropped: nothing of it reached the database or the backlog.
    """

    def __init__(self, sequences: list[int] | None, clock: Callable[[], float] = time.time) -> None:
        self._sequences = sequences
        self._clock = clock
        self._batches: list[tuple[str, StoredBatch]] = []
        #: Batches that wait for the merge, by sequence, with the samples this round stored.
        self.waiting: dict[int, tuple[StoredBatch, int]] = {}

    async def exclude(
        self, conn: asyncpg.Connection, batches: list[tuple[str, StoredBatch]], *, redelivered: bool
    ) -> set[int]:
        """Positions in ``batches`` (host and samples of each metric batch, in the order of the
        round's sequences) not to write: stored by an earlier delivery whose merge never
        happened (asked only when ``redelivered``: some may have been stored before). They wait
        for the merge again, with no new samples."""
        self._batches = batches
        sequences = self._sequences
        if sequences is None or not redelivered or not sequences:
            return set()
        rows = await conn.fetch(_PENDING, sequences)
        before = {row["seq"] for row in rows}
        skipped = {i for i, seq in enumerate(sequences) if seq in before}
        for i in skipped:
            self.waiting[sequences[i]] = (batches[i][1], 0)
        return skipped

    async def copied(self, conn: asyncpg.Connection, positions: list[int]) -> None:
        """Every sample of the batches at ``positions`` was new: they wait for the merge (or,
        in a round without sequences, are merged now)."""
        sequences = self._sequences
        if sequences is None:
            await self.inserted(conn, [row for i in positions for row in cells.triples(self._batches[i][1])])
            return
        new = [(sequences[i], *self._batches[i]) for i in positions if self._batches[i][1].ids]
        if not new:
            return
        spans = [(b.time, b.time) if b.times is None else (min(b.times), max(b.times)) for _, _, b in new]
        await conn.execute(
            _ADD_PENDING,
            [seq for seq, _, _ in new],
            [host for _, host, _ in new],
            [first for first, _ in spans],
            [last for _, last in spans],
        )
        for seq, _, stored in new:
            self.waiting[seq] = (stored, len(stored.ids))

    async def inserted(self, conn: asyncpg.Connection, rows: list[tuple[int, float, float]]) -> None:
        """Only ``rows`` (series id, time, value) were new (others were stored before): they are
        merged now, in the writer's transaction, as no pending row can tell them apart later."""
        if not rows:
            return
        ids, times, values = (list(column) for column in zip(*rows, strict=True))
        await fold.merge(conn, [StoredBatch(times[0], ids, values, times)], now=self._clock())


class Rollups:
    """The one owner of the rollups of ingested samples.

    What ingest calls:

    * :meth:`round` before writing metric batches, handed to the writer;
    * :meth:`add` once the write committed: the batches that wait for a merge, whose messages
      must not be acknowledged before it;
    * :meth:`flush` every ``rollup_flush`` with ``ended_only``: merges the waiting batches whose
      minutes have all ended (:data:`MERGE_GRACE` ago), so that a 1-minute row is written once
      rather than once per ``rollup_flush``, and returns what may be acknowledged now; the
      messages of the others stay unacknowledged (ingest tells JetStream they are in progress);
    * :meth:`flush` without it when stopping: merges everything.

    Maintenance calls :meth:`repair` on its schedule.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        retention: RetentionConfig | None = None,
        repair_after: float = 3600.0,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.time,
        max_waiting: int = 20_000,
    ) -> None:
        self.pool = pool
        #: The wall clock orphans' age is measured by.
        self.clock = clock
        self.retention = retention if retention is not None else RetentionConfig()
        self.repair_after = repair_after
        #: Stored batches whose rollups are not merged yet, by stream sequence, with the new
        #: samples each brought.
        self._backlog: dict[int, tuple[StoredBatch, int]] = {}
        #: At most this many batches wait for their minutes to end; past it, a flush merges
        #: every batch (a busy fleet then pays more merges rather than holding more messages).
        self.max_waiting = max_waiting
        #: When the next interval is due to be folded, as the last merge or fold saw it (-inf: ask).
        self._fold_at = -math.inf
        registry = registry if registry is not None else Registry("signalfire_gateway")
        self.repairs = registry.counter(
            "rollup_repairs", "Orphaned batches (message never redelivered) whose rollups were repaired"
        )
        self.unrepairable = registry.counter(
            "rollup_orphans_unrepairable",
            "Orphaned batches dropped without repair (no host or time range, or samples past retention)",
        )

    @staticmethod
    def round(sequences: list[int] | None = None) -> RollupRound:
        """The rollups of one write of metric batches. ``sequences``: the stream sequence of
        each batch, whose rollups then wait for :meth:`flush`; ``None`` merges them in the
        write's own transaction."""
        return RollupRound(sequences)

    def add(self, committed: RollupRound) -> dict[int, int]:
        """Take the batches of a committed round that wait for the merge; returns their
        sequences with the new samples each stored (0 for a batch stored before)."""
        waiting = committed.waiting
        for seq, (stored, new) in waiting.items():
            values = stored.values if isinstance(stored.values, array) else array("d", stored.values)
            self._backlog[seq] = (StoredBatch(stored.time, stored.ids, values, stored.times), new)
        return {seq: new for seq, (_, new) in waiting.items()}

    def __len__(self) -> int:
        """Batches waiting for the merge."""
        return len(self._backlog)

    def fold_due(self) -> bool:
        """Whether 5 minutes or an hour may have ended long enough ago to be folded into the
        5-minute or 1-hour rows (:meth:`flush` then folds them even when no batch waits)."""
        return self.clock() >= self._fold_at

    async def flush(self, *, ended_only: bool = False) -> dict[int, int]:
        """Merge the rollups of every waiting batch (``ended_only``: of those whose samples all
        fall in minutes that ended :data:`MERGE_GRACE` ago, unless more than ``max_waiting``
        batches wait), in one transaction; returns their sequences with the new samples of each
        (as :meth:`add` did): their messages may be acknowledged now. On an error (raised) the
        batches keep waiting.

        Each batch counts once: only the batches whose ``rollup_pending`` row this transaction
        deletes are merged (another gateway, or an earlier flush, may have done the others).
        The merge writes the 1-minute rows, and folds the intervals that ended into the
        5-minute and 1-hour rows (:mod:`.fold`); with no batch waiting, a flush only folds
        (when :meth:`fold_due`).
        """
        now = self.clock()
        if ended_only and len(self._backlog) <= self.max_waiting:
            ended = (now - MERGE_GRACE) // 60 * 60  # samples before it are in minutes that ended
            batches = {seq: item for seq, item in self._backlog.items() if item[0].last_time < ended}
            self._backlog = {seq: item for seq, item in self._backlog.items() if seq not in batches}
        else:
            batches, self._backlog = self._backlog, {}
        if not batches and not self.fold_due():
            return {}
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # first: merges of several gateways then take their pending rows in turn too
                await conn.execute("SELECT pg_advisory_xact_lock($1)", cells.MERGE_LOCK)
                rows = await conn.fetch(_TAKE_PENDING, list(batches)) if batches else []
                mine = [batches[row["seq"]][0] for row in rows]
                if mine:
                    self._fold_at = await fold.merge(conn, mine, now=now)
                else:
                    self._fold_at = await fold.fold(conn, now=now)
        except BaseException:
            self._backlog = {**batches, **self._backlog}
            raise
        return {seq: new for seq, (_, new) in batches.items()}

    async def repair(self, now: float | None = None) -> RollupRepair:
        """:func:`.repair.repair_rollups` of the orphans older than ``repair_after``, counted;
        first the intervals that ended and that no gateway folded (one that stopped, or a fleet
        gone quiet: a fold otherwise comes with the next merge) are folded."""
        now = self.clock() if now is None else now
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                self._fold_at = await fold.fold(conn, now=now)
            done = await repair_rollups(conn, self.repair_after, self.retention, now=now)
        self.repairs.inc(done.repaired)
        self.unrepairable.inc(done.unrepairable)
        return done

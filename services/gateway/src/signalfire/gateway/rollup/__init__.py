"""The 1-minute, 5-minute and 1-hour rollups of samples: one unit owns them, from aggregation to repair.

* :mod:`.cells` — the arithmetic: cells, histograms and percentiles, the merge rows and the
  upsert statement (pure, no I/O);
* :mod:`.pending` — :class:`Rollups`, the one interface the gateway uses: the batches that
  wait for their merge (each with a ``rollup_pending`` row written with its samples), the
  merge of many rounds at once, and what may be acknowledged after it;
* :mod:`.fold` — the 5-minute and 1-hour rows made from closed minutes (one merge per series and
  minute);
* :mod:`.repair` — recomputing the rollups of orphaned batches (stored, but their message
  never came back to have them merged), run by :class:`Rollups` on maintenance's schedule.

The arithmetic is re-exported here, so readers (the query API, benchmarks) use
``rollup.quantile``, ``rollup.merge`` and the like.
"""

from signalfire.gateway.rollup.cells import (
    EXACT_MAX,
    GAMMA,
    MERGE_LOCK,
    RELATIVE_ERROR,
    TABLES,
    Cell,
    Hist,
    Row,
    StoredBatch,
    aggregate,
    coarsen,
    counts,
    hist_key,
    merge,
    merge_rows,
    minutes_of,
    quantile,
    triples,
    upsert_args,
    upsert_sql,
)
from signalfire.gateway.rollup.pending import RollupRound, Rollups
from signalfire.gateway.rollup.repair import (
    PendingBatch,
    RepairPlan,
    RollupRepair,
    plan_repair,
    repair_rollups,
)

__all__ = [
    "EXACT_MAX",
    "GAMMA",
    "MERGE_LOCK",
    "RELATIVE_ERROR",
    "TABLES",
    "Cell",
    "Hist",
    "PendingBatch",
    "RepairPlan",
    "RollupRepair",
    "RollupRound",
    "Rollups",
    "Row",
    "StoredBatch",
    "aggregate",
    "coarsen",
    "counts",
    "hist_key",
    "merge",
    "merge_rows",
    "minutes_of",
    "plan_repair",
    "quantile",
    "repair_rollups",
    "triples",
    "upsert_args",
    "upsert_sql",
]

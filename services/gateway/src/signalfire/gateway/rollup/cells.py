"""1-minute and 1-hour rollups of samples, aggregated in memory and merged with upserts.

A rollup row holds, per series and bucket, the count, sum, min, max, the newest value and a
histogram for percentiles. While the row holds at most :data:`EXACT_MAX` samples, the
histogram is the values themselves, ``{"v": [...]}`` (in no particular order). Beyond that it
maps a key per value to a count: ``"z"`` for values within 1e-9 of zero, ``"p<i>"``/``"n<i>"``
for positive/negative values with ``i = ceil(log(|v|) / log(GAMMA))`` (log-spaced buckets, as
DDSketch's). Histograms merge (value lists join while the total stays within ``EXACT_MAX``,
else both sides become counts, which add up), which is what lets late data and several
gateways merge into the same row; PostgreSQL's ``sf_hist_merge`` (migration 0006) does the same.

A percentile read back (:func:`quantile`) uses the raw query's definition, ``percentile_disc``
(the value at rank ``ceil(q * n)``): exact from values; from counts, the representative of the
bucket holding that rank, which is within :data:`RELATIVE_ERROR` (0.99 %) of every value in the
bucket, so of the exact answer too (within 1e-9 absolute for values that close to zero).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import msgspec

GAMMA = 1.02
_LOG_GAMMA = math.log(GAMMA)
_ZERO = 1e-9
#: The largest relative error of a percentile read from the buckets: a bucket's representative
#: (:func:`_key_value`) against any value of the bucket.
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)
#: Rows with at most this many samples keep the values, so their percentiles are exact. At the
#: usual 10 s interval a 1-minute row holds 6. ``sf_hist_merge`` (migration 0006) and the
#: repair queries (:mod:`.repair`) use the same number.
EXACT_MAX = 32

#: A histogram: ``{"v": [values]}``, or counts by bucket key.
Hist = dict[str, Any]

#: The transaction-level advisory lock every writer of the rollup tables holds until it commits
#: (the merges, the fold, the repair): they take turns, so :func:`upsert_sql` never meets a row
#: another one inserted meanwhile, and nobody deadlocks on rows updated in different orders.
MERGE_LOCK = 0x5F72_6D67  # "_rmg"

#: Rollup tables by bucket width in seconds.
TABLES = {60: "samples_1m", 300: "samples_5m", 3600: "samples_1h"}

_json = msgspec.json.Encoder()


def hist_key(value: float) -> str:
    """The histogram bucket of ``value``."""
    magnitude = abs(value)
    if magnitude < _ZERO:
        return "z"
    index = math.ceil(math.log(magnitude) / _LOG_GAMMA)
    return f"p{index}" if value > 0 else f"n{index}"


# Metric values repeat a lot (0, 100, small integers, rounded readings): remembering the key of
# values seen saves the log per value on the ingest path. A plain dict read through ``map`` (no
# Python call per value when every key is known), cleared when full.
_hist_keys: dict[float, str] = {}
_HIST_KEYS = 1 << 16


def hist_keys(values: Iterable[float]) -> list[str]:
    """:func:`hist_key` of each of ``values``."""
    values = values if isinstance(values, Sequence) else list(values)
    keys: list[str | None] = list(map(_hist_keys.get, values))
    if None in keys:
        if len(_hist_keys) > _HIST_KEYS:
            _hist_keys.clear()
        for i, key in enumerate(keys):
            if key is None:
                keys[i] = _hist_keys[values[i]] = hist_key(values[i])
    return keys  # type: ignore[return-value]  # every None was replaced


def _key_value(key: str) -> float:
    """A representative value of a bucket (the point of least relative error)."""
    if key == "z":
        return 0.0
    magnitude = 2 * GAMMA ** int(key[1:]) / (1 + GAMMA)
    return magnitude if key[0] == "p" else -magnitude


def counts(hist: Mapping[str, Any]) -> dict[str, int]:
    """The bucket counts of a histogram (made from its values if it kept them)."""
    values = hist.get("v")
    if values is None:
        return dict(hist)
    return dict(Counter(hist_keys(values)))


def quantile(hist: Mapping[str, Any], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of a histogram, as ``percentile_disc(q)`` of its samples:
    exact while it keeps the values, else within :data:`RELATIVE_ERROR` of it (see the module
    docstring); ``None`` when it is empty."""
    values = hist.get("v")
    if values is not None:
        if not values:
            return None
        ordered_values = sorted(values)
        return float(ordered_values[max(1, math.ceil(q * len(ordered_values))) - 1])
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))  # 1-based, as PostgreSQL's percentile_disc
    ordered = sorted((_key_value(k), n) for k, n in hist.items())
    seen = 0
    for value, n in ordered:
        seen += n
        if seen >= rank:
            return value
    return ordered[-1][0]


def merge(into: Hist, other: Mapping[str, Any], limit: int | None = EXACT_MAX) -> Hist:
    """Add histogram ``other`` to ``into`` (in place; also returned). The values stay known
    while both sides know theirs and together they are at most ``limit`` (``None``: any
    number, for a query's merge of stored rows, which is not stored again); otherwise the
    result is bucket counts."""
    mine, theirs = into.get("v", None if into else ()), other.get("v", None if other else ())
    if mine is not None and theirs is not None and (limit is None or len(mine) + len(theirs) <= limit):
        if theirs:
            into["v"] = [*mine, *theirs]
        return into
    if mine is not None:  # `into` held values: counts from now on
        made = counts(into)
        into.clear()
        into.update(made)
    get = into.get
    for key, n in (counts(other) if theirs is not None else other).items():
        into[key] = get(key, 0) + n
    return into


@dataclass
class Cell:
    """The aggregate of one series in one bucket."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    last: float = 0.0
    last_time: float = -math.inf
    hist: Hist = field(default_factory=dict)

    def add(self, when: float, value: float) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if when >= self.last_time:
            self.last_time = when
            self.last = value
        hist = self.hist
        exact = hist.get("v") if hist else []
        if exact is not None and len(exact) < EXACT_MAX:
            exact.append(value)
            hist["v"] = exact
            return
        if exact is not None:  # one value too many: counts from now on
            made = counts(hist)
            hist.clear()
            hist.update(made)
        key = hist_key(value)
        hist[key] = hist.get(key, 0) + 1

    def merge(self, other: Cell) -> None:
        """Add ``other`` (a cell of the same series, in a bucket inside this one's)."""
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if other.last_time >= self.last_time:
            self.last_time = other.last_time
            self.last = other.last
        merge(self.hist, other.hist)


@dataclass
class StoredBatch:
    """The samples of one stored message, kept until they are rolled up: the series ids and
    values, and either one time for all of them (``times`` is ``None``) or one per sample."""

    time: float
    ids: list[int]
    #: A list, or an ``array('d')`` while it waits for its merge (8 bytes a value, not 32).
    values: Sequence[float]
    times: list[float] | None = None

    @property
    def last_time(self) -> float:
        """The time of its newest sample."""
        return self.time if self.times is None else max(self.times)


#: One rollup row: series id, bucket start, count, sum, min, max, last, last time, histogram.
Row = tuple[int, float, int, float, float, float, float, float, Hist]


def _histogram(group: list[float]) -> Hist:
    if len(group) <= EXACT_MAX:
        return {"v": group}
    return dict(Counter(hist_keys(group)))


def minutes_of(batches: Iterable[StoredBatch]) -> set[float]:
    """The starts of the 1-minute buckets the samples of ``batches`` fall in."""
    minutes: set[float] = set()
    for batch in batches:
        if batch.times is None:
            minutes.add(batch.time - batch.time % 60)
        else:
            minutes.update(t - t % 60 for t in set(batch.times))
    return minutes


def _uniform_rows(batches: list[StoredBatch], width: int) -> list[Row]:
    """The rows of batches with one time for all their samples. Batches of one layout (they
    share their ``ids`` list: agents send the same series every time) in one bucket are
    transposed at once (``zip``), so a series' values are gathered without a dict lookup per
    sample; a series in several layouts of a bucket (a host whose layout changed) is joined."""
    # (bucket, layout) -> [ids, values of each batch oldest first, time of the newest]
    layouts: dict[tuple[float, int], tuple[list[int], list[Sequence[float]], list[float]]] = {}
    for batch in sorted(batches, key=lambda b: b.time):
        key = (batch.time - batch.time % width, id(batch.ids))
        found = layouts.get(key)
        if found is None:
            layouts[key] = (batch.ids, [batch.values], [batch.time])
        else:
            found[1].append(batch.values)
            found[2][0] = batch.time
    # (bucket, series) -> (values oldest first, time of the newest)
    groups: dict[tuple[float, int], tuple[Sequence[float], float]] = {}
    rows: list[Row] = []
    for (bucket, _), (ids, columns, (newest,)) in layouts.items():
        for series_id, values in zip(ids, zip(*columns, strict=True), strict=True):
            key = (bucket, series_id)
            seen = groups.get(key)
            if seen is None:
                groups[key] = (values, newest)
            else:  # in another layout too: join, the newer layout's values last
                older, newer = sorted((seen, (values, newest)), key=lambda g: g[1])
                groups[key] = ((*older[0], *newer[0]), newer[1])
    for (bucket, series_id), (gathered, newest) in groups.items():
        g = list(gathered)
        rows.append((series_id, bucket, len(g), math.fsum(g), min(g), max(g), g[-1], newest, _histogram(g)))
    return rows


def parts_by_layout(batches: Sequence[StoredBatch], samples: int) -> Iterator[list[StoredBatch]]:
    """``batches`` in parts of about ``samples`` samples, each layout's batches (those sharing
    an ``ids`` list) in one part, so each of its series' rows is merged once; the batches
    with a time per sample form the last part."""
    layouts: dict[int, list[StoredBatch]] = {}
    varied: list[StoredBatch] = []
    for batch in batches:
        if batch.times is None:
            layouts.setdefault(id(batch.ids), []).append(batch)
        else:
            varied.append(batch)
    part: list[StoredBatch] = []
    size = 0
    for group in layouts.values():
        part.extend(group)
        size += len(group[0].ids) * len(group)
        if size >= samples:
            yield part
            part, size = [], 0
    part.extend(varied)
    if part:
        yield part


def merge_rows(
    batches: Sequence[StoredBatch], *, late: Mapping[int, Collection[float]] | None = None
) -> dict[str, list[list[object]]]:
    """The :func:`upsert_args` of every rollup table (by table name) for ``batches``, like
    :func:`aggregate` then ``coarsen`` but without a tuple or a :class:`Cell` per sample:
    the values of batches with one time are grouped per bucket in plain lists keyed by the
    series id, and the coarser rows are made from the sorted 1-minute rows (usually one each).

    ``late``: per coarser width (300, 3600), the minutes whose samples also go into its rows,
    their interval being folded already (``None``: every minute into every tier); the others
    are added to them later, from their 1-minute rows (:mod:`.fold`). The 5-minute rows hold
    no histogram (an empty one)."""
    width = 60
    rows = _uniform_rows([b for b in batches if b.times is None], width)
    varied = [b for b in batches if b.times is not None]
    if varied:
        cells = aggregate(
            ((series_id, when, value) for b in varied for series_id, when, value in triples(b)), width
        )
        if rows:  # both kinds: merge the cells of the same (series, minute)
            for row in rows:
                cell = cells.get((row[0], row[1]))
                if cell is None:
                    cells[(row[0], row[1])] = Cell(*row[2:])
                else:
                    cell.merge(Cell(*row[2:]))
        rows = [
            (sid, b, c.count, c.sum, c.min, c.max, c.last, c.last_time, c.hist)
            for (sid, b), c in cells.items()
        ]
    rows.sort(key=lambda row: (row[0], row[1]))
    minute = _columns(rows)
    tables = {TABLES[width]: minute}
    for coarse in (300, 3600):
        minutes = None if late is None else late.get(coarse, ())
        # (usually no minute is late: the list of a merge's rows is not walked for nothing)
        chosen = rows if minutes is None else [r for r in rows if r[1] in minutes] if minutes else []
        wide, same = _coarser(chosen, coarse, histograms=coarse != 300)
        if coarse == 300:
            hists: tuple[list[object], list[object]] | None = (["{}"] * len(wide), [None] * len(wide))
        else:  # every coarse row is one 1-minute row: its histogram JSON is reused
            hists = (minute[8], minute[9]) if same and len(wide) == len(rows) else None
        tables[TABLES[coarse]] = _columns(wide, hists)
    return tables


def _coarser(rows: list[Row], width: int, *, histograms: bool = True) -> tuple[list[Row], bool]:
    """The rows of ``width``-second buckets made from sorted 1-minute ``rows`` (without merging
    their histograms unless ``histograms``), and whether each is one of them."""
    wide: list[Row] = []
    same = True
    for row in rows:
        bucket = row[1] - row[1] % width
        if wide and wide[-1][0] == row[0] and wide[-1][1] == bucket:
            prev = wide[-1]
            last, last_time = (row[6], row[7]) if row[7] >= prev[7] else (prev[6], prev[7])
            hist = merge(dict(prev[8]), row[8]) if histograms else prev[8]
            wide[-1] = (
                row[0], bucket, prev[2] + row[2], prev[3] + row[3], min(prev[4], row[4]),
                max(prev[5], row[5]), last, last_time, hist,
            )  # fmt: skip
            same = False
        else:
            wide.append((row[0], bucket, *row[2:]))
    return wide, same


def triples(batch: StoredBatch) -> Iterable[tuple[int, float, float]]:
    """(series id, time, value) of every sample of a stored batch."""
    return zip(batch.ids, batch.times or repeat(batch.time), batch.values, strict=False)


def _counts_json(hist: Hist) -> str | None:
    """The tenth array's item for ``hist``: the JSON of its bucket counts when it holds values
    (``None`` when it holds counts already)."""
    return _json.encode(counts(hist)).decode() if "v" in hist else None


def _columns(rows: list[Row], hists: tuple[list[object], list[object]] | None = None) -> list[list[object]]:
    """The ten arrays of :func:`upsert_sql` from sorted rows; ``hists``: the last two, made
    already (by the rows' 1-minute twins)."""
    if not rows:
        return [[] for _ in range(10)]
    columns: list[list[object]] = [list(column) for column in zip(*rows, strict=True)]
    if hists is not None:
        columns[8], counted = hists
    else:
        hist_of: list[Hist] = [row[8] for row in rows]
        counted = [_counts_json(h) for h in hist_of]
        columns[8] = [_json.encode(h).decode() for h in hist_of]
    columns.append(counted)
    return columns


def coarsen(cells: Mapping[tuple[int, float], Cell], width: int) -> dict[tuple[int, float], Cell]:
    """The cells of wider buckets (e.g. 1 h from 1 min) made by merging narrower ones."""
    wide: dict[tuple[int, float], Cell] = {}
    for (series_id, bucket), cell in cells.items():
        key = (series_id, bucket - bucket % width)
        into = wide.get(key)
        if into is None:
            hist = dict(cell.hist)
            if "v" in hist:
                hist["v"] = list(hist["v"])  # `add` extends the list in place
            wide[key] = Cell(cell.count, cell.sum, cell.min, cell.max, cell.last, cell.last_time, hist)
        else:
            into.merge(cell)
    return wide


def aggregate(rows: Iterable[tuple[int, float, float]], width: int) -> dict[tuple[int, float], Cell]:
    """Cells keyed by (series id, bucket start) from ``(series_id, time, value)`` rows."""
    cells: dict[tuple[int, float], Cell] = {}
    for series_id, when, value in rows:
        key = (series_id, when - when % width)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Cell()
        cell.add(when, value)
    return cells


_FROM_ARRAYS = """
    SELECT s, to_timestamp(b) AS b, c, su, mi, ma, la, to_timestamp(lt) AS lt, h::jsonb AS h, hc
    FROM unnest($1::bigint[], $2::float8[], $3::bigint[], $4::float8[], $5::float8[], $6::float8[],
                $7::float8[], $8::float8[], $9::text[], $10::text[]) AS t(s, b, c, su, mi, ma, la, lt, h, hc)
"""


def _merge_sql(table: str, source: str) -> str:
    # New rows are inserted by the CTE; the UPDATE, on the statement's snapshot, sees only the
    # rows that existed before it. MERGE_LOCK keeps every other writer out until the commit, so
    # no row appears in between (which DO NOTHING would skip and the UPDATE would not see).
    return f"""
WITH t AS MATERIALIZED ({source}), inserted AS (
    INSERT INTO {table} (series_id, bucket, count, sum, min, max, last, last_time, hist)
    SELECT s, b, c, su, mi, ma, la, lt, h FROM t
    ON CONFLICT (series_id, bucket) DO NOTHING
)
UPDATE {table} AS r SET
    count = r.count + t.c,
    sum = r.sum + t.su,
    min = least(r.min, t.mi),
    max = greatest(r.max, t.ma),
    last = CASE WHEN t.lt >= r.last_time THEN t.la ELSE r.last END,
    last_time = greatest(r.last_time, t.lt),
    hist = CASE
        -- both kept their values and together they are at most EXACT_MAX: join them
        WHEN t.h ? 'v' AND (r.hist ? 'v' OR r.hist = '{{}}'::jsonb)
             AND jsonb_array_length(coalesce(r.hist -> 'v', '[]'::jsonb))
                 + jsonb_array_length(t.h -> 'v') <= {EXACT_MAX}
        THEN jsonb_build_object('v', coalesce(r.hist -> 'v', '[]'::jsonb) || (t.h -> 'v'))
        -- else counts: the row's (made from its values once, when it passes EXACT_MAX) plus
        -- the new samples' (made by the gateway, or here from the values)
        ELSE sf_hist_add(
            CASE WHEN r.hist ? 'v' THEN sf_hist_counts(r.hist) ELSE r.hist END,
            coalesce(t.hc::jsonb, CASE WHEN t.h ? 'v' THEN sf_hist_counts(t.h) ELSE t.h END))
    END
FROM t
WHERE r.series_id = t.s AND r.bucket = t.b
"""


def upsert_sql(table: str) -> str:
    """The statement merging cells (as the ten parallel arrays of :func:`upsert_args`) into
    ``table``; callers hold :data:`MERGE_LOCK` until they commit.

    New rows are inserted; existing ones are updated with the new samples' bucket counts made
    by the gateway (the tenth array): a row that holds counts adds them with ``sf_hist_add``
    (migration 0008), several times cheaper than ``sf_hist_merge``, which made the counts of
    both sides in SQL for every row. The rows end up as ``sf_hist_merge`` would leave them.
    """
    return _merge_sql(table, _FROM_ARRAYS)


def upsert_args(cells: dict[tuple[int, float], Cell]) -> list[list[object]]:
    """The ten arrays of :func:`upsert_sql`, sorted by key: per row the series id, bucket start,
    count, sum, min, max, last, last time, histogram JSON and, when the histogram holds values,
    the JSON of their bucket counts (else ``None``)."""
    columns: list[list[object]] = [[] for _ in range(10)]
    for (series_id, bucket), cell in sorted(cells.items()):
        for column, item in zip(
            columns,
            (
                series_id,
                bucket,
                cell.count,
                cell.sum,
                cell.min,
                cell.max,
                cell.last,
                cell.last_time,
                _json.encode(cell.hist).decode(),
                _counts_json(cell.hist),
            ),
            strict=True,
        ):
            column.append(item)
    return columns

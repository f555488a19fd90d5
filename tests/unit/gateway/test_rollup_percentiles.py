"""Percentiles read from rollups against the exact percentiles of the raw samples, with the
raw query's definition (PostgreSQL's ``percentile_disc``: the value at rank ``ceil(q * n)``):
exact while a row keeps its values, within ``RELATIVE_ERROR`` for any number of samples."""

from __future__ import annotations

import itertools
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signalfire.gateway import rollup
from signalfire.gateway.rollup import (
    EXACT_MAX,
    RELATIVE_ERROR,
    Cell,
    StoredBatch,
    counts,
    merge,
    merge_rows,
    minutes_of,
    quantile,
)

QUANTILES = (0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0)
MINUTE = 1_763_700_000.0 - 1_763_700_000.0 % 3600


def percentile_disc(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def close_enough(estimate: float, exact: float) -> bool:
    # the bound, plus float rounding at a bucket's edge and the zero bucket's 1e-9
    return abs(estimate - exact) <= RELATIVE_ERROR * (1 + 1e-9) * abs(exact) + 1e-9


magnitudes = st.one_of(
    st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False),
    st.floats(-1e-6, 1e-6, allow_nan=False),
    st.sampled_from([0.0, 1.0, 100.0, -2.0, 1.02, 1e6, 42.5]),
)


def stored_minute(values: list[float], flushes: list[int]) -> rollup.Hist:
    """The 1-minute row's histogram as ingest builds it: the samples in batches, the batches
    in rounds (each ``merge_rows``), the rounds merged into the row as the upsert merges."""
    row: rollup.Hist = {}
    cuts = sorted({min(len(values), c) for c in flushes} | {0, len(values)})
    for lo, hi in itertools.pairwise(cuts):
        batches = [
            StoredBatch(time=MINUTE + i % 60, ids=[1], values=[v]) for i, v in enumerate(values[lo:hi], lo)
        ]
        [hist] = merge_rows(batches)["samples_1m"][8]
        assert isinstance(hist, str)
        merge(row, msgspec.json.decode(hist))  # as sf_hist_merge merges it into the stored row
    return row


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(magnitudes, min_size=1, max_size=400), flushes=st.lists(st.integers(0, 400), max_size=6)
)
def test_rollup_percentiles_match_the_raw_samples(values: list[float], flushes: list[int]) -> None:
    hist = stored_minute(values, flushes)
    for q in QUANTILES:
        estimate, exact = quantile(hist, q), percentile_disc(values, q)
        assert estimate is not None
        if len(values) <= EXACT_MAX:
            assert estimate == exact, (q, values)
        else:
            assert close_enough(estimate, exact), (q, estimate, exact)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(magnitudes, min_size=1, max_size=40), min_size=1, max_size=30))
def test_a_query_over_many_rows_is_exact_while_every_row_kept_its_values(rows: list[list[float]]) -> None:
    merged: rollup.Hist = {}
    cells = []
    for values in rows:
        cell = Cell()
        for i, value in enumerate(values):
            cell.add(MINUTE + i, value)
        cells.append(cell)
        merge(merged, cell.hist, limit=None)  # as the query merges stored rows
    everything = [v for values in rows for v in values]
    for q in QUANTILES:
        estimate, exact = quantile(merged, q), percentile_disc(everything, q)
        assert estimate is not None
        if all(len(values) <= EXACT_MAX for values in rows):
            assert estimate == exact
        else:
            assert close_enough(estimate, exact)
    # The hourly row built from them keeps the values only while they are few enough.
    [hour] = rollup.coarsen({(1, MINUTE + 60 * i): c for i, c in enumerate(cells)}, 3600).values()
    assert ("v" in hour.hist) == (all(len(v) <= EXACT_MAX for v in rows) and len(everything) <= EXACT_MAX)


def test_three_samples_in_a_minute_give_the_raw_p95() -> None:
    # The reported case: raw agg=p95 gave the largest of three, the rollup the middle one.
    values = [201.5, 238.74, 276.97]
    hist = stored_minute(values, [1, 2])
    assert quantile(hist, 0.95) == percentile_disc(values, 0.95) == 276.97
    assert quantile(hist, 0.5) == 238.74


def test_rows_without_values_still_read_from_their_buckets() -> None:
    # A row written before the values were kept: counts only.
    old = {"p267": 1, "p276": 1, "p284": 1}
    assert quantile(old, 0.95) == pytest.approx(276.97, rel=RELATIVE_ERROR)
    merged = merge(dict(old), {"p267": 1, "v": [201.5]})
    assert "v" not in merged and sum(merged.values()) == 4
    assert quantile({}, 0.5) is None


def test_a_minute_of_many_samples_in_one_round_keeps_bucket_counts() -> None:
    # More than EXACT_MAX samples of one series reach one ingest round (an agent at 1 s): the
    # row is written with bucket counts at once, zero in its own bucket.
    values = [0.0, *(float(v) for v in range(1, 2 * EXACT_MAX))]
    batches = [StoredBatch(time=MINUTE + i % 60, ids=[1], values=[v]) for i, v in enumerate(values)]
    columns = merge_rows(batches)["samples_1m"]
    [text] = columns[8]
    assert isinstance(text, str)
    hist = msgspec.json.decode(text)
    assert "v" not in hist and hist["z"] == 1
    assert columns[2] == [len(values)]
    assert quantile(hist, 0.0) == 0.0
    for q in QUANTILES[1:]:
        assert close_enough(quantile(hist, q) or math.nan, percentile_disc(values, q))


def test_batches_with_one_time_and_with_times_per_sample_merge_into_one_row() -> None:
    batches = [
        StoredBatch(time=MINUTE, ids=[1], values=[1.0]),
        StoredBatch(time=MINUTE + 5, ids=[1, 1], values=[2.0, 3.0], times=[MINUTE + 5, MINUTE + 10]),
    ]
    minute = merge_rows(batches)["samples_1m"]
    # series, bucket, count, sum, min, max, last, last time: one row for the minute
    assert [column[0] for column in minute[:8]] == [1, MINUTE, 3, 6.0, 1.0, 3.0, 3.0, MINUTE + 10]
    [text] = minute[8]
    assert isinstance(text, str)
    assert sorted(msgspec.json.decode(text)["v"]) == [1.0, 2.0, 3.0]


def test_nothing_to_roll_up_is_empty_rows_and_an_empty_histogram_has_no_percentile() -> None:
    assert merge_rows([]) == {"samples_1m": [[]] * 10, "samples_5m": [[]] * 10, "samples_1h": [[]] * 10}
    assert quantile({"v": []}, 0.5) is None
    assert quantile({}, 0.5) is None


def test_the_merge_sends_the_counts_of_kept_values_and_leaves_open_minutes_out_of_the_hours() -> None:
    hour = MINUTE - MINUTE % 3600
    batches = [
        StoredBatch(time=hour + 5, ids=[1, 2], values=[1.0, 100.0]),
        StoredBatch(time=hour + 65, ids=[1], values=[2.0]),
    ]
    assert minutes_of(batches) == {hour, hour + 60}
    rows = merge_rows(batches)
    minute, hourly = rows["samples_1m"], rows["samples_1h"]
    # the tenth column: the counts of the values a row kept, made here instead of in SQL
    assert [msgspec.json.decode(t) for t in minute[9] if isinstance(t, str)] == [
        counts({"v": [1.0]}),
        counts({"v": [2.0]}),
        counts({"v": [100.0]}),
    ]
    assert hourly[2] == [2, 1]  # series 1: both minutes in its hour
    assert rows["samples_5m"][2] == [2, 1]  # ... and in its 5 minutes, without a histogram
    assert rows["samples_5m"][8:] == [["{}", "{}"], [None, None]]
    late = merge_rows(batches, late={300: {hour}, 3600: {hour}})
    for table in ("samples_5m", "samples_1h"):  # the open minute waits for its fold
        assert late[table][:3] == [[1, 2], [hour, hour], [1, 1]]
    assert merge_rows(batches, late={300: set(), 3600: set()})["samples_1h"] == [[]] * 10


def test_batches_of_shared_layouts_roll_up_as_sample_by_sample() -> None:
    """Batches sharing a layout (one ``ids`` list, as the store hands them) are gathered by
    transposing them; a series in two layouts of a minute (a host whose layout changed) is
    joined. The rows equal the per-sample aggregate's, newest value included."""
    first = [1, 2, 3]
    changed = [2, 3, 4]  # series 1 gone, 4 new, 2 and 3 in both
    batches = [
        StoredBatch(time=MINUTE + 1, ids=first, values=[1.0, 2.0, 3.0]),
        StoredBatch(time=MINUTE + 61, ids=first, values=[7.0, 8.0, 9.0]),  # the next minute
        StoredBatch(time=MINUTE + 31, ids=changed, values=[20.0, 30.0, 40.0]),
        StoredBatch(time=MINUTE + 11, ids=first, values=[4.0, 5.0, 6.0]),
        StoredBatch(time=MINUTE + 41, ids=changed, values=[21.0, 31.0, 41.0]),
    ]
    minute = merge_rows(batches)["samples_1m"]
    got = {
        (sid, bucket): (count, total, low, high, last, last_time, sorted(msgspec.json.decode(h)["v"]))
        for sid, bucket, count, total, low, high, last, last_time, h, _ in zip(*minute, strict=True)
    }
    cells = rollup.cells.aggregate(
        ((sid, b.time, v) for b in batches for sid, v in zip(b.ids, b.values, strict=True)), 60
    )
    assert got == {
        key: (c.count, c.sum, c.min, c.max, c.last, c.last_time, sorted(c.hist["v"]))
        for key, c in cells.items()
    }
    assert got[(2, MINUTE)][4:6] == (21.0, MINUTE + 41)  # the newest value, from the changed layout


def test_a_merge_is_made_in_parts_of_whole_layouts() -> None:
    """Each layout's batches stay in one part (its rows are merged once), parts close once they
    hold the samples asked for, and batches with a time per sample come last."""
    first, second, third = [1, 2], [3, 4, 5], [6]
    batches = [
        StoredBatch(time=MINUTE, ids=first, values=[1.0, 2.0]),
        StoredBatch(time=MINUTE, ids=second, values=[1.0, 2.0, 3.0]),
        StoredBatch(time=MINUTE + 1, ids=[7], values=[1.0], times=[MINUTE + 1]),
        StoredBatch(time=MINUTE + 5, ids=first, values=[3.0, 4.0]),
        StoredBatch(time=MINUTE + 5, ids=third, values=[1.0]),
    ]
    parts = list(rollup.cells.parts_by_layout(batches, 4))
    assert [[(b.ids, b.time) for b in part] for part in parts] == [
        [(first, MINUTE), (first, MINUTE + 5)],
        [(second, MINUTE), (third, MINUTE + 5)],
        [([7], MINUTE + 1)],
    ]
    assert sorted(b.time for part in parts for b in part) == sorted(b.time for b in batches)

"""Pure parts of the store: series keys, units, latest values and error classification."""

from __future__ import annotations

import asyncpg
import pytest

from signalfire.gateway.ingest import is_data_error
from signalfire.gateway.migrate import migrations
from signalfire.gateway.store import LatestValues, labels_json, unit_of


def test_labels_are_keyed_in_one_canonical_form() -> None:
    assert labels_json({"b": "2", "a": "1"}) == labels_json({"a": "1", "b": "2"}) == '{"a":"1","b":"2"}'
    assert labels_json({}) == "{}"


def test_units_come_from_the_metric_name() -> None:
    assert unit_of("cpu.usage_percent") == "percent"
    assert unit_of("mem.available_bytes") == "bytes"
    assert unit_of("disk.read_bytes_per_second") == "bytes_per_second"
    assert unit_of("net.errors_per_second") == "per_second"
    assert unit_of("host.uptime_seconds") == "seconds"
    assert unit_of("check.http.latency_ms") == "ms"
    assert unit_of("load.1m") == ""
    assert unit_of("procs.total") == ""


def test_latest_value_keeps_the_newest_sample() -> None:
    latest = LatestValues()
    key = ("web-1", "cpu.usage_percent", "{}")
    latest.update(key, 10.0, 1.0)
    latest.update(key, 5.0, 2.0)  # a late, older sample
    assert latest.get(key) == (10.0, 1.0)
    latest.update(key, 11.0, 3.0)
    assert latest.get(key) == (11.0, 3.0)
    assert len(latest) == 1


def test_only_data_errors_make_a_message_unstorable() -> None:
    assert is_data_error(asyncpg.exceptions.UntranslatableCharacterError("\\u0000"))
    assert is_data_error(asyncpg.exceptions.CheckViolationError("check"))
    assert not is_data_error(asyncpg.exceptions.UndefinedTableError("no table"))
    assert not is_data_error(asyncpg.exceptions.AdminShutdownError("shutdown"))
    assert not is_data_error(ConnectionResetError())


def test_migrations_are_numbered_and_in_order() -> None:
    found = migrations()
    assert found[0].version == 1
    assert [m.version for m in found] == sorted({m.version for m in found})
    assert all(m.sql.strip() for m in found)


def test_latest_values_of_waiting_batches_are_what_a_read_sees() -> None:
    """Batches are applied when read: the newest batch of each layout, in the order they came,
    and a late older sample never overwrites a newer one that waits."""
    latest = LatestValues()
    a = [("web-1", "cpu", "{}"), ("web-1", "mem", "{}")]
    b = [("web-1", "mem", "{}"), ("web-1", "disk", "{}")]  # another layout sharing "mem"
    latest.update_batch("web-1", a, 10.0, [1.0, 2.0])
    latest.update_batch("web-1", b, 11.0, [3.0, 4.0])
    latest.update_batch("web-1", a, 12.0, [5.0, 6.0])  # the newest "mem" is this one
    version = latest.version
    assert latest.get(("web-1", "mem", "{}")) == (12.0, 6.0)
    assert latest.get(("web-1", "disk", "{}")) == (11.0, 4.0)
    assert dict(latest.items())[("web-1", "cpu", "{}")] == (12.0, 5.0)
    latest.update(("web-1", "cpu", "{}"), 9.0, 0.0)  # late and older: ignored
    assert latest.get(("web-1", "cpu", "{}")) == (12.0, 5.0)
    latest.update_batch("web-1", b, 8.0, [7.0, 8.0])  # an older batch: applied per series
    assert latest.get(("web-1", "mem", "{}")) == (12.0, 6.0)
    assert latest.get(("web-1", "disk", "{}")) == (11.0, 4.0)
    assert len(latest) == 3
    assert latest.version > version
    # rounds committed out of order: an older batch of a layout whose newer batch waits
    latest.update_batch("web-1", a, 14.0, [9.0, 9.5])
    latest.update_batch("web-1", a, 13.0, [8.0, 8.5])
    assert latest.get(("web-1", "cpu", "{}")) == (14.0, 9.0)
    latest.update_batch("web-1", b, 13.5, [1.5, 2.5])  # older than the host's newest, newer for disk
    assert latest.get(("web-1", "disk", "{}")) == (13.5, 2.5)
    assert latest.get(("web-1", "mem", "{}")) == (14.0, 9.5)


def test_a_batch_with_more_values_than_series_is_refused() -> None:
    latest = LatestValues()
    with pytest.raises(ValueError, match="2 series keys for 3 values"):
        latest.update_batch("web-1", [("web-1", "a", "{}"), ("web-1", "b", "{}")], 1.0, [1.0, 2.0, 3.0])


def test_the_series_gauge_applies_waiting_batches_at_most_every_five_seconds() -> None:
    """``/metrics`` counts the series at every scrape: counting applies the batches that wait
    for a read at most every 5 s (else a frequent scraper undoes the waiting), so a new
    series is counted within 5 s, and a read in between is exact all the same."""
    now = [100.0]
    latest = LatestValues(clock=lambda: now[0])
    a = [("web-1", "cpu", "{}"), ("web-1", "mem", "{}")]
    b = [("web-1", "mem", "{}"), ("web-1", "disk", "{}")]
    latest.update_batch("web-1", a, 10.0, [1.0, 2.0])
    assert latest.count() == 2  # the first count applies them
    latest.update_batch("web-1", a, 11.0, [3.0, 4.0])
    latest.update_batch("web-1", b, 12.0, [5.0, 6.0])  # brings "disk"
    now[0] += 4.9
    assert latest.count() == 2  # within 5 s: nothing applied for the gauge
    assert latest._waiting
    now[0] += 0.1
    assert latest.count() == 3
    assert not latest._waiting
    latest.update_batch("web-2", [("web-2", "cpu", "{}")], 13.0, [7.0])
    assert latest.count() == 3
    assert latest.get(("web-2", "cpu", "{}")) == (13.0, 7.0)  # a read applies everything
    assert latest.count() == 4 and len(latest) == 4

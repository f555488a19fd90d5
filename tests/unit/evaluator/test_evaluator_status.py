"""``signalfire evaluator status``: replica → partitions from the leases bucket's entries."""

from __future__ import annotations

from signalfire.evaluator.leases import Entry, Lease
from signalfire.evaluator.status import ownership, render


def entry(replica: str, time: float, partitions: list[str] | None = None) -> Entry:
    return Entry(
        lease=Lease(replica=replica, instance="x", time=time, partitions=partitions or []), revision=1
    )


def test_each_replica_lists_its_partitions_and_its_oldest_lease():
    entries = {
        "replica.a": entry("a", 99.5, ["00", "02", "fleet"]),
        "replica.b": entry("b", 99.0, ["01"]),
        "partition.00": entry("a", 99.0),
        "partition.02": entry("a", 97.0),
        "partition.fleet": entry("a", 99.5),
        "partition.01": entry("b", 99.8),
    }
    status = ownership(entries, 100.0)
    assert status["replicas"]["a"] == {
        "partitions": ["00", "02", "fleet"],
        "lease_age_max": 3.0,
        "announced": 0.5,
    }
    assert status["replicas"]["b"]["partitions"] == ["01"]
    assert status["unowned"] == []


def test_a_partition_nobody_holds_is_named():
    entries = {
        "replica.a": entry("a", 100.0, ["00", "03", "fleet"]),
        "partition.00": entry("a", 100.0),
        "partition.03": entry("a", 100.0),
    }
    status = ownership(entries, 100.0)
    assert status["unowned"] == ["01", "02", "fleet"]
    assert "not judged by any replica: 01 02 fleet" in render(status)


def test_an_empty_bucket_says_no_replica_holds_a_lease():
    assert "no evaluator replica holds a lease" in render(ownership({}, 100.0))

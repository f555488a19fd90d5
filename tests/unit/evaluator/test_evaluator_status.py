"""``signalfire evaluator status``: replica → partitions from the leases bucket's entries."""

from __future__ import annotations

from signalfire.evaluator.leases import Entry, Lease
from signalfire.evaluator.status import ownership, render


def entry(replica: str, time: float, partitions: list[str] | None = None, stored: float = 0.0) -> Entry:
    return Entry(
        lease=Lease(replica=replica, instance="x", time=time, partitions=partitions or []),
        revision=1,
        stored=stored,
    )


def test_each_replica_lists_its_partitions_and_its_oldest_lease():
    entries = {
        "replica.a": entry("a", 99.5, ["00", "02", "fleet"], stored=99.49),
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
        "clock_offset": 0.01,
    }
    assert status["replicas"]["b"]["partitions"] == ["01"]
    assert status["replicas"]["b"]["clock_offset"] is None  # the server's time not known
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


def test_a_replica_whose_clock_is_off_the_servers_is_shown_and_named():
    # a's announcement carries its clock, 4.2 s ahead of the time the server stored it
    entries = {
        "replica.a": entry("a", 104.2, ["00"], stored=100.0),
        "replica.b": entry("b", 100.3, ["01"], stored=100.0),
        "partition.00": entry("a", 104.2),
        "partition.01": entry("b", 100.3),
    }
    status = ownership(entries, 100.5)
    assert [status["replicas"][r]["clock_offset"] for r in "ab"] == [4.2, 0.3]
    table = render(status)
    assert "+4.20s" in table.splitlines()[1] and "+0.30s" in table.splitlines()[2]
    assert "clock off the NATS server's by more than 1s: a (+4.2s);" in table
    assert "b (" not in table

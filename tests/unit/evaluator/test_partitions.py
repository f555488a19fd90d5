"""Host partitions and their balanced assignment to evaluator replicas: every replica (and
any other tool) must compute the same answers from the same inputs."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from signalfire.evaluator.partitions import (
    FLEET_PARTITION,
    assign,
    fnv1a_32,
    host_partition,
    partition_names,
    token_partition,
)


def test_fnv1a_matches_the_published_test_vectors():
    # From the FNV reference (draft-eastlake-fnv): the empty string, "a" and "foobar".
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_a_host_partition_is_its_fnv1a_hash_modulo_the_partitions():
    assert host_partition("foobar", 16) == f"{0xBF9CF968 % 16:02d}"
    assert host_partition("foobar", 7) == f"{0xBF9CF968 % 7:02d}"


def test_hosts_spread_over_every_partition():
    counts = Counter(host_partition(f"host-{i}", 16) for i in range(16_000))
    assert set(counts) == set(partition_names(16)) - {FLEET_PARTITION}
    assert min(counts.values()) > 800  # 1,000 each on average


def test_the_fleet_rules_are_one_more_partition():
    assert partition_names(4) == ["00", "01", "02", "03", "fleet"]


def test_one_replica_owns_everything():
    assert set(assign(partition_names(16), ["a"]).values()) == {"a"}


def test_no_replicas_own_nothing():
    assert assign(partition_names(16), []) == {}


@given(st.sets(st.text("abcdefgh-0123456789", min_size=1, max_size=8), min_size=1, max_size=9))
def test_the_assignment_is_balanced_and_does_not_depend_on_the_order_replicas_are_listed(replicas):
    parts = partition_names(16)
    owners = assign(parts, sorted(replicas))
    assert owners == assign(parts, sorted(replicas, reverse=True))
    assert set(owners) == set(parts)
    load = Counter(owners.values())
    counts = [load.get(r, 0) for r in replicas]
    assert max(counts) - min(counts) <= 1


def test_a_third_replica_takes_its_share_and_moves_little_else():
    parts = partition_names(16)
    two = assign(parts, ["evaluator-a", "evaluator-b"])
    three = assign(parts, ["evaluator-a", "evaluator-b", "evaluator-c"])
    moved = [p for p in parts if two[p] != three[p]]
    newcomer = Counter(three.values())["evaluator-c"]
    assert newcomer in (5, 6)  # its fair share of 17
    # What the newcomer takes moves, and at most a couple more to even out the others.
    assert newcomer <= len(moved) <= newcomer + 2


def test_the_partition_hashes_the_host_subject_token_so_a_subject_tells_it():
    assert host_partition("web-1.example.com", 16) == token_partition("web-1_example_com", 16)
    assert host_partition("web-1.example.com", 16) == f"{fnv1a_32(b'web-1_example_com') % 16:02d}"

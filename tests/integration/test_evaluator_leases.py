"""Partition leases against a real JetStream KV bucket: races lost, leases taken over, a
renewal or release that meets another replica's write, and values nobody can read."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.errors import NoStreamResponseError
from nats.js.kv import KeyValue

from signalfire.bus import NatsConfig
from signalfire.evaluator.leases import PARTITION_PREFIX, Entry, Lease, LeaseKeeper, read_bucket

TTL = 5.0


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def kv(nc: object, nats_config: NatsConfig) -> KeyValue:
    js = cast(NATS, nc).jetstream()
    return await js.create_key_value(KeyValueConfig(bucket=f"{nats_config.prefix}_leases_test", history=1))


async def _holder(kv: KeyValue, partition: str) -> str | None:
    entry = (await read_bucket(kv)).get(PARTITION_PREFIX + partition)
    return entry.lease.replica if entry is not None else None


async def test_an_unreadable_value_is_skipped_and_the_others_are_read(kv: KeyValue) -> None:
    await kv.put("replica.broken", b"{not a lease")
    await kv.put("replica.wrong-shape", b'{"replica": 3}')
    keeper = LeaseKeeper(kv, "a", TTL)
    await keeper.announce(["00"])
    entries = await read_bucket(kv)
    assert sorted(entries) == ["replica.a"]
    assert entries["replica.a"].lease.partitions == ["00"]


async def test_a_claim_that_another_replica_won_is_refused_and_not_held(kv: KeyValue) -> None:
    a, b = LeaseKeeper(kv, "a", TTL), LeaseKeeper(kv, "b", TTL)
    assert await a.claim("00", None)
    # b saw the partition free before a's write landed: its create loses.
    assert await b.claim("00", None) is False
    assert b.held == {} and b.valid_until == {}
    assert await _holder(kv, "00") == "a"


async def test_a_lease_taken_over_is_not_renewed_and_is_dropped(kv: KeyValue) -> None:
    a, b = LeaseKeeper(kv, "a", TTL), LeaseKeeper(kv, "b", TTL)
    assert await a.claim("00", None)
    entries = await b.read()
    assert await b.claim("00", entries[PARTITION_PREFIX + "00"])  # (as though a's had expired)
    assert await a.renew("00") is False
    assert "00" not in a.held and "00" not in a.valid_until
    assert await _holder(kv, "00") == "b"
    # Nothing held: nothing to renew, and nothing written.
    assert await a.renew("00") is True
    assert await _holder(kv, "00") == "b"


async def test_a_renewal_stored_whose_answer_was_lost_keeps_the_lease(kv: KeyValue) -> None:
    """A NATS node died with a renewal's answer (or it came after the request's timeout): the
    bucket holds this process's renewal, the keeper still the revision before it. The next
    renewal is refused as written over, and must not read as "taken over" (every partition
    was dropped and taken again, with its history, after a JetStream leader's kill)."""
    a = LeaseKeeper(kv, "a", TTL)
    assert await a.claim("00", None)
    before = a.held["00"]
    stored = await kv.update(PARTITION_PREFIX + "00", a._value(), last=before)  # the lost answer
    assert await a.renew("00") is True
    assert a.held["00"] == stored and "00" in a.valid_until
    assert await a.renew("00") is True  # and the one after goes through
    assert a.held["00"] > stored
    assert await _holder(kv, "00") == "a"


async def test_a_lease_written_by_an_earlier_life_of_the_replica_is_not_taken_for_its_own(
    kv: KeyValue,
) -> None:
    a = LeaseKeeper(kv, "a", TTL)
    assert await a.claim("00", None)
    earlier = LeaseKeeper(kv, "a", TTL)  # the same replica id, another process (instance)
    await kv.update(PARTITION_PREFIX + "00", earlier._value(), last=a.held["00"])
    assert await a.renew("00") is False
    assert "00" not in a.held


async def test_a_lease_given_up_while_its_renewal_is_under_way_stays_given_up(kv: KeyValue) -> None:
    a = LeaseKeeper(kv, "a", TTL)
    assert await a.claim("00", None)
    renewal = asyncio.create_task(a.renew("00"))
    await asyncio.sleep(0)  # the renewal's update is on the wire
    a.drop("00")
    assert await renewal is True
    assert "00" not in a.held and "00" not in a.valid_until
    assert a.lapsed() == []


async def test_a_lease_given_up_while_a_takeover_races_its_renewal_stays_given_up(kv: KeyValue) -> None:
    a, b = LeaseKeeper(kv, "a", TTL), LeaseKeeper(kv, "b", TTL)
    assert await a.claim("00", None)
    entries = await b.read()
    assert await b.claim("00", entries[PARTITION_PREFIX + "00"])
    renewal = asyncio.create_task(a.renew("00"))
    await asyncio.sleep(0)
    a.drop("00")
    assert await renewal is True  # not "taken over": a had already let it go
    assert "00" not in a.held
    assert await _holder(kv, "00") == "b"


async def test_releasing_a_lease_another_replica_took_leaves_theirs_alone(kv: KeyValue) -> None:
    a, b = LeaseKeeper(kv, "a", TTL), LeaseKeeper(kv, "b", TTL)
    assert await a.claim("00", None)
    entries = await b.read()
    assert await b.claim("00", entries[PARTITION_PREFIX + "00"])
    await a.release("00")  # compare-and-delete refused: no error, b keeps it
    assert "00" not in a.held
    assert await _holder(kv, "00") == "b"
    await b.release("00")
    assert await _holder(kv, "00") is None


async def test_a_release_that_cannot_reach_the_bucket_is_raised(
    kv: KeyValue, nc: object, nats_config: NatsConfig
) -> None:
    a = LeaseKeeper(kv, "a", TTL)
    assert await a.claim("00", None)
    await cast(NATS, nc).jetstream().delete_key_value(f"{nats_config.prefix}_leases_test")
    with pytest.raises(NoStreamResponseError):
        await a.release("00")


async def test_an_entry_rewritten_since_it_was_observed_has_not_expired(kv: KeyValue) -> None:
    clock = Clock()
    keeper = LeaseKeeper(kv, "a", TTL, clock=clock)
    other = LeaseKeeper(kv, "b", TTL)
    await other.announce([])
    entry = (await keeper.read())["replica.b"]
    clock.now += TTL
    assert keeper.expired("replica.b", entry)
    assert keeper.live_replicas(await read_bucket(kv)) == ["a"]
    # b writes again; until this replica reads it, the new revision counts as just seen.
    await other.announce(["00"])
    rewritten = (await read_bucket(kv))["replica.b"]
    assert keeper.unchanged_for("replica.b", rewritten) == 0.0
    assert not keeper.expired("replica.b", rewritten)
    never_seen = Entry(Lease(replica="x", instance="y", time=0), 1)
    assert keeper.unchanged_for("replica.never-seen", never_seen) == 0.0


async def test_a_replica_whose_lease_lapsed_is_not_live_while_its_announcement_is_newer(kv: KeyValue) -> None:
    """A replica renews every lease at once: one lease unchanged for the TTL says it stopped,
    even while its announcement (written by another loop, seen later) has not expired yet;
    its partitions are then assigned to the live replicas at once."""
    clock = Clock()
    keeper = LeaseKeeper(kv, "a", TTL, clock=clock)
    other = LeaseKeeper(kv, "b", TTL)
    assert await other.claim("00", None)
    await keeper.read()  # b's lease seen
    clock.now += TTL / 2
    await other.announce(["00"])  # b's last announcement, after its last renewal
    entries = await keeper.read()
    assert keeper.live_replicas(entries) == ["a", "b"]
    clock.now += TTL / 2  # the lease unchanged for the TTL, the announcement for half of it
    assert not keeper.expired("replica.b", entries["replica.b"])
    assert keeper.live_replicas(entries) == ["a"]
    await other.renew("00")  # b renews: live again
    assert keeper.live_replicas(await keeper.read()) == ["a", "b"]


async def test_a_renewal_keeps_the_lease_valid_for_another_ttl_from_when_it_was_sent(kv: KeyValue) -> None:
    clock = Clock()
    a = LeaseKeeper(kv, "a", TTL, clock=clock)
    assert await a.claim("00", None)
    first = a.held["00"]
    clock.now += TTL
    assert a.lapsed() == ["00"]
    assert await a.renew("00") is True
    assert a.held["00"] > first
    assert a.valid_until["00"] == clock.now + TTL
    assert a.lapsed() == []


async def test_another_live_process_with_this_replicas_id_is_a_duplicate(kv: KeyValue) -> None:
    clock = Clock()
    first, second = LeaseKeeper(kv, "a", TTL, clock=clock), LeaseKeeper(kv, "a", TTL, clock=clock)
    other = LeaseKeeper(kv, "b", TTL, clock=clock)
    await first.announce([])
    await other.announce([])
    entries = await first.read()
    assert not first.duplicate(entries)  # its own announcement
    assert first.live_replicas(entries) == ["a", "b"]
    await second.announce([])
    entries = await first.read()
    assert first.duplicate(entries)
    clock.now += TTL  # the other process stopped announcing: no longer counted
    assert not first.duplicate(entries)
    assert first.live_replicas(entries) == ["a"]

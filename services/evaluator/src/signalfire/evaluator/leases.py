"""Partition leases of evaluator replicas, in the ``evaluator_leases`` KV bucket.

Keys:

- ``replica.<id>``: a replica's announcement, rewritten every poll while it runs;
- ``partition.<name>``: the lease of a partition (``00`` … and ``fleet``), held by the replica
  it names, taken and renewed by compare-and-set on the key's revision.

Both hold a :class:`Lease` (the bucket's contract, read by others too, is in
:mod:`signalfire.partitions`). An entry is *expired* once its revision has not changed for
``ttl`` seconds as the reader observes it on its own monotonic clock: no replica compares
its wall clock with another's. The holder counts its lease valid until ``ttl`` after it
*sent* its last successful write, which is before any other replica can observe that write,
so a replica stops judging a partition before another can take it.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterable

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from signalfire.bus import delete_if
from signalfire.partitions import PARTITION_PREFIX, REPLICA_PREFIX, Entry, Lease, read_bucket

__all__ = ["PARTITION_PREFIX", "REPLICA_PREFIX", "Entry", "Lease", "LeaseKeeper", "Presence", "read_bucket"]


class Presence(msgspec.Struct, kw_only=True):
    """A running replica's answer to a request on its id's control subject: that the id is
    taken, and by which process (named in the error of an evaluator that wants the same id)."""

    replica: str
    instance: str
    host: str
    pid: int


#: A replica's clock this far off the NATS server's is reported (a warning, ``evaluator
#: status``): the ``for:`` starts and decided-at times it writes are its own clock's.
CLOCK_OFFSET_WARN = 1.0


def clock_offset(entry: Entry) -> float | None:
    """The writer's wall clock minus the NATS server's at the write of ``entry`` (less the
    write's one-way latency: milliseconds on a healthy bus); ``None`` when the server's time
    is not known."""
    return entry.lease.time - entry.stored if entry.stored > 0 else None


class LeaseKeeper:
    """One replica's side of the leases: what it holds, and what it observed of the others."""

    def __init__(
        self,
        kv: KeyValue,
        replica: str,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.replica = replica
        self.instance = secrets.token_hex(8)
        self.ttl = ttl
        self._clock = clock
        self._wall = wall
        #: Partition → revision of the lease this replica holds.
        self.held: dict[str, int] = {}
        #: Partition → monotonic time until which its lease is surely still this replica's.
        self.valid_until: dict[str, float] = {}
        # key → (revision, or 0 while the key is absent; when this replica first saw it so)
        self._observed: dict[str, tuple[int, float]] = {}
        #: The newest server time of a write seen in the last :meth:`read` (announcements are
        #: renewed every poll, this replica's too): the NATS server's "now", less up to a poll.
        self.server_time = 0.0

    def _value(self, partitions: Iterable[str] = (), count: int = 0) -> bytes:
        lease = Lease(
            replica=self.replica,
            instance=self.instance,
            time=self._wall(),
            partitions=list(partitions),
            count=count,
        )
        return msgspec.json.encode(lease)

    async def read(self, expected: Iterable[str] = ()) -> dict[str, Entry]:
        """The bucket now; records when each key's revision (or absence, for the ``expected``
        keys) was first seen, for :meth:`expired` and :meth:`unchanged_for`."""
        entries = await read_bucket(self.kv)
        now = self._clock()
        observed = {}
        for key in {*entries, *self._observed, *expected}:
            entry = entries.get(key)
            revision = entry.revision if entry is not None else 0
            seen = self._observed.get(key)
            observed[key] = seen if seen is not None and seen[0] == revision else (revision, now)
        self._observed = observed
        self.server_time = max((entry.stored for entry in entries.values()), default=0.0)
        return entries

    def unchanged_for(self, key: str, entry: Entry | None) -> float:
        """Seconds this replica has seen ``key`` as it is now (``entry``, or absent)."""
        seen = self._observed.get(key)
        revision = entry.revision if entry is not None else 0
        if seen is None or seen[0] != revision:
            return 0.0
        return self._clock() - seen[1]

    def expired(self, key: str, entry: Entry) -> bool:
        """Whether ``entry`` has not changed for ``ttl`` seconds (as this replica saw it)."""
        return self.unchanged_for(key, entry) >= self.ttl

    def live_replicas(self, entries: dict[str, Entry]) -> list[str]:
        """Replica ids whose announcement has not expired, this one included, less those with
        a partition lease that has: a replica renews all its leases at once, so one lapsed
        lease says it stopped. (Its announcement, written by another loop, may have been seen
        up to a poll later than its last renewal; waiting for it to expire too made a
        takeover a poll or more slower than the lease.)"""
        lapsed = {
            entry.lease.replica
            for key, entry in entries.items()
            if key.startswith(PARTITION_PREFIX) and self.expired(key, entry)
        }
        live = {self.replica}
        for key, entry in entries.items():
            if not key.startswith(REPLICA_PREFIX) or entry.lease.replica in lapsed:
                continue
            if not self.expired(key, entry):
                live.add(entry.lease.replica)
        return sorted(live)

    def own_clock_offset(self, entries: dict[str, Entry]) -> float | None:
        """This process's clock minus the NATS server's, from its last announcement read back."""
        entry = entries.get(REPLICA_PREFIX + self.replica)
        if entry is None or entry.lease.instance != self.instance:
            return None
        return clock_offset(entry)

    def duplicate(self, entries: dict[str, Entry]) -> bool:
        """Whether another live process announces this replica's id."""
        key = REPLICA_PREFIX + self.replica
        entry = entries.get(key)
        return entry is not None and entry.lease.instance != self.instance and not self.expired(key, entry)

    async def announcement(self) -> int:
        """The revision of this id's announcement; 0 when there is none (never written, or
        withdrawn by a clean stop)."""
        try:
            entry = await self.kv.get(REPLICA_PREFIX + self.replica)
        except KeyNotFoundError:
            return 0
        return entry.revision or 0

    async def hold_id(self, revision: int) -> bool:
        """Announce this replica, only if its id's announcement is still the one read
        (``revision``, 0: none). ``False`` when another process announced the id meanwhile:
        of two processes starting under one id at once, one holds it."""
        key = REPLICA_PREFIX + self.replica
        try:
            if revision == 0:
                await self.kv.create(key, self._value())
            else:
                await self.kv.update(key, self._value(), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def announce(self, judged: Iterable[str], count: int = 0) -> None:
        """Announce this replica, judging ``judged`` of ``count`` host partitions."""
        await self.kv.put(REPLICA_PREFIX + self.replica, self._value(sorted(judged), count))

    async def claim(self, partition: str, entry: Entry | None) -> bool:
        """Take ``partition``'s lease: free (``entry`` None), expired, or this replica's own from
        an earlier life. ``False`` when another replica was faster."""
        sent = self._clock()
        key = PARTITION_PREFIX + partition
        try:
            if entry is None:
                revision = await self.kv.create(key, self._value())
            else:
                revision = await self.kv.update(key, self._value(), last=entry.revision)
        except KeyWrongLastSequenceError:
            return False
        self.held[partition] = revision
        self.valid_until[partition] = sent + self.ttl
        return True

    async def renew(self, partition: str) -> bool:
        """Renew a held lease. ``False`` when it is no longer this replica's (taken over);
        other errors (NATS unreachable) propagate, and the lease stays valid until
        :attr:`valid_until`."""
        sent = self._clock()
        last = self.held.get(partition)
        if last is None:  # given up meanwhile
            return True
        key = PARTITION_PREFIX + partition
        try:
            revision = await self.kv.update(key, self._value(), last=last)
        except KeyWrongLastSequenceError:
            if self.held.get(partition) != last:
                return True  # given up (or renewed) meanwhile
            own = await self._own_revision(key)
            if own is None:
                self.drop(partition)
                return False
            # This process's own earlier renewal, stored though its answer was lost (a NATS
            # node died with it, or it came after the request's timeout): still ours. Valid
            # from the next renewal on, which now has the right revision.
            self.held[partition] = own
            return True
        if self.held.get(partition) != last:
            return True  # given up while this renewal was under way: stays given up
        self.held[partition] = revision
        self.valid_until[partition] = sent + self.ttl
        return True

    async def _own_revision(self, key: str) -> int | None:
        """The revision of ``key`` when this process (its replica id and instance) wrote its
        current value; None when another did, or it is gone or unreadable."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        try:
            lease = msgspec.json.decode(entry.value, type=Lease)
        except msgspec.DecodeError:
            return None
        if (lease.replica, lease.instance) != (self.replica, self.instance):
            return None
        return entry.revision

    async def release(self, partition: str) -> None:
        """Give ``partition`` up (only if still this replica's: compare-and-delete)."""
        revision = self.held.pop(partition, None)
        self.valid_until.pop(partition, None)
        if revision is not None:
            with contextlib.suppress(KeyWrongLastSequenceError):  # refused: taken already
                await delete_if(self.kv, PARTITION_PREFIX + partition, revision)

    async def withdraw(self) -> None:
        """Delete this replica's announcement (a clean stop)."""
        await self.kv.delete(REPLICA_PREFIX + self.replica)

    def drop(self, partition: str) -> None:
        """Forget a lease without touching the bucket (it expired or was taken)."""
        self.held.pop(partition, None)
        self.valid_until.pop(partition, None)

    def lapsed(self) -> list[str]:
        """Held partitions whose lease may have expired for the others (not renewed in time)."""
        now = self._clock()
        return [p for p, until in self.valid_until.items() if now >= until]

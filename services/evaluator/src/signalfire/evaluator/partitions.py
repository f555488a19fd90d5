"""Which evaluator replica should own which partition (a host's partition, and the names of
the partitions: :mod:`signalfire.partitions`, shared with the gateway).

The balanced assignment is pure and deterministic, so every replica computes the same answer
from the same inputs: it gives each partition to the live replica that ranks highest for it
(rendezvous hashing: ``fnv1a_32("<partition>/<replica>")``, ties by replica id) among those
that do not yet hold their fair share (``partitions // replicas``, and one more for the first
``partitions % replicas`` replicas to reach it), partitions taken in their listed order.
Replicas joining or leaving move few partitions, and no replica holds more than one partition
above any other.
"""

from __future__ import annotations

from collections.abc import Sequence

from signalfire.partitions import (
    FLEET_PARTITION,
    fnv1a_32,
    host_partition,
    partition_names,
    token_partition,
)

__all__ = ["FLEET_PARTITION", "assign", "fnv1a_32", "host_partition", "partition_names", "token_partition"]


def assign(partitions: Sequence[str], replicas: Sequence[str]) -> dict[str, str]:
    """Partition → replica id: the balanced rendezvous assignment described above.

    Every replica computing it from the same partitions and live replicas gets the same
    answer. Empty when there are no replicas.
    """
    owners: dict[str, str] = {}
    if not replicas:
        return owners
    ids = sorted(set(replicas))
    base, extra = divmod(len(partitions), len(ids))
    load = dict.fromkeys(ids, 0)
    bigger = 0  # replicas holding base + 1 already: at most `extra` of them

    def has_room(replica: str) -> bool:
        return load[replica] < base or (load[replica] == base and bigger < extra)

    for partition in partitions:
        ranked = sorted(ids, key=lambda r: (-fnv1a_32(f"{partition}/{r}".encode()), r))
        owner = next(r for r in ranked if has_room(r))
        owners[partition] = owner
        load[owner] += 1
        if load[owner] == base + 1:
            bigger += 1
    return owners

"""Which partition a host belongs to, and which replica should own which partition.

Both are pure and deterministic, so every evaluator replica (and any other tool, in any
language) computes the same answers from the same inputs:

- a host's partition is ``fnv1a_32(its subject token) % count``, written as two digits
  (``"00"`` … ``"15"`` for 16). The subject token is the host name with every character
  outside ``A-Za-z0-9_-`` replaced by ``_`` (:func:`signalfire.subjects.subject_token`), the
  last token of its subjects: a replica can tell a payload's partition from its subject,
  without decoding it; rules with ``group_by: fleet`` pool every
  host's samples and so cannot be split by host: they form one more partition, ``"fleet"``;
- the balanced assignment gives each partition to the live replica that ranks highest for it
  (rendezvous hashing: ``fnv1a_32("<partition>/<replica>")``, ties by replica id) among those
  that do not yet hold their fair share (``partitions // replicas``, and one more for the
  first ``partitions % replicas`` replicas to reach it), partitions taken in their listed
  order. Replicas joining or leaving move few partitions, and no replica
  holds more than one partition above any other.
"""

from __future__ import annotations

from collections.abc import Sequence

from signalfire.subjects import subject_token

#: The partition of the rules that pool every host (``group_by: fleet``).
FLEET_PARTITION = "fleet"

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data`` (offset basis 2166136261, prime 16777619)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def token_partition(token: str, count: int) -> str:
    """The partition of the host whose subject token is ``token`` (``"00"``, ``"01"``, …)."""
    return f"{fnv1a_32(token.encode()) % count:02d}"


def host_partition(host: str, count: int) -> str:
    """The partition of ``host`` among ``count`` host partitions."""
    return token_partition(subject_token(host), count)


def partition_names(count: int) -> list[str]:
    """Every partition of ``count`` host partitions, then :data:`FLEET_PARTITION`."""
    return [f"{i:02d}" for i in range(count)] + [FLEET_PARTITION]


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

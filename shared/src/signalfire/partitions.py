"""Which partition a host belongs to: the names evaluator replicas hold leases on
(``partition.<name>`` in the ``evaluator_leases`` bucket) and every other reader of them (the
gateway's rules answer, ``signalfire evaluator status``) lists.

Pure and deterministic, so every process (and any other tool, in any language) computes the
same answers from the same inputs: a host's partition is ``fnv1a_32(its subject token) %
count``, written as two digits (``"00"`` … ``"15"`` for 16). The subject token is the host name
with every character outside ``A-Za-z0-9_-`` replaced by ``_``
(:func:`signalfire.subjects.subject_token`), the last token of its subjects: a replica can tell
a payload's partition from its subject, without decoding it. Rules with ``group_by: fleet``
pool every host's samples and so cannot be split by host: they form one more partition,
``"fleet"``. Which replica holds which partition: :mod:`signalfire.evaluator.partitions`.

The bucket's entries (:class:`Lease`, read whole by :func:`read_bucket`) are a contract too:
the evaluator replicas write them (:mod:`signalfire.evaluator.leases`), and the notifier's
evaluation watch (:mod:`signalfire.notifier.watch`) reads them to page when no replica judges
some hosts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec
from nats.js.kv import KeyValue

from signalfire.bus import bucket_entries
from signalfire.subjects import subject_token

#: Keys of the ``evaluator_leases`` bucket: ``replica.<id>``, a replica's announcement,
#: rewritten every poll while it runs; ``partition.<name>``, the lease of a partition, renewed
#: by compare-and-set every poll by the replica it names.
REPLICA_PREFIX = "replica."
PARTITION_PREFIX = "partition."

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


class Lease(msgspec.Struct, kw_only=True):
    """The value of a lease or announcement."""

    replica: str
    #: Random per process start: tells a replica's earlier life (or a duplicate id) apart.
    instance: str
    #: The writer's wall clock at the write, unix seconds (shown by ``evaluator status``).
    time: float
    #: In an announcement: the partitions the replica judges ...
    partitions: list[str] = []
    #: ... among this many host partitions (its ``partitions`` setting; 0 in a lease, and in
    #: an announcement written before the count was). Tells the readers which partitions
    #: there are: the newest announcement's count wins, so after the setting changed the
    #: leases of partitions gone are not missed.
    count: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    """A key of the bucket as last read."""

    lease: Lease
    revision: int
    #: When the NATS server stored this value: unix seconds on the server's clock, the clock
    #: of the metrics stream's timestamps (``lease.time`` is the writer's).
    stored: float = 0.0


def _stored(created: object) -> float:
    """Unix seconds of a watched KV entry's ``created``: the stream message's timestamp, a
    datetime (nats-py annotates it as an int)."""
    return created.timestamp() if isinstance(created, datetime) else 0.0


async def read_bucket(kv: KeyValue) -> dict[str, Entry]:
    """Every key of the leases bucket with its current value (unreadable values skipped),
    read whole (:func:`signalfire.bus.bucket_entries`): a key missing from a read would look
    free, a replica missing would look gone."""
    entries: dict[str, Entry] = {}
    for key, item in (await bucket_entries(kv)).items():
        try:
            lease = msgspec.json.decode(item.value or b"", type=Lease)
        except msgspec.DecodeError:
            continue
        entries[key] = Entry(lease=lease, revision=item.revision or 0, stored=_stored(item.created))
    return entries

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
"""

from __future__ import annotations

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

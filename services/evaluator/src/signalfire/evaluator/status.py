"""``signalfire evaluator status``: which evaluator replica judges which partitions, read
from the ``evaluator_leases`` KV bucket (:mod:`signalfire.evaluator.leases`)."""

from __future__ import annotations

from typing import Any

from signalfire.evaluator.leases import (
    CLOCK_OFFSET_WARN,
    PARTITION_PREFIX,
    REPLICA_PREFIX,
    Entry,
    clock_offset,
)
from signalfire.evaluator.partitions import FLEET_PARTITION


def ownership(entries: dict[str, Entry], now: float) -> dict[str, Any]:
    """Replica → its partitions and lease ages (seconds since each was last renewed, by the
    writer's clock), when it last announced itself and its clock's offset from the NATS
    server's at that announcement, and the partitions nobody holds (of those any replica
    announces or any lease names)."""
    replicas: dict[str, dict[str, Any]] = {}
    known: set[str] = set()
    held: set[str] = set()
    for key, entry in sorted(entries.items()):
        lease = entry.lease
        blank: dict[str, Any] = {
            "partitions": [],
            "lease_age_max": None,
            "announced": None,
            "clock_offset": None,
        }
        mine = replicas.setdefault(lease.replica, blank)
        if key.startswith(PARTITION_PREFIX):
            partition = key.removeprefix(PARTITION_PREFIX)
            held.add(partition)
            known.add(partition)
            mine["partitions"].append(partition)
            age = round(max(0.0, now - lease.time), 1)
            mine["lease_age_max"] = age if mine["lease_age_max"] is None else max(mine["lease_age_max"], age)
        elif key.startswith(REPLICA_PREFIX):
            mine["announced"] = round(max(0.0, now - lease.time), 1)
            offset = clock_offset(entry)
            mine["clock_offset"] = None if offset is None else round(offset, 2) or 0.0  # not -0.0
            known.update(lease.partitions)
    hosts = sorted(p for p in known if p != FLEET_PARTITION)
    if hosts and all(p.isdigit() for p in hosts):
        known.update(f"{i:02d}" for i in range(max(int(p) for p in hosts) + 1))
    return {
        "replicas": replicas,
        "unowned": sorted(known - held, key=lambda p: (p == FLEET_PARTITION, p)),
    }


def render(status: dict[str, Any]) -> str:
    """The table ``signalfire evaluator status`` prints."""
    lines = [f"{'REPLICA':<24} {'LEASE AGE':>9} {'SEEN':>6} {'CLOCK':>8}  PARTITIONS"]
    skewed = []
    for replica, info in sorted(status["replicas"].items()):
        age = "-" if info["lease_age_max"] is None else f"{info['lease_age_max']:.1f}s"
        seen = "-" if info["announced"] is None else f"{info['announced']:.1f}s"
        offset = info["clock_offset"]
        clock = "-" if offset is None else f"{offset:+.2f}s"
        if offset is not None and abs(offset) > CLOCK_OFFSET_WARN:
            skewed.append(f"{replica} ({offset:+.1f}s)")
        partitions = " ".join(info["partitions"]) or "(none)"
        lines.append(f"{replica:<24} {age:>9} {seen:>6} {clock:>8}  {partitions}")
    if skewed:
        lines.append(
            f"clock off the NATS server's by more than {CLOCK_OFFSET_WARN:g}s: {', '.join(skewed)}; "
            "the for: starts and decision times such a replica writes are off by as much (NTP)"
        )
    if status["unowned"]:
        lines.append(f"not judged by any replica: {' '.join(status['unowned'])}")
    if not status["replicas"]:
        lines.append("no evaluator replica holds a lease (partitions: 0, or none running)")
    return "\n".join(lines)

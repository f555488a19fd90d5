"""What every collector is: a declaration of the metrics it emits and a ``collect`` call."""

from __future__ import annotations

from typing import ClassVar, Protocol

import msgspec

from signalfire.events import Sample

#: Counts that need a walk over a whole kernel table (every process, the TCP connection
#: hash) are taken at most this often; ticks in between report the last count. At the
#: default interval that is every tick; at 1 s, every fifth.
TABLE_WALK_SECONDS = 5.0


def walk_due(now: float, last: float) -> bool:
    """Whether a walk last done at ``last`` is due again at ``now``. Ticks jitter: a walk
    due every 5 s must not slip to every other tick of a 5 s interval."""
    return now - last >= 0.9 * TABLE_WALK_SECONDS


class MetricSpec(msgspec.Struct, frozen=True):
    """One metric a collector emits: its name, the label names on each sample, its unit.

    The declaration is the documentation (``docs/agent.md`` lists these) and a test checks
    that a collector emits nothing it does not declare.
    """

    name: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    description: str = ""


class Collector(Protocol):
    """A source of samples; one module per collector under ``signalfire.collector.collectors``.

    ``collect(now)`` is called once per tick from a worker thread, so it may block briefly
    on system calls. ``now`` is the tick's monotonic time in seconds (for collectors that
    turn counters into rates); the batch carries the wall-clock time. A collector keeps
    whatever state it needs between calls and returns no sample it cannot measure yet.
    """

    #: Short name used in config switches, logs and ``agent.collector_errors{collector}``.
    name: ClassVar[str]
    METRICS: ClassVar[tuple[MetricSpec, ...]]

    def collect(self, now: float) -> list[Sample]: ...

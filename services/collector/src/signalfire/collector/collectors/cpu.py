"""CPU usage, total and per core, from the kernel's cumulative CPU time counters."""

from __future__ import annotations

from typing import Any, ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample


def _busy_and_total(times: Any) -> tuple[float, float]:
    """(busy, total) seconds of one ``psutil.cpu_times()`` reading, as psutil's own
    ``cpu_percent`` counts them: idle and iowait are not busy, and guest time is already
    part of user time on Linux, so it is not counted twice."""
    total = sum(times)
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _percent(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    busy = after[0] - before[0]
    total = after[1] - before[1]
    if total <= 0:
        return None  # no time has passed for this CPU: nothing to report yet
    return round(min(100.0, max(0.0, 100.0 * busy / total)), 2)


class CpuCollector:
    """Usage over the last interval. The state is this instance's own (psutil's
    ``cpu_percent`` keeps one per process), and the first reading is taken at construction,
    so the first ``collect`` already reports a real value instead of psutil's priming 0."""

    name: ClassVar[str] = "cpu"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "cpu.usage_percent", (), "percent", "Share of time all CPUs were busy (not idle or iowait)"
        ),
        MetricSpec("cpu.core.usage_percent", ("core",), "percent", "Share of time one logical CPU was busy"),
    )

    def __init__(self) -> None:
        self._total = _busy_and_total(psutil.cpu_times())
        self._cores = [_busy_and_total(t) for t in psutil.cpu_times(percpu=True)]

    def collect(self, now: float) -> list[Sample]:
        total = _busy_and_total(psutil.cpu_times())
        cores = [_busy_and_total(t) for t in psutil.cpu_times(percpu=True)]
        samples: list[Sample] = []
        value = _percent(self._total, total)
        if value is not None:
            samples.append(Sample("cpu.usage_percent", value))
        # CPUs can come and go (hotplug); compare only the ones seen both times.
        for core, (before, after) in enumerate(zip(self._cores, cores, strict=False)):
            value = _percent(before, after)
            if value is not None:
                samples.append(Sample("cpu.core.usage_percent", value, {"core": str(core)}))
        self._total, self._cores = total, cores
        return samples

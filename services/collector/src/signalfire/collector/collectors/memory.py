"""Memory and swap usage."""

from __future__ import annotations

from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample


class MemoryCollector:
    """``mem.used_percent`` counts what applications hold (total minus available), as
    ``free`` and psutil do, so page cache the kernel can reclaim is not "used"."""

    name: ClassVar[str] = "memory"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("mem.used_percent", (), "percent", "Share of memory not available to new applications"),
        MetricSpec("mem.available_bytes", (), "bytes", "Memory available to new applications"),
        MetricSpec("mem.total_bytes", (), "bytes", "Physical memory"),
        MetricSpec("swap.used_percent", (), "percent", "Share of swap in use (0 on a host without swap)"),
    )

    def collect(self, now: float) -> list[Sample]:
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return [
            Sample("mem.used_percent", round(mem.percent, 2)),
            Sample("mem.available_bytes", float(mem.available)),
            Sample("mem.total_bytes", float(mem.total)),
            Sample("swap.used_percent", round(swap.percent, 2) if swap.total else 0.0),
        ]

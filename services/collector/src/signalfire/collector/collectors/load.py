"""System load averages."""

from __future__ import annotations

from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample


class LoadCollector:
    """The kernel's 1, 5 and 15 minute load averages (runnable plus uninterruptible tasks),
    and the 1 minute one divided by the number of logical CPUs, which compares across hosts."""

    name: ClassVar[str] = "load"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("load.1m", (), "tasks", "Load average over 1 minute"),
        MetricSpec("load.5m", (), "tasks", "Load average over 5 minutes"),
        MetricSpec("load.15m", (), "tasks", "Load average over 15 minutes"),
        MetricSpec("load.1m_per_cpu", (), "tasks", "Load average over 1 minute per logical CPU"),
    )

    def __init__(self) -> None:
        self._cpus = psutil.cpu_count(logical=True) or 1

    def collect(self, now: float) -> list[Sample]:
        one, five, fifteen = psutil.getloadavg()
        return [
            Sample("load.1m", round(one, 2)),
            Sample("load.5m", round(five, 2)),
            Sample("load.15m", round(fifteen, 2)),
            Sample("load.1m_per_cpu", round(one / self._cpus, 3)),
        ]

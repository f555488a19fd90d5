"""How long the host has been up."""

from __future__ import annotations

import time
from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample


class UptimeCollector:
    """Uptime from the boot time psutil reads once; a reboot restarts the agent too."""

    name: ClassVar[str] = "uptime"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("host.uptime_seconds", (), "seconds", "Time since the host booted"),
        MetricSpec("host.boot_time", (), "unix seconds", "When the host booted"),
    )

    def __init__(self) -> None:
        self._boot = psutil.boot_time()

    def collect(self, now: float) -> list[Sample]:
        return [
            Sample("host.uptime_seconds", round(max(0.0, time.time() - self._boot), 1)),
            Sample("host.boot_time", self._boot),
        ]

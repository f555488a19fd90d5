"""Temperatures and fan speeds, where the host has sensors (bare metal; rarely a VM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample

#: How long a host without sensors goes before the agent looks for them again (a VM has
#: none, and looking means listing several directories).
LOOK_AGAIN_SECONDS = 60.0


def sensor_samples(
    temperatures: Mapping[str, Sequence[Any]], fans: Mapping[str, Sequence[Any]]
) -> list[Sample]:
    """Samples for psutil's ``sensors_temperatures()`` and ``sensors_fans()`` readings.
    Sensors without a label are numbered within their chip, so each series stays apart."""
    samples: list[Sample] = []
    for chip, readings in temperatures.items():
        for n, reading in enumerate(readings):
            labels = {"chip": chip, "sensor": reading.label or str(n)}
            samples.append(Sample("sensor.temperature_celsius", float(reading.current), labels))
            if reading.critical:
                samples.append(Sample("sensor.temperature_critical_celsius", float(reading.critical), labels))
    for chip, readings in fans.items():
        for n, reading in enumerate(readings):
            labels = {"chip": chip, "sensor": reading.label or str(n)}
            samples.append(Sample("sensor.fan_rpm", float(reading.current), labels))
    return samples


class SensorsCollector:
    """Reads the hardware monitoring chips (``/sys/class/hwmon`` on Linux). Reports nothing
    on a host without them, or where psutil cannot read them (macOS has no temperatures);
    there it looks for them again only every ``LOOK_AGAIN_SECONDS``."""

    name: ClassVar[str] = "sensors"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("sensor.temperature_celsius", ("chip", "sensor"), "celsius", "Temperature of a sensor"),
        MetricSpec(
            "sensor.temperature_critical_celsius",
            ("chip", "sensor"),
            "celsius",
            "The temperature the hardware calls critical",
        ),
        MetricSpec("sensor.fan_rpm", ("chip", "sensor"), "rpm", "Fan speed"),
    )

    def __init__(self) -> None:
        self._next_look = float("-inf")

    def collect(self, now: float) -> list[Sample]:
        if now < self._next_look:
            return []
        temperatures: dict[str, list[Any]] = getattr(psutil, "sensors_temperatures", dict)()
        fans: dict[str, list[Any]] = getattr(psutil, "sensors_fans", dict)()
        if not temperatures and not fans:
            self._next_look = now + LOOK_AGAIN_SECONDS
        return sensor_samples(temperatures, fans)

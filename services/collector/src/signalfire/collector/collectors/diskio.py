"""Disk I/O per block device: throughput, operations, busy time."""

from __future__ import annotations

from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.collector.collectors.rates import Rates
from signalfire.events import Sample
from signalfire.regex import compile_regex


class DiskIoCollector:
    """Per-second rates of the kernel's per-device I/O counters. Devices whose name matches
    ``exclude`` (by default partitions, loop, RAM and zram devices, as node_exporter does,
    so each physical disk is counted once) are skipped. The first tick only primes."""

    name: ClassVar[str] = "diskio"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("disk.read_bytes_per_second", ("device",), "bytes/s", "Bytes read from the device"),
        MetricSpec("disk.write_bytes_per_second", ("device",), "bytes/s", "Bytes written to the device"),
        MetricSpec("disk.reads_per_second", ("device",), "1/s", "Read operations completed"),
        MetricSpec("disk.writes_per_second", ("device",), "1/s", "Write operations completed"),
        MetricSpec(
            "disk.read_time_ms_per_op",
            ("device",),
            "milliseconds",
            "Average time a read took (iostat's r_await)",
        ),
        MetricSpec(
            "disk.write_time_ms_per_op", ("device",), "milliseconds", "Average time a write took (w_await)"
        ),
        MetricSpec(
            "disk.busy_percent", ("device",), "percent", "Share of time the device had I/O in flight (%util)"
        ),
    )

    def __init__(self, exclude: str = "") -> None:
        self.exclude = compile_regex(exclude) if exclude else None
        self._rates = Rates()

    def collect(self, now: float) -> list[Sample]:
        self._rates.begin(now)
        samples: list[Sample] = []
        counters = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
        for device, io in counters.items():
            if self.exclude is not None and self.exclude.search(device):
                continue
            labels = {"device": device}
            busy_ms = getattr(io, "busy_time", None)
            ops: dict[str, float | None] = {}
            for name, value in (
                ("read_bytes", io.read_bytes),
                ("write_bytes", io.write_bytes),
                ("reads", io.read_count),
                ("writes", io.write_count),
                ("busy", busy_ms),
            ):
                if value is None:
                    continue  # busy time is Linux and FreeBSD only
                rate = self._rates.rate((device, name), value)
                ops[name] = rate
                if rate is None:
                    continue
                if name == "busy":  # milliseconds busy per second of wall time
                    samples.append(Sample("disk.busy_percent", round(min(100.0, rate / 10.0), 2), labels))
                else:
                    samples.append(Sample(f"disk.{name}_per_second", round(rate, 1), labels))
            for kind, ops_name, time_value in (
                ("read", "reads", io.read_time),
                ("write", "writes", io.write_time),
            ):
                busy = self._rates.rate((device, kind + "_time"), time_value)
                count = ops.get(ops_name)
                if busy is not None and count:  # no operations: no average
                    samples.append(Sample(f"disk.{kind}_time_ms_per_op", round(busy / count, 3), labels))
        return samples

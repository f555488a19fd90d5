"""Open file handles of the whole host against the kernel's limit."""

from __future__ import annotations

from typing import ClassVar

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample

_FILE_NR = "/proc/sys/fs/file-nr"


class FilesCollector:
    """From ``/proc/sys/fs/file-nr`` (Linux): allocated file handles and ``fs.file-max``.
    Reports nothing where the file does not exist."""

    name: ClassVar[str] = "files"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "files.open", (), "handles", "File handles allocated by the kernel (open files, sockets...)"
        ),
        MetricSpec("files.max", (), "handles", "The kernel's limit on file handles (fs.file-max)"),
        MetricSpec("files.used_percent", (), "percent", "Share of the limit in use"),
    )

    def collect(self, now: float) -> list[Sample]:
        try:
            with open(_FILE_NR, encoding="ascii") as f:
                allocated, unused, maximum = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            return []
        used = allocated - unused
        samples = [Sample("files.open", float(used)), Sample("files.max", float(maximum))]
        if maximum > 0:
            samples.append(Sample("files.used_percent", round(100.0 * used / maximum, 4)))
        return samples

"""Space on every real mount: local and network file systems, not kernel or memory ones."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Sequence
from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample

log = logging.getLogger("signalfire.collector.disk")

#: The contract's limit on a label value; a longer mount path could not be published.
_MAX_LABEL_VALUE = 1024


class DiskCollector:
    """One sample pair per mount point. Mounts whose file system type matches a pattern of
    ``exclude_fstypes`` are skipped, and so are files bind-mounted over files (containers do
    that with ``/etc/hosts``). A mount that cannot be read (permissions, a stale network
    mount) is skipped with one log line until it can be read again; the others still report.
    """

    name: ClassVar[str] = "disk"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("disk.used_percent", ("mount",), "percent", "Share of the usable space in use"),
        MetricSpec("disk.free_bytes", ("mount",), "bytes", "Space available to unprivileged users"),
    )

    def __init__(self, exclude_fstypes: Sequence[str] = ()) -> None:
        self.exclude_fstypes = list(exclude_fstypes)
        self._failing: set[str] = set()

    def mounts(self) -> list[str]:
        """Mount points to report, in the order the kernel lists them, each once."""
        seen: dict[str, None] = {}
        for part in psutil.disk_partitions(all=True):
            if any(fnmatch.fnmatchcase(part.fstype, pattern) for pattern in self.exclude_fstypes):
                continue
            if len(part.mountpoint) > _MAX_LABEL_VALUE or not os.path.isdir(part.mountpoint):
                continue
            seen[part.mountpoint] = None
        return list(seen)

    def collect(self, now: float) -> list[Sample]:
        samples: list[Sample] = []
        for mount in self.mounts():
            try:
                usage = psutil.disk_usage(mount)
            except OSError as exc:
                if mount not in self._failing:
                    self._failing.add(mount)
                    log.warning("cannot read disk usage", extra={"mount": mount, "reason": str(exc)})
                continue
            self._failing.discard(mount)
            if usage.total == 0:
                continue  # nothing to fill: a pseudo file system the exclude list does not know
            labels = {"mount": mount}
            samples.append(Sample("disk.used_percent", round(usage.percent, 2), labels))
            samples.append(Sample("disk.free_bytes", float(usage.free), labels))
        return samples

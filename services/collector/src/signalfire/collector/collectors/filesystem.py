"""Space and inodes on every real mount: local and network file systems, not kernel or memory ones."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Sequence
from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import MAX_LABEL_VALUE_LENGTH, Sample

log = logging.getLogger("signalfire.collector.filesystem")

_MOUNT_TABLE = "/proc/self/mounts"


class FilesystemCollector:
    """Samples per mount point, computed from one ``statvfs`` as ``df`` does. Mounts whose
    file system type matches a pattern of ``exclude_fstypes``, or whose path matches one of
    ``exclude_mounts``, are skipped, and so are files bind-mounted over files (containers do
    that with ``/etc/hosts``). A mount that cannot be read (permissions, a stale network
    mount) is skipped with one log line until it can be read again; the others still report.
    """

    name: ClassVar[str] = "filesystem"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "disk.used_percent", ("mount",), "percent", "Share of the usable space in use, as df shows"
        ),
        MetricSpec("disk.free_bytes", ("mount",), "bytes", "Space available to unprivileged users"),
        MetricSpec("disk.used_bytes", ("mount",), "bytes", "Space in use"),
        MetricSpec("disk.total_bytes", ("mount",), "bytes", "Size of the file system"),
        MetricSpec("disk.inodes_used_percent", ("mount",), "percent", "Share of inodes in use"),
        MetricSpec("disk.inodes_free", ("mount",), "inodes", "Inodes available"),
    )

    def __init__(self, exclude_fstypes: Sequence[str] = (), exclude_mounts: Sequence[str] = ()) -> None:
        self.exclude_fstypes = list(exclude_fstypes)
        self.exclude_mounts = list(exclude_mounts)
        self._failing: set[str] = set()
        self._mount_table: bytes | None = None
        self._mounts: list[str] = []

    def mounts(self) -> list[str]:
        """Mount points to report, in the order the kernel lists them, each once. On Linux
        the choice is made again only when the mount table changed."""
        try:
            with open(_MOUNT_TABLE, "rb") as f:
                table: bytes | None = f.read()
        except OSError:
            table = None  # not Linux: choose every time
        if table is None or table != self._mount_table:
            self._mounts = self._choose_mounts()
            self._mount_table = table
        return self._mounts

    def _choose_mounts(self) -> list[str]:
        seen: dict[str, None] = {}
        for part in psutil.disk_partitions(all=True):
            if any(fnmatch.fnmatchcase(part.fstype, pattern) for pattern in self.exclude_fstypes):
                continue
            if any(fnmatch.fnmatchcase(part.mountpoint, pattern) for pattern in self.exclude_mounts):
                continue
            # (a mount path longer than the contract's label value could not be published)
            if len(part.mountpoint) > MAX_LABEL_VALUE_LENGTH or not os.path.isdir(part.mountpoint):
                continue
            seen[part.mountpoint] = None
        return list(seen)

    def collect(self, now: float) -> list[Sample]:
        samples: list[Sample] = []
        for mount in self.mounts():
            try:
                st = os.statvfs(mount)
            except OSError as exc:
                if mount not in self._failing:
                    self._failing.add(mount)
                    log.warning("cannot read disk usage", extra={"mount": mount, "reason": str(exc)})
                continue
            self._failing.discard(mount)
            total = st.f_blocks * st.f_frsize
            if total == 0:
                continue  # nothing to fill: a pseudo file system the exclude list does not know
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            free = st.f_bavail * st.f_frsize
            labels = {"mount": mount}
            # Like df: the share of what unprivileged users can use (root's reserve not counted).
            usable = used + free
            samples += [
                Sample("disk.used_percent", round(100.0 * used / usable, 2) if usable else 0.0, labels),
                Sample("disk.free_bytes", float(free), labels),
                Sample("disk.used_bytes", float(used), labels),
                Sample("disk.total_bytes", float(total), labels),
            ]
            if st.f_files:  # some file systems (btrfs, network ones) have no fixed inode table
                inodes_used = st.f_files - st.f_ffree
                samples += [
                    Sample("disk.inodes_used_percent", round(100.0 * inodes_used / st.f_files, 2), labels),
                    Sample("disk.inodes_free", float(st.f_favail), labels),
                ]
        return samples

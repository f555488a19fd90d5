"""Memory and swap usage, and swap traffic."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.collector.collectors.rates import Rates
from signalfire.events import Sample

#: ``psutil.virtual_memory()`` fields (and a few more of /proc/meminfo) reported as
#: ``mem.<field>_bytes`` where the OS has them.
_MEMORY_FIELDS = {
    "available": "Memory available to new applications without swapping",
    "total": "Physical memory",
    "used": "Memory in use by applications (total minus available)",
    "free": "Memory not used for anything",
    "cached": "Page cache (file contents the kernel can reclaim)",
    "buffers": "Block device buffers",
    "shared": "Shared memory (tmpfs, shm)",
    "slab": "Kernel data structures",
    "active": "Memory used recently, not reclaimed unless needed",
    "inactive": "Memory not used recently, reclaimed first",
    # Linux only (/proc/meminfo), read in the same pass:
    "dirty": "File data changed in memory, waiting to be written to disk (Linux)",
    "writeback": "File data being written to disk now (Linux)",
    "committed": "Memory promised to processes, used or not (Committed_AS, Linux)",
    "commit_limit": "What the kernel may promise under strict overcommit (CommitLimit, Linux)",
}

#: /proc/vmstat counters reported as rates (Linux).
_VMSTAT = {
    "pgfault": ("mem.page_faults_per_second", "Page faults (minor and major)"),
    "pgmajfault": ("mem.major_page_faults_per_second", "Page faults that needed a disk read"),
    "pgpgin": ("mem.paged_in_bytes_per_second", "Data paged in from disk"),
    "pgpgout": ("mem.paged_out_bytes_per_second", "Data paged out to disk"),
    "oom_kill": ("mem.oom_kills_per_second", "Processes killed by the out-of-memory killer"),
}
_VMSTAT_BYTES = {"pgpgin", "pgpgout"}  # counted in KiB by the kernel


#: /proc/vmstat counters of pages swapped in and out (psutil's ``sin`` and ``sout``).
_SWAP_PAGES = {"pswpin": "in", "pswpout": "out"}
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_vmstat() -> dict[str, int]:
    """The counters of /proc/vmstat that ``_VMSTAT`` and ``_SWAP_PAGES`` name; empty where it
    does not exist."""
    try:
        with open("/proc/vmstat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _VMSTAT or name in _SWAP_PAGES:
            values[name] = int(value)
    return values


def read_meminfo(text: str) -> tuple[Any, Any] | None:
    """psutil's ``virtual_memory()`` and ``swap_memory()`` fields from one read of
    /proc/meminfo (psutil reads it twice), computed as psutil computes them on Linux;
    ``None`` for a kernel without ``MemAvailable`` (before 3.14: psutil estimates it)."""
    kib = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        kib[name] = int(rest.split(None, 1)[0]) * 1024
    total, available = kib.get("MemTotal", 0), kib.get("MemAvailable", 0)
    if not total or not available:
        return None
    if available > total:
        available = kib.get("MemFree", 0)
    mem = SimpleNamespace(
        total=total,
        available=available,
        used=total - available,
        percent=100.0 * (total - available) / total,
        free=kib.get("MemFree", 0),
        cached=kib.get("Cached", 0) + kib.get("SReclaimable", 0),
        buffers=kib.get("Buffers", 0),
        shared=kib.get("Shmem", 0),
        slab=kib.get("Slab", 0),
        active=kib.get("Active", 0),
        inactive=kib.get("Inactive", 0),
        dirty=kib.get("Dirty", 0),
        writeback=kib.get("Writeback", 0),
        committed=kib.get("Committed_AS", 0),
        commit_limit=kib.get("CommitLimit", 0),
    )
    swap_total = kib.get("SwapTotal", 0)
    swap_used = swap_total - kib.get("SwapFree", 0)
    swap = SimpleNamespace(
        total=swap_total, used=swap_used, percent=100.0 * swap_used / swap_total if swap_total else 0.0
    )
    return mem, swap


class MemoryCollector:
    """``mem.used_percent`` counts what applications hold (total minus available), as
    ``free`` and psutil do, so page cache the kernel can reclaim is not "used"."""

    name: ClassVar[str] = "memory"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("mem.used_percent", (), "percent", "Share of memory not available to new applications"),
        *(MetricSpec(f"mem.{field}_bytes", (), "bytes", text) for field, text in _MEMORY_FIELDS.items()),
        MetricSpec("swap.used_percent", (), "percent", "Share of swap in use (0 on a host without swap)"),
        MetricSpec("swap.used_bytes", (), "bytes", "Swap in use"),
        MetricSpec("swap.total_bytes", (), "bytes", "Swap space"),
        MetricSpec("swap.in_bytes_per_second", (), "bytes/s", "Memory swapped in from disk"),
        MetricSpec("swap.out_bytes_per_second", (), "bytes/s", "Memory swapped out to disk"),
        *(
            MetricSpec(metric, (), "bytes/s" if key in _VMSTAT_BYTES else "1/s", text)
            for key, (metric, text) in _VMSTAT.items()
        ),
    )

    def __init__(self) -> None:
        self._rates = Rates()
        self._linux = os.path.exists("/proc/meminfo")

    def _read(self) -> tuple[Any, Any, dict[str, int]]:
        """(memory, swap, vmstat counters): one read of /proc/meminfo and /proc/vmstat."""
        if self._linux:
            with open("/proc/meminfo", encoding="ascii") as f:
                memory = read_meminfo(f.read())
            vmstat = read_vmstat()
            if memory is not None:
                return (*memory, vmstat)
        else:
            vmstat = {}
        swap = psutil.swap_memory()
        vmstat.update(pswpin=swap.sin // _PAGE_SIZE, pswpout=swap.sout // _PAGE_SIZE)
        return psutil.virtual_memory(), swap, vmstat

    def collect(self, now: float) -> list[Sample]:
        mem, swap, vmstat = self._read()
        samples = [Sample("mem.used_percent", round(mem.percent, 2))]
        for field in _MEMORY_FIELDS:
            if hasattr(mem, field):
                samples.append(Sample(f"mem.{field}_bytes", float(getattr(mem, field))))
        samples += [
            Sample("swap.used_percent", round(swap.percent, 2) if swap.total else 0.0),
            Sample("swap.used_bytes", float(swap.used)),
            Sample("swap.total_bytes", float(swap.total)),
        ]
        self._rates.begin(now)
        for key, direction in _SWAP_PAGES.items():
            if key in vmstat and (rate := self._rates.rate(direction, vmstat[key] * _PAGE_SIZE)) is not None:
                samples.append(Sample(f"swap.{direction}_bytes_per_second", round(rate, 1)))
        for key, value in vmstat.items():
            if key not in _VMSTAT:
                continue
            rate = self._rates.rate(key, value * 1024 if key in _VMSTAT_BYTES else value)
            if rate is not None:
                samples.append(Sample(_VMSTAT[key][0], round(rate, 1)))
        return samples

"""Process counts by state."""

from __future__ import annotations

import os
from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample

#: Process states as /proc/<pid>/stat writes them → the metric counting them.
_STATE_METRIC = {
    "R": "procs.running",
    "S": "procs.sleeping",
    "D": "procs.blocked",
    "Z": "procs.zombie",
    "T": "procs.stopped",
    "t": "procs.stopped",
}
#: psutil's status names → the same metrics (for systems without /proc).
_STATUS_METRIC = {
    psutil.STATUS_RUNNING: "procs.running",
    psutil.STATUS_SLEEPING: "procs.sleeping",
    psutil.STATUS_DISK_SLEEP: "procs.blocked",
    psutil.STATUS_ZOMBIE: "procs.zombie",
    psutil.STATUS_STOPPED: "procs.stopped",
}


def _state_of(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None  # the process ended meanwhile
    # The command name in parentheses may hold spaces and ')': the state follows the last ')'.
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3].decode("ascii", "replace")


class ProcessesCollector:
    """Counts every process on the host by state. On Linux one small read of
    ``/proc/<pid>/stat`` per process (psutil would build a Process object for each)."""

    name: ClassVar[str] = "processes"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("procs.total", (), "processes", "Processes on the host"),
        MetricSpec("procs.running", (), "processes", "Processes running or runnable"),
        MetricSpec("procs.sleeping", (), "processes", "Processes sleeping"),
        MetricSpec(
            "procs.blocked", (), "processes", "Processes in uninterruptible sleep (usually waiting on I/O)"
        ),
        MetricSpec(
            "procs.zombie", (), "processes", "Processes that ended but were not reaped by their parent"
        ),
        MetricSpec("procs.stopped", (), "processes", "Processes stopped by a signal or a debugger"),
        MetricSpec("procs.threads", (), "threads", "Threads of all processes (Linux)"),
    )

    def __init__(self) -> None:
        self._linux = os.path.isdir("/proc/self")

    def collect(self, now: float) -> list[Sample]:
        counts = dict.fromkeys((spec.name for spec in self.METRICS if spec.name != "procs.threads"), 0)
        samples = []
        if self._linux:
            with open("/proc/loadavg", encoding="ascii") as f:
                # "0.00 0.01 0.05 2/345 6789": runnable/total scheduling entities (threads).
                threads = f.read().split()[3].partition("/")[2]
            samples.append(Sample("procs.threads", float(threads)))
            for entry in os.scandir("/proc"):
                if entry.name.isdigit() and (state := _state_of(entry.name)) is not None:
                    counts["procs.total"] += 1
                    if (metric := _STATE_METRIC.get(state)) is not None:
                        counts[metric] += 1
        else:
            for proc in psutil.process_iter(["status"]):
                counts["procs.total"] += 1
                if (metric := _STATUS_METRIC.get(proc.info["status"])) is not None:
                    counts[metric] += 1
        return [*(Sample(name, float(n)) for name, n in counts.items()), *samples]

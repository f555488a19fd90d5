"""Process counts by state."""

from __future__ import annotations

import os
from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import TABLE_WALK_SECONDS, MetricSpec, walk_due
from signalfire.collector.collectors.rates import Rates
from signalfire.events import Sample

#: Process states as /proc/<pid>/stat writes them → the metric counting them.
_STATE_METRIC = {
    "S": "procs.sleeping",
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
#: The metrics counted by reading every process's state.
_SCANNED = ("procs.total", "procs.sleeping", "procs.zombie", "procs.stopped")
#: Reading every process's state costs one open and read per process (milliseconds on a
#: busy host); it is done at most this often, and the counts are reported on every tick.
STATE_SCAN_SECONDS = TABLE_WALK_SECONDS
_RECOUNTED = f"(recounted at most once per {STATE_SCAN_SECONDS:g} s)"


def _state_of(pid: str, proc: int) -> str | None:
    """The state letter in /proc/<pid>/stat; ``proc`` is an open descriptor of /proc (plain
    descriptors: a file object per process would cost a third more)."""
    try:
        fd = os.open(f"{pid}/stat", os.O_RDONLY, dir_fd=proc)
    except OSError:
        return None  # the process ended meanwhile
    try:
        stat = os.read(fd, 512)  # the state is well inside the first 512 bytes
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name in parentheses may hold spaces and ')': the state follows the last ')'.
    end = stat.rfind(b")")
    return stat[end + 2 : end + 3].decode("ascii", "replace") if end > 0 else None


def _proc_stat_tasks() -> dict[str, int]:
    """``procs_running``, ``procs_blocked`` and ``processes`` (forks since boot) of
    /proc/stat: the kernel's own counts."""
    values = {}
    with open("/proc/stat", "rb") as f:
        for line in f.read().splitlines():
            if line.startswith(b"proc"):
                name, _, value = line.partition(b" ")
                values[name.decode()] = int(value)
    return values


class ProcessesCollector:
    """Counts processes on the host. On Linux ``procs.running`` and ``procs.blocked`` are
    the kernel's counters in /proc/stat (tasks, threads included, as node_exporter reports
    them) and ``procs.threads`` comes from /proc/loadavg, on every tick; all processes,
    sleeping, zombie and stopped ones are counted by one small read of ``/proc/<pid>/stat``
    per process (psutil would build a Process object for each), at most every
    ``STATE_SCAN_SECONDS``: on a busy host that is the costliest read of a tick. Elsewhere
    psutil's process list gives every count."""

    name: ClassVar[str] = "processes"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "procs.total",
            (),
            "processes",
            f"Processes on the host {_RECOUNTED}",
        ),
        MetricSpec(
            "procs.running",
            (),
            "tasks",
            "Tasks (threads included) running or waiting for a CPU (the kernel's procs_running)",
        ),
        MetricSpec(
            "procs.sleeping",
            (),
            "processes",
            f"Processes sleeping {_RECOUNTED}",
        ),
        MetricSpec(
            "procs.blocked",
            (),
            "tasks",
            "Tasks in uninterruptible sleep, usually waiting on I/O (the kernel's procs_blocked)",
        ),
        MetricSpec(
            "procs.zombie",
            (),
            "processes",
            f"Processes that ended but were not reaped by their parent {_RECOUNTED}",
        ),
        MetricSpec(
            "procs.stopped",
            (),
            "processes",
            f"Processes stopped by a signal or a debugger {_RECOUNTED}",
        ),
        MetricSpec("procs.threads", (), "threads", "Threads of all processes (Linux)"),
        MetricSpec("procs.forks_per_second", (), "1/s", "Processes and threads created (Linux)"),
    )

    def __init__(self) -> None:
        self._linux = os.path.isdir("/proc/self")
        self._scanned: dict[str, int] = {}
        self._scanned_at = float("-inf")
        self._rates = Rates()

    def _scan_states(self, now: float) -> dict[str, int]:
        if walk_due(now, self._scanned_at):
            counts = dict.fromkeys(_SCANNED, 0)
            proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
            try:
                for pid in os.listdir(proc):
                    if pid.isdigit() and (state := _state_of(pid, proc)) is not None:
                        counts["procs.total"] += 1
                        if (metric := _STATE_METRIC.get(state)) is not None:
                            counts[metric] += 1
            finally:
                os.close(proc)
            self._scanned, self._scanned_at = counts, now
        return self._scanned

    def collect(self, now: float) -> list[Sample]:
        if not self._linux:
            return self._collect_psutil()
        with open("/proc/loadavg", encoding="ascii") as f:
            # "0.00 0.01 0.05 2/345 6789": runnable/total scheduling entities (threads).
            threads = f.read().split()[3].partition("/")[2]
        tasks = _proc_stat_tasks()
        scanned = self._scan_states(now)
        samples = [
            Sample("procs.total", float(scanned["procs.total"])),
            Sample("procs.running", float(tasks.get("procs_running", 0))),
            Sample("procs.sleeping", float(scanned["procs.sleeping"])),
            Sample("procs.blocked", float(tasks.get("procs_blocked", 0))),
            Sample("procs.zombie", float(scanned["procs.zombie"])),
            Sample("procs.stopped", float(scanned["procs.stopped"])),
            Sample("procs.threads", float(threads)),
        ]
        self._rates.begin(now)
        if "processes" in tasks and (forks := self._rates.rate("forks", tasks["processes"])) is not None:
            samples.append(Sample("procs.forks_per_second", round(forks, 1)))
        return samples

    def _collect_psutil(self) -> list[Sample]:
        linux_only = ("procs.threads", "procs.forks_per_second")
        counts = dict.fromkeys((spec.name for spec in self.METRICS if spec.name not in linux_only), 0)
        for proc in psutil.process_iter(["status"]):
            counts["procs.total"] += 1
            if (metric := _STATUS_METRIC.get(proc.info["status"])) is not None:
                counts[metric] += 1
        return [Sample(name, float(n)) for name, n in counts.items()]

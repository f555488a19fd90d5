"""CPU usage, total and per core, split by mode, from the kernel's cumulative CPU time counters."""

from __future__ import annotations

import os
from typing import Any, ClassVar, NamedTuple

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.collector.collectors.rates import Rates
from signalfire.events import Sample

#: Modes reported for all CPUs together; psutil has no field for a mode the OS lacks.
TOTAL_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
#: Modes reported per core.
CORE_MODES = TOTAL_MODES


class CpuTimes(NamedTuple):
    """One ``cpu`` line of /proc/stat (USER_HZ ticks), named as psutil names them."""

    user: float = 0.0
    nice: float = 0.0
    system: float = 0.0
    idle: float = 0.0
    iowait: float = 0.0
    irq: float = 0.0
    softirq: float = 0.0
    steal: float = 0.0
    guest: float = 0.0
    guest_nice: float = 0.0


class ProcStat(NamedTuple):
    """What the CPU collector needs of /proc/stat, read once per tick."""

    total: CpuTimes
    #: Per logical CPU, by its number (an offline CPU has no line).
    cores: dict[int, CpuTimes]
    context_switches: int
    interrupts: int


def read_proc_stat(text: str) -> ProcStat:
    """Parse /proc/stat (psutil would read it three times for the same figures)."""
    total, cores, ctxt, intr = CpuTimes(), {}, 0, 0
    for line in text.splitlines():
        if line.startswith("cpu"):
            name, *values = line.split()
            times = CpuTimes(*(float(v) for v in values[:10]))
            if name == "cpu":
                total = times
            else:
                cores[int(name[3:])] = times
        elif line.startswith("ctxt "):
            ctxt = int(line[5:])
        elif line.startswith("intr "):
            intr = int(line[5:].split(None, 1)[0])
    return ProcStat(total, cores, ctxt, intr)


def _busy_and_total(times: Any) -> tuple[float, float]:
    """(busy, total) seconds of one ``psutil.cpu_times()`` reading, as psutil's own
    ``cpu_percent`` counts them: idle and iowait are not busy, and guest time is already
    part of user time on Linux, so it is not counted twice."""
    total = sum(times)
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _percent(part: float, whole: float) -> float:
    return round(min(100.0, max(0.0, 100.0 * part / whole)), 2)


def _mode_samples(
    before: Any, after: Any, modes: tuple[str, ...], prefix: str, labels: dict[str, str]
) -> list[Sample]:
    """Usage and per-mode shares between two readings; none when no time passed."""
    busy0, total0 = _busy_and_total(before)
    busy1, total1 = _busy_and_total(after)
    whole = total1 - total0
    if whole <= 0:
        return []  # no time has passed for this CPU: nothing to report yet
    samples = [Sample(f"{prefix}.usage_percent", _percent(busy1 - busy0, whole), labels)]
    for mode in modes:
        if hasattr(after, mode):
            spent = getattr(after, mode) - getattr(before, mode)
            samples.append(Sample(f"{prefix}.{mode}_percent", _percent(spent, whole), labels))
    return samples


def _mode_spec(prefix: str, mode: str, labels: tuple[str, ...], whose: str) -> MetricSpec:
    return MetricSpec(f"{prefix}.{mode}_percent", labels, "percent", f"Share of time {whose} spent in {mode}")


class CpuCollector:
    """Usage over the last interval, from one read of /proc/stat per tick on Linux (psutil
    elsewhere). The state is this instance's own (psutil's ``cpu_percent`` keeps one per
    process), and the first reading is taken at construction, so the first ``collect``
    already reports a real value instead of psutil's priming 0. Cores are labelled with
    the kernel's CPU number."""

    name: ClassVar[str] = "cpu"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "cpu.usage_percent", (), "percent", "Share of time all CPUs were busy (not idle or iowait)"
        ),
        *(_mode_spec("cpu", mode, (), "all CPUs") for mode in TOTAL_MODES),
        MetricSpec("cpu.core.usage_percent", ("core",), "percent", "Share of time one logical CPU was busy"),
        *(_mode_spec("cpu.core", mode, ("core",), "one logical CPU") for mode in CORE_MODES),
        MetricSpec("cpu.context_switches_per_second", (), "1/s", "Context switches"),
        MetricSpec("cpu.interrupts_per_second", (), "1/s", "Hardware interrupts"),
    )

    def __init__(self) -> None:
        self._linux = os.path.exists("/proc/stat")
        self._rates = Rates()
        self._last = self._read()  # usage is reported from the first tick on; rates prime there

    def _read(self) -> ProcStat:
        if self._linux:
            with open("/proc/stat", encoding="ascii") as f:
                return read_proc_stat(f.read())
        stats = psutil.cpu_stats()
        cores = dict(enumerate(psutil.cpu_times(percpu=True)))
        return ProcStat(psutil.cpu_times(), cores, stats.ctx_switches, stats.interrupts)

    def _stats(self, now: float, stat: ProcStat) -> list[Sample]:
        self._rates.begin(now)
        samples = []
        for name, value in (("context_switches", stat.context_switches), ("interrupts", stat.interrupts)):
            rate = self._rates.rate(name, value)
            if rate is not None:
                samples.append(Sample(f"cpu.{name}_per_second", round(rate, 1)))
        return samples

    def collect(self, now: float) -> list[Sample]:
        stat, last = self._read(), self._last
        samples = _mode_samples(last.total, stat.total, TOTAL_MODES, "cpu", {})
        # CPUs can come and go (hotplug); compare only the ones seen both times.
        for core, after in stat.cores.items():
            if (before := last.cores.get(core)) is not None:
                samples.extend(_mode_samples(before, after, CORE_MODES, "cpu.core", {"core": str(core)}))
        self._last = stat
        samples.extend(self._stats(now, stat))
        return samples

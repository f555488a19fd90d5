"""Process check: is a named process running, how many, and what it costs."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import psutil

from signalfire.collector.checks.base import ProcessCheckConfig, Result
from signalfire.collector.collectors.base import MetricSpec
from signalfire.events import Sample
from signalfire.regex import compile_regex

#: Process states that are not a running process: a zombie still has its name and pid (and
#: no memory) until its parent reaps it.
GONE = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


class ProcessCheck:
    """Matches processes by executable name (``name``) or by a regular expression on the
    command line (``cmdline``), and reports them together: ``proc.cpu_percent`` is the sum
    over the matches (100 = one core), so a pre-forking server counts as one service. CPU
    usage needs two readings: the first run reports no ``proc.cpu_percent``. A zombie (exited,
    not yet reaped by its parent) or dead process is not running and does not count."""

    kind: ClassVar[str] = "process"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("proc.up", ("process",), "bool", "1 when at least min_count matching processes run"),
        MetricSpec("proc.count", ("process",), "processes", "Matching processes"),
        MetricSpec("proc.cpu_percent", ("process",), "percent", "CPU of all matches (100 = one core)"),
        MetricSpec("proc.rss_bytes", ("process",), "bytes", "Resident memory of all matches"),
    )

    def __init__(self, config: ProcessCheckConfig, default_interval: float) -> None:
        self.config = config
        self.target = config.name
        self.interval = float(config.interval or default_interval)
        self.timeout = max(5.0, self.interval)
        self.cmdline = compile_regex(config.cmdline) if config.cmdline else None
        self._cpu: dict[tuple[int, float], float] = {}
        self._at: float | None = None

    async def close(self) -> None:
        """Nothing is kept between runs."""

    def failed(self, result: Result) -> list[Sample]:
        return [Sample("proc.up", 0.0, {"process": self.target})]

    async def run(self) -> list[Sample]:
        return await asyncio.to_thread(self.measure)

    def matches(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name", "status"]):
            try:
                if proc.info["status"] in GONE:
                    continue
                if self.cmdline is not None:
                    if self.cmdline.search(" ".join(proc.cmdline())):
                        found.append(proc)
                elif proc.info["name"] == self.config.name:
                    found.append(proc)
            except psutil.Error:
                continue  # ended meanwhile, or not ours to read
        return found

    def measure(self) -> list[Sample]:
        now = time.monotonic()
        cpu: dict[tuple[int, float], float] = {}
        rss = 0
        for proc in self.matches():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu[(proc.pid, proc.create_time())] = times.user + times.system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        labels = {"process": self.target}
        samples = [
            Sample("proc.up", 1.0 if len(cpu) >= self.config.min_count else 0.0, labels),
            Sample("proc.count", float(len(cpu)), labels),
            Sample("proc.rss_bytes", float(rss), labels),
        ]
        if self._at is not None and now > self._at:
            # Only processes seen both times: a new one's whole lifetime is not this interval's.
            spent = sum(max(0.0, t - self._cpu[key]) for key, t in cpu.items() if key in self._cpu)
            samples.append(Sample("proc.cpu_percent", round(100.0 * spent / (now - self._at), 2), labels))
        self._cpu, self._at = cpu, now
        return samples

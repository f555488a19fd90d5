"""The agent's collectors, one module each; :func:`build_collectors` picks the enabled ones.

Adding a collector: a module here with a class following :class:`~.base.Collector`, a
switch in :class:`~signalfire.collector.config.CollectorSwitches`, and a line below.
"""

from __future__ import annotations

from signalfire.collector.collectors.base import Collector, MetricSpec
from signalfire.collector.collectors.cpu import CpuCollector
from signalfire.collector.collectors.disk import DiskCollector
from signalfire.collector.collectors.memory import MemoryCollector
from signalfire.collector.config import AgentConfig

__all__ = ["Collector", "CpuCollector", "DiskCollector", "MemoryCollector", "MetricSpec", "build_collectors"]


def build_collectors(config: AgentConfig) -> list[Collector]:
    """The collectors switched on in ``config``, ready to ``collect``."""
    switches = config.collectors
    collectors: list[Collector] = []
    if switches.cpu:
        collectors.append(CpuCollector())
    if switches.memory:
        collectors.append(MemoryCollector())
    if switches.disk:
        collectors.append(DiskCollector(config.disk_exclude_fstypes))
    return collectors

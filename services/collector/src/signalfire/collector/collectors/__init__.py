"""The agent's collectors, one module each; :func:`build_collectors` picks the enabled ones.

Adding a collector: a module here with a class following :class:`~.base.Collector`, a
switch in :class:`~signalfire.collector.config.CollectorSwitches`, and an entry below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from signalfire.collector.collectors.base import Collector, MetricSpec
from signalfire.collector.collectors.connections import ConnectionsCollector
from signalfire.collector.collectors.cpu import CpuCollector
from signalfire.collector.collectors.diskio import DiskIoCollector
from signalfire.collector.collectors.files import FilesCollector
from signalfire.collector.collectors.filesystem import FilesystemCollector
from signalfire.collector.collectors.load import LoadCollector
from signalfire.collector.collectors.memory import MemoryCollector
from signalfire.collector.collectors.net import NetCollector
from signalfire.collector.collectors.processes import ProcessesCollector
from signalfire.collector.collectors.sensors import SensorsCollector
from signalfire.collector.collectors.uptime import UptimeCollector

if TYPE_CHECKING:  # the config imports the checks, which import the collectors' MetricSpec
    from signalfire.collector.config import AgentConfig

__all__ = [
    "COLLECTOR_TYPES",
    "Collector",
    "ConnectionsCollector",
    "CpuCollector",
    "DiskIoCollector",
    "FilesCollector",
    "FilesystemCollector",
    "LoadCollector",
    "MemoryCollector",
    "MetricSpec",
    "NetCollector",
    "ProcessesCollector",
    "SensorsCollector",
    "UptimeCollector",
    "build_collectors",
]

#: Every collector, in batch order; each one's ``name`` is its switch in ``collectors:``.
COLLECTOR_TYPES: tuple[type[Collector], ...] = (
    CpuCollector,
    LoadCollector,
    MemoryCollector,
    FilesystemCollector,
    DiskIoCollector,
    NetCollector,
    ConnectionsCollector,
    ProcessesCollector,
    FilesCollector,
    UptimeCollector,
    SensorsCollector,
)


#: How each collector is made from the config, by switch name.
_FACTORIES: dict[str, Callable[[AgentConfig], Collector]] = {
    "cpu": lambda c: CpuCollector(),
    "load": lambda c: LoadCollector(),
    "memory": lambda c: MemoryCollector(),
    "filesystem": lambda c: FilesystemCollector(c.filesystem_exclude_fstypes, c.filesystem_exclude_mounts),
    "diskio": lambda c: DiskIoCollector(c.diskio_exclude_devices),
    "net": lambda c: NetCollector(c.net_include_loopback, c.net_include_virtual, c.net_exclude_interfaces),
    "connections": lambda c: ConnectionsCollector(),
    "processes": lambda c: ProcessesCollector(),
    "files": lambda c: FilesCollector(),
    "uptime": lambda c: UptimeCollector(),
    "sensors": lambda c: SensorsCollector(),
}


def build_collectors(config: AgentConfig) -> list[Collector]:
    """The collectors switched on in ``config``, ready to ``collect``, in batch order."""
    return [
        _FACTORIES[kind.name](config) for kind in COLLECTOR_TYPES if getattr(config.collectors, kind.name)
    ]

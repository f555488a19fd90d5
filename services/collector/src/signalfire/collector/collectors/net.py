"""Network traffic per interface: bytes, packets, errors and drops per second."""

from __future__ import annotations

import os
import re
from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.collector.collectors.rates import Rates
from signalfire.events import Sample
from signalfire.regex import compile_regex

_LOOPBACK = re.compile(r"^lo\d*$")


def is_virtual(interface: str) -> bool:
    """Linux lists software interfaces (bridges, veth pairs, tunnels, ``lo``) under
    ``/sys/devices/virtual/net``; elsewhere every interface counts as physical."""
    return os.path.exists(f"/sys/devices/virtual/net/{interface}")


class NetCollector:
    """Per-second rates of the kernel's per-interface counters. Loopback and virtual
    interfaces are skipped unless switched on (a container host has one veth per container);
    interfaces matching ``exclude`` are skipped. The first tick only primes."""

    name: ClassVar[str] = "net"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("net.recv_bytes_per_second", ("interface",), "bytes/s", "Bytes received"),
        MetricSpec("net.sent_bytes_per_second", ("interface",), "bytes/s", "Bytes sent"),
        MetricSpec("net.recv_packets_per_second", ("interface",), "1/s", "Packets received"),
        MetricSpec("net.sent_packets_per_second", ("interface",), "1/s", "Packets sent"),
        MetricSpec("net.errors_per_second", ("interface",), "1/s", "Receive and transmit errors"),
        MetricSpec("net.drops_per_second", ("interface",), "1/s", "Packets dropped, received or sent"),
        MetricSpec("net.recv_errors_per_second", ("interface",), "1/s", "Receive errors"),
        MetricSpec("net.sent_errors_per_second", ("interface",), "1/s", "Transmit errors"),
        MetricSpec("net.recv_drops_per_second", ("interface",), "1/s", "Received packets dropped"),
        MetricSpec("net.sent_drops_per_second", ("interface",), "1/s", "Outgoing packets dropped"),
    )

    def __init__(
        self, include_loopback: bool = False, include_virtual: bool = False, exclude: str = ""
    ) -> None:
        self.include_loopback = include_loopback
        self.include_virtual = include_virtual
        self.exclude = compile_regex(exclude) if exclude else None
        self._rates = Rates()
        self._wanted: dict[str, bool] = {}

    def wanted(self, interface: str) -> bool:
        """Whether ``interface`` is reported (decided once per name)."""
        decision = self._wanted.get(interface)
        if decision is None:
            if _LOOPBACK.match(interface):
                decision = self.include_loopback
            elif is_virtual(interface):
                decision = self.include_virtual
            else:
                decision = True
            if self.exclude is not None and self.exclude.search(interface):
                decision = False
            if len(self._wanted) > 4096:  # container churn: names are not reused forever
                self._wanted.clear()
            self._wanted[interface] = decision
        return decision

    def collect(self, now: float) -> list[Sample]:
        self._rates.begin(now)
        samples: list[Sample] = []
        for interface, io in psutil.net_io_counters(pernic=True, nowrap=True).items():
            if not self.wanted(interface):
                continue
            labels = {"interface": interface}
            for name, value in (
                ("recv_bytes", io.bytes_recv),
                ("sent_bytes", io.bytes_sent),
                ("recv_packets", io.packets_recv),
                ("sent_packets", io.packets_sent),
                ("errors", io.errin + io.errout),
                ("drops", io.dropin + io.dropout),
                ("recv_errors", io.errin),
                ("sent_errors", io.errout),
                ("recv_drops", io.dropin),
                ("sent_drops", io.dropout),
            ):
                rate = self._rates.rate((interface, name), value)
                if rate is not None:
                    samples.append(Sample(f"net.{name}_per_second", round(rate, 1), labels))
        return samples

"""TCP connections by state, and the kernel's TCP and UDP protocol counters."""

from __future__ import annotations

import os
from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import MetricSpec
from signalfire.collector.collectors.rates import Rates
from signalfire.events import Sample

#: The state column of /proc/net/tcp (hex) → the state's name, as ``ss`` prints it.
TCP_STATES = {
    "01": "established",
    "02": "syn_sent",
    "03": "syn_recv",
    "04": "fin_wait1",
    "05": "fin_wait2",
    "06": "time_wait",
    "07": "close",
    "08": "close_wait",
    "09": "last_ack",
    "0A": "listen",
    "0B": "closing",
}

#: /proc/net/snmp counters reported as rates: (section, field) → metric.
_SNMP = {
    ("Ip", "InReceives"): ("ip.in_packets_per_second", "IP packets received"),
    ("Ip", "OutRequests"): ("ip.out_packets_per_second", "IP packets sent"),
    ("Ip", "InDiscards"): ("ip.in_discards_per_second", "IP packets received and discarded"),
    ("Icmp", "InMsgs"): ("icmp.in_messages_per_second", "ICMP messages received"),
    ("Icmp", "OutMsgs"): ("icmp.out_messages_per_second", "ICMP messages sent"),
    ("Tcp", "ActiveOpens"): ("tcp.active_opens_per_second", "Connections opened by this host"),
    ("Tcp", "PassiveOpens"): ("tcp.passive_opens_per_second", "Connections accepted by this host"),
    ("Tcp", "AttemptFails"): ("tcp.attempt_fails_per_second", "Connection attempts that failed"),
    ("Tcp", "EstabResets"): ("tcp.resets_per_second", "Established connections reset"),
    ("Tcp", "RetransSegs"): ("tcp.retransmits_per_second", "Segments retransmitted"),
    ("Tcp", "InErrs"): ("tcp.in_errors_per_second", "Segments received in error"),
    ("Udp", "InDatagrams"): ("udp.in_datagrams_per_second", "UDP datagrams received"),
    ("Udp", "OutDatagrams"): ("udp.out_datagrams_per_second", "UDP datagrams sent"),
    ("Udp", "InErrors"): ("udp.in_errors_per_second", "UDP datagrams that could not be delivered"),
    ("Udp", "RcvbufErrors"): ("udp.rcvbuf_errors_per_second", "UDP datagrams dropped: receive buffer full"),
}

#: /proc/net/sockstat gauges: (protocol, field) → metric.
_SOCKSTAT = {
    ("sockets", "used"): ("sockets.used", "Sockets in use, all protocols"),
    ("TCP", "inuse"): ("sockets.tcp_inuse", "TCP sockets in use (IPv4)"),
    ("TCP", "orphan"): ("sockets.tcp_orphan", "TCP sockets no longer attached to a process"),
    ("TCP", "tw"): ("sockets.tcp_time_wait", "TCP sockets in TIME_WAIT"),
    ("TCP", "alloc"): ("sockets.tcp_alloc", "TCP sockets allocated"),
    ("TCP", "mem"): ("sockets.tcp_mem_pages", "Memory pages used by TCP buffers"),
    ("UDP", "inuse"): ("sockets.udp_inuse", "UDP sockets in use (IPv4)"),
}

_PROC_TCP = ("/proc/net/tcp", "/proc/net/tcp6")


def count_tcp_states(tables: list[str]) -> dict[str, int]:
    """Connections per state in the text of /proc/net/tcp and tcp6 (every state present, 0 or more)."""
    counts = dict.fromkeys(TCP_STATES.values(), 0)
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split(None, 4)
            if len(fields) > 3 and (state := TCP_STATES.get(fields[3])) is not None:
                counts[state] += 1
    return counts


def parse_snmp(text: str) -> dict[tuple[str, str], int]:
    """/proc/net/snmp: pairs of lines, a header of field names and a line of values."""
    values: dict[tuple[str, str], int] = {}
    lines = text.splitlines()
    for header, row in zip(lines[::2], lines[1::2], strict=False):
        section, _, names = header.partition(":")
        for name, value in zip(names.split(), row.partition(":")[2].split(), strict=False):
            values[(section, name)] = int(value)
    return values


def parse_sockstat(text: str) -> dict[tuple[str, str], int]:
    """/proc/net/sockstat: ``PROTO: name value name value ...`` lines."""
    values: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        fields = rest.split()
        for name, value in zip(fields[::2], fields[1::2], strict=False):
            if value.isdigit():
                values[(proto, name)] = int(value)
    return values


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


class ConnectionsCollector:
    """On Linux the connection table is read straight from /proc/net/tcp{,6}: counting
    states needs neither root nor psutil's walk over every process's file descriptors, which
    would cost more than all other collectors together. Elsewhere psutil is used."""

    name: ClassVar[str] = "connections"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("net.connections", ("state",), "connections", "TCP connections (IPv4 and IPv6) per state"),
        *(MetricSpec(metric, (), "1/s", text) for metric, text in _SNMP.values()),
        *(MetricSpec(metric, (), "sockets", text) for metric, text in _SOCKSTAT.values()),
    )

    def __init__(self) -> None:
        self._linux = os.path.exists(_PROC_TCP[0])
        self._rates = Rates()

    def states(self) -> dict[str, int]:
        if self._linux:
            return count_tcp_states([_read(p) for p in _PROC_TCP if os.path.exists(p)])
        counts = dict.fromkeys(TCP_STATES.values(), 0)
        for conn in psutil.net_connections(kind="tcp"):
            state = conn.status.lower()
            if state in counts:
                counts[state] += 1
        return counts

    def collect(self, now: float) -> list[Sample]:
        samples = [Sample("net.connections", float(n), {"state": s}) for s, n in self.states().items()]
        if self._linux:
            self._rates.begin(now)
            counters = parse_snmp(_read("/proc/net/snmp"))
            for key, (metric, _) in _SNMP.items():
                if key in counters and (rate := self._rates.rate(key, counters[key])) is not None:
                    samples.append(Sample(metric, round(rate, 2)))
            sockstat = parse_sockstat(_read("/proc/net/sockstat"))
            for key, (metric, _) in _SOCKSTAT.items():
                if key in sockstat:
                    samples.append(Sample(metric, float(sockstat[key])))
        return samples

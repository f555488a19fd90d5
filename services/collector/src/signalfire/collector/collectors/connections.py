"""TCP connections by state, and the kernel's TCP and UDP protocol counters."""

from __future__ import annotations

import os
import socket
import struct
from typing import ClassVar

import psutil

from signalfire.collector.collectors.base import TABLE_WALK_SECONDS, MetricSpec, walk_due
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
    ("Tcp", "OutRsts"): ("tcp.out_resets_per_second", "Segments sent with the RST flag (refused, aborted)"),
    ("Udp", "InDatagrams"): ("udp.in_datagrams_per_second", "UDP datagrams received"),
    ("Udp", "OutDatagrams"): ("udp.out_datagrams_per_second", "UDP datagrams sent"),
    ("Udp", "InErrors"): ("udp.in_errors_per_second", "UDP datagrams that could not be delivered"),
    ("Udp", "RcvbufErrors"): ("udp.rcvbuf_errors_per_second", "UDP datagrams dropped: receive buffer full"),
    ("Udp", "SndbufErrors"): ("udp.sndbuf_errors_per_second", "UDP datagrams dropped: send buffer full"),
    ("Udp", "NoPorts"): ("udp.no_ports_per_second", "UDP datagrams to a port nothing listens on"),
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

#: The kernel's TCP state numbers (include/net/tcp_states.h) → names; request sockets
#: (12, TCP_NEW_SYN_RECV) are what /proc/net/tcp shows as SYN_RECV.
_DIAG_STATES = {int(code, 16): name for code, name in TCP_STATES.items()} | {12: "syn_recv"}
_ALL_STATES = 0xFFFFFFFF
#: Every state but ESTABLISHED (1) and TIME_WAIT (6), the two a busy server has thousands of.
_RARE_STATES = _ALL_STATES & ~(1 << 1) & ~(1 << 6)
_NETLINK_INET_DIAG = 4
#: The original inet_diag request: unlike SOCK_DIAG_BY_FAMILY it takes no address family,
#: so one walk of the kernel's connection table answers for IPv4 and IPv6 together.
_TCPDIAG_GETSOCK = 18
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
#: nlmsghdr (length, type, flags, sequence, port id) + inet_diag_req (family, source and
#: destination prefix lengths, extensions, a zeroed 48-byte inet_diag_sockid: match any,
#: the states bitmask, dbs).
_DIAG_REQUEST = struct.Struct("=IHHII BBBB 48x II")
_NLMSG_HEADER = struct.Struct("=IH")


def netlink_tcp_states(states: int = _ALL_STATES) -> dict[str, int]:
    """TCP sockets (IPv4 and IPv6) per state from the kernel's socket diagnostics over
    netlink (what ``ss`` uses), for the states in the bitmask ``states`` (bit n: state
    number n); every state is in the answer, 0 when not asked for. Much cheaper than
    /proc/net/tcp, whose reading walks the whole connection hash table for every chunk it
    prints (milliseconds on a host with much memory, even with no connection at all).
    Raises ``OSError`` where netlink or the kernel's ``tcp_diag`` is not available (not
    Linux, a sandbox without ``AF_NETLINK``)."""
    by_number = [0] * 16
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_INET_DIAG) as sock:
        sock.send(
            _DIAG_REQUEST.pack(
                _DIAG_REQUEST.size, _TCPDIAG_GETSOCK, _NLM_F_REQUEST_DUMP, 1, 0,
                socket.AF_UNSPEC, 0, 0, 0, states, 0,
            )
        )  # fmt: skip
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                raise OSError("inet_diag: connection closed")
            offset, end = 0, len(data)
            while offset < end:
                length, kind = _NLMSG_HEADER.unpack_from(data, offset)
                if kind == _NLMSG_DONE:
                    done = True
                    break
                if kind == _NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", data, offset + 16)[0]
                    raise OSError(errno, f"inet_diag: {os.strerror(errno)}")
                if length < 18:
                    raise OSError("inet_diag: truncated message")
                by_number[data[offset + 17] & 15] += 1  # inet_diag_msg.idiag_state
                offset += (length + 3) & ~3
    counts = dict.fromkeys(TCP_STATES.values(), 0)
    for number, n in enumerate(by_number):
        if n and (state := _DIAG_STATES.get(number)) is not None:
            counts[state] += n
    return counts


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
    """Connection states on Linux: ESTABLISHED and TIME_WAIT, which a busy server has by
    the ten thousand, are the kernel's own counts (``CurrEstab`` of /proc/net/snmp counts
    established and close-wait connections; ``tw`` of /proc/net/sockstat the time-wait
    ones; ``ss -s`` reports the same), read on every tick; the other states, few at any
    time, are counted in a socket-diagnostics dump over netlink (:func:`netlink_tcp_states`)
    at most every ``TABLE_WALK_SECONDS``: the dump walks the kernel's whole connection hash
    table (a few MB of memory on a large host), whatever is in it. So a tick costs the same
    with 10 or 100,000 connections. Where netlink is not allowed, every state is counted in
    /proc/net/tcp{,6}; elsewhere psutil is used. None of these needs root or psutil's walk
    over every process's file descriptors."""

    name: ClassVar[str] = "connections"
    METRICS: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec(
            "net.connections",
            ("state",),
            "connections",
            "TCP connections (IPv4 and IPv6) per state; states other than established and "
            f"time_wait recounted at most once per {TABLE_WALK_SECONDS:g} s (established is "
            "the kernel's count less the last recount's close_wait)",
        ),
        *(MetricSpec(metric, (), "1/s", text) for metric, text in _SNMP.values()),
        *(MetricSpec(metric, (), "sockets", text) for metric, text in _SOCKSTAT.values()),
    )

    def __init__(self) -> None:
        self._linux = os.path.exists(_PROC_TCP[0])
        self._netlink = self._linux
        self._rates = Rates()
        self._rare: dict[str, int] = {}
        self._dumped_at = float("-inf")

    def states(
        self,
        snmp: dict[tuple[str, str], int] | None = None,
        sockstat: dict[tuple[str, str], int] | None = None,
        now: float | None = None,
    ) -> dict[str, int]:
        """Connections per state (every state present, 0 or more). ``snmp`` and ``sockstat``
        are this tick's parsed /proc/net/snmp and /proc/net/sockstat, where read already;
        with ``now`` (a tick's time) the rare states are dumped only when due."""
        if self._netlink:
            snmp = parse_snmp(_read("/proc/net/snmp")) if snmp is None else snmp
            sockstat = parse_sockstat(_read("/proc/net/sockstat")) if sockstat is None else sockstat
            established, time_wait = snmp.get(("Tcp", "CurrEstab")), sockstat.get(("TCP", "tw"))
            try:
                if established is None or time_wait is None:
                    return netlink_tcp_states()
                # CurrEstab counts close-wait connections too, so the last walk's close-wait
                # count is taken off it: a walk more than a moment old may count close-wait
                # connections that are gone since (more than CurrEstab holds now: walk again).
                if (
                    now is None
                    or walk_due(now, self._dumped_at)
                    or established < self._rare.get("close_wait", 0)
                ):
                    self._rare = netlink_tcp_states(_RARE_STATES)
                    self._dumped_at = now if now is not None else float("-inf")
            except OSError:
                self._netlink = False  # not allowed here: /proc from now on
            else:
                counts = dict(self._rare)
                # The readings are moments apart: never a negative count.
                counts["established"] = max(0, established - counts["close_wait"])
                counts["time_wait"] = time_wait
                return counts
        if self._linux:
            return count_tcp_states([_read(p) for p in _PROC_TCP if os.path.exists(p)])
        counts = dict.fromkeys(TCP_STATES.values(), 0)
        for conn in psutil.net_connections(kind="tcp"):
            state = conn.status.lower()
            if state in counts:
                counts[state] += 1
        return counts

    def collect(self, now: float) -> list[Sample]:
        if not self._linux:
            return [Sample("net.connections", float(n), {"state": s}) for s, n in self.states().items()]
        counters = parse_snmp(_read("/proc/net/snmp"))
        sockstat = parse_sockstat(_read("/proc/net/sockstat"))
        samples = [
            Sample("net.connections", float(n), {"state": s})
            for s, n in self.states(counters, sockstat, now).items()
        ]
        self._rates.begin(now)
        for key, (metric, _) in _SNMP.items():
            if key in counters and (rate := self._rates.rate(key, counters[key])) is not None:
                samples.append(Sample(metric, round(rate, 2)))
        for key, (metric, _) in _SOCKSTAT.items():
            if key in sockstat:
                samples.append(Sample(metric, float(sockstat[key])))
        return samples

"""The collectors against this host: plausible values, labels, and only declared metrics."""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest

from signalfire.collector.agent import AGENT_METRICS, Agent
from signalfire.collector.catalog import metrics_markdown
from signalfire.collector.collectors import (
    COLLECTOR_TYPES,
    ConnectionsCollector,
    CpuCollector,
    DiskIoCollector,
    FilesCollector,
    FilesystemCollector,
    LoadCollector,
    MemoryCollector,
    NetCollector,
    ProcessesCollector,
    UptimeCollector,
    build_collectors,
    connections,
    processes,
)
from signalfire.collector.collectors.base import TABLE_WALK_SECONDS, Collector
from signalfire.collector.collectors.connections import (
    TCP_STATES,
    count_tcp_states,
    netlink_tcp_states,
    parse_snmp,
    parse_sockstat,
)
from signalfire.collector.collectors.cpu import read_proc_stat
from signalfire.collector.collectors.memory import read_meminfo
from signalfire.collector.collectors.rates import Rates
from signalfire.collector.collectors.sensors import LOOK_AGAIN_SECONDS, SensorsCollector, sensor_samples
from signalfire.collector.config import (
    DEFAULT_DISKIO_EXCLUDE,
    DEFAULT_EXCLUDED_FSTYPES,
    AgentConfig,
    CollectorSwitches,
)
from signalfire.events import MetricBatch, Sample, decode, encode


def by_name(samples: list[Sample], name: str) -> list[Sample]:
    return [s for s in samples if s.name == name]


def assert_declared(collector: Collector, samples: list[Sample]) -> None:
    declared = {spec.name: set(spec.labels) for spec in collector.METRICS}
    for sample in samples:
        assert sample.name in declared, f"{collector.name} emits undeclared {sample.name}"
        assert set(sample.labels) == declared[sample.name], f"{sample.name} labels {sample.labels}"


def burn_cpu(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_reports_real_usage_on_the_first_collect() -> None:
    collector = CpuCollector()
    burn_cpu(0.3)
    samples = collector.collect(time.monotonic())
    [total] = by_name(samples, "cpu.usage_percent")
    assert 0 < total.value <= 100  # this process kept a CPU busy: not psutil's priming 0.0


def test_cpu_reports_every_core_in_range() -> None:
    collector = CpuCollector()
    time.sleep(0.2)
    samples = collector.collect(time.monotonic())
    cores = by_name(samples, "cpu.core.usage_percent")
    assert sorted(int(s.labels["core"]) for s in cores) == list(range(psutil.cpu_count()))
    assert all(0 <= s.value <= 100 for s in samples)
    assert_declared(collector, samples)


def test_memory_values_are_consistent() -> None:
    collector = MemoryCollector()
    samples = {s.name: s.value for s in collector.collect(time.monotonic())}
    assert samples["mem.total_bytes"] == psutil.virtual_memory().total
    assert 0 < samples["mem.available_bytes"] <= samples["mem.total_bytes"]
    assert 0 <= samples["mem.used_percent"] <= 100
    assert 0 <= samples["swap.used_percent"] <= 100
    assert_declared(collector, collector.collect(time.monotonic()))


def test_disk_reports_the_root_file_system() -> None:
    collector = FilesystemCollector(DEFAULT_EXCLUDED_FSTYPES)
    samples = collector.collect(time.monotonic())
    used = {s.labels["mount"]: s.value for s in by_name(samples, "disk.used_percent")}
    free = {s.labels["mount"]: s.value for s in by_name(samples, "disk.free_bytes")}
    assert "/" in used
    assert used.keys() == free.keys()
    assert all(0 <= v <= 100 for v in used.values())
    assert free["/"] == pytest.approx(psutil.disk_usage("/").free, rel=0.05)
    assert_declared(collector, samples)


def test_disk_skips_pseudo_file_systems() -> None:
    pseudo = {
        p.mountpoint for p in psutil.disk_partitions(all=True) if p.fstype in ("proc", "sysfs", "tmpfs")
    }
    reported = FilesystemCollector(DEFAULT_EXCLUDED_FSTYPES).mounts()
    assert not pseudo & set(reported) - {"/"}
    assert len(reported) == len(set(reported))


def test_disk_exclude_patterns_match_fstypes() -> None:
    root = next(p for p in psutil.disk_partitions(all=True) if p.mountpoint == "/")
    assert "/" not in FilesystemCollector([root.fstype[:2] + "*"]).mounts()
    assert FilesystemCollector(["*"]).collect(time.monotonic()) == []


class WithVanishedMount(FilesystemCollector):
    """The mount table lists a mount point that cannot be read (e.g. a stale NFS mount)."""

    def mounts(self) -> list[str]:
        return ["/nonexistent-signalfire-mount", *super().mounts()]


def test_disk_unreadable_mount_is_skipped_and_the_others_reported(caplog: pytest.LogCaptureFixture) -> None:
    collector = WithVanishedMount(DEFAULT_EXCLUDED_FSTYPES)
    first = collector.collect(time.monotonic())
    second = collector.collect(time.monotonic())
    for samples in (first, second):
        mounts = {s.labels["mount"] for s in samples}
        assert "/" in mounts
        assert "/nonexistent-signalfire-mount" not in mounts
    warnings = [r for r in caplog.records if r.getMessage() == "cannot read disk usage"]
    assert len(warnings) == 1  # logged once, not on every tick


def test_switches_choose_collectors() -> None:
    everything = build_collectors(AgentConfig())
    assert [c.name for c in everything] == [kind.name for kind in COLLECTOR_TYPES]
    assert set(CollectorSwitches.__struct_fields__) == {kind.name for kind in COLLECTOR_TYPES}
    switches = CollectorSwitches(**{name: name == "memory" for name in CollectorSwitches.__struct_fields__})
    assert [c.name for c in build_collectors(AgentConfig(collectors=switches))] == ["memory"]


def test_every_collector_output_fits_the_contract() -> None:
    collectors = build_collectors(AgentConfig())
    time.sleep(0.1)
    samples = [s for c in collectors for s in c.collect(time.monotonic())]
    batch = MetricBatch(host="h", time=time.time(), samples=samples)
    assert decode(encode(batch), MetricBatch) == batch


def test_docs_metrics_md_is_generated_from_the_code() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "metrics.md").read_text()
    assert docs == metrics_markdown(), (
        "docs/metrics.md is stale: signalfire agent --list-metrics > docs/metrics.md"
    )


def test_docs_agent_md_documents_every_config_field() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "agent.md").read_text()
    for field in AgentConfig.__struct_fields__:
        assert f"`{field}" in docs, f"docs/agent.md does not document {field}"
    for switch in CollectorSwitches.__struct_fields__:
        assert f"`{switch}`" in docs, f"docs/agent.md does not name the collector {switch}"


def test_agent_own_samples_are_declared() -> None:
    agent = Agent(AgentConfig())
    declared = {spec.name: set(spec.labels) for spec in AGENT_METRICS}
    agent._collect_all(time.monotonic())
    time.sleep(0.05)
    samples = agent.own_samples()
    # agent.invalid_values is sent once a collector made such a value (a test of its own)
    assert {s.name for s in samples} == set(declared) - {"agent.invalid_values"}
    for sample in samples:
        assert set(sample.labels) == declared[sample.name]


def test_a_failing_collector_is_counted_logged_once_and_loses_nothing_else(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(AgentConfig())
    broken = next(c for c in agent.collectors if c.name == "memory")

    def collect(now: float) -> list[Sample]:
        raise OSError("/proc/meminfo: no such file")

    monkeypatch.setattr(broken, "collect", collect)
    with caplog.at_level(logging.ERROR, logger="signalfire.collector"):
        first = agent._collect_all(time.monotonic())
        agent._collect_all(time.monotonic())
    assert not [s for s in first if s.name.startswith("mem.")]
    assert by_name(first, "load.1m")  # the other collectors still report
    errors = {s.labels["collector"]: s.value for s in by_name(agent.own_samples(), "agent.collector_errors")}
    assert errors["memory"] == 2
    assert [r.getMessage() for r in caplog.records] == ["collector failed"]  # once, not every tick
    monkeypatch.undo()
    assert by_name(agent._collect_all(time.monotonic()), "mem.used_percent")


def test_values_the_contract_refuses_are_left_out_counted_and_the_rest_of_the_batch_is_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # One NaN, infinite or past-1e300 value would make every consumer refuse the whole batch.
    agent = Agent(AgentConfig())
    odd = next(c for c in agent.collectors if c.name == "memory")
    values = [1.0, math.nan, math.inf, -math.inf, 1e301, -1.7976931348623157e308, 1e300, -1e300]
    monkeypatch.setattr(odd, "collect", lambda now: [Sample(f"odd.v{i}", v) for i, v in enumerate(values)])
    samples = agent._collect_all(time.monotonic())
    assert [(s.name, s.value) for s in samples if s.name.startswith("odd.")] == [
        ("odd.v0", 1.0),
        ("odd.v6", 1e300),
        ("odd.v7", -1e300),
    ]
    assert by_name(samples, "load.1m")
    decode(encode(MetricBatch(host="h", time=1.0, samples=samples)), MetricBatch)  # accepted whole
    agent._collect_all(time.monotonic())
    invalid = {s.labels["collector"]: s.value for s in by_name(agent.own_samples(), "agent.invalid_values")}
    assert invalid == {"memory": 10.0}  # 5 a collection, counted; no other collector listed
    warned = [r for r in caplog.records if r.getMessage().startswith("a collector made a value outside")]
    assert [(getattr(r, "collector", None), getattr(r, "metric", None)) for r in warned] == [
        ("memory", "odd.v1")
    ]


def prime_and_collect(collector: Collector, pause: float = 0.3) -> list[Sample]:
    collector.collect(time.monotonic())
    time.sleep(pause)
    return collector.collect(time.monotonic())


def test_cpu_modes_per_core_and_totals() -> None:
    samples = prime_and_collect(CpuCollector())
    names = {s.name for s in samples}
    assert {"cpu.user_percent", "cpu.system_percent", "cpu.iowait_percent", "cpu.steal_percent"} <= names
    assert {"cpu.core.user_percent", "cpu.core.steal_percent", "cpu.context_switches_per_second"} <= names
    for core in range(psutil.cpu_count()):
        assert [s for s in by_name(samples, "cpu.core.system_percent") if s.labels["core"] == str(core)]
    assert all(s.value >= 0 for s in samples)


def test_load_memory_and_swap() -> None:
    load = {s.name: s.value for s in LoadCollector().collect(time.monotonic())}
    assert load.keys() == {"load.1m", "load.5m", "load.15m", "load.1m_per_cpu"}
    assert all(v >= 0 for v in load.values())
    memory = MemoryCollector()
    samples = prime_and_collect(memory)
    values = {s.name: s.value for s in samples}
    assert 0 <= values["mem.cached_bytes"] <= values["mem.total_bytes"]
    assert 0 <= values["mem.buffers_bytes"] <= values["mem.total_bytes"]
    assert values["swap.used_bytes"] <= values["swap.total_bytes"]
    assert values["mem.page_faults_per_second"] >= 0  # a rate, after priming
    assert_declared(memory, samples)


def test_filesystem_inodes() -> None:
    samples = FilesystemCollector(DEFAULT_EXCLUDED_FSTYPES).collect(time.monotonic())
    root = {s.name: s.value for s in samples if s.labels["mount"] == "/"}
    assert 0 <= root["disk.inodes_used_percent"] <= 100
    assert root["disk.used_bytes"] + root["disk.free_bytes"] <= root["disk.total_bytes"]


def test_filesystem_exclude_mounts() -> None:
    assert "/" not in FilesystemCollector(DEFAULT_EXCLUDED_FSTYPES, ["/"]).mounts()


def test_disk_io_rates_after_priming(tmp_path: Path) -> None:
    collector = DiskIoCollector(DEFAULT_DISKIO_EXCLUDE)
    assert collector.collect(time.monotonic()) == []  # the first tick only primes
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * (4 << 20))
        f.flush()
        os.fsync(f.fileno())
    time.sleep(0.2)
    samples = collector.collect(time.monotonic())
    assert_declared(collector, samples)
    devices = {s.labels["device"] for s in samples}
    assert devices and not any(d.startswith(("loop", "ram", "zram")) for d in devices)
    assert all(s.value >= 0 for s in samples)
    assert all(s.value <= 100 for s in by_name(samples, "disk.busy_percent"))


def test_network_rates_skip_loopback_and_virtual_by_default() -> None:
    collector = NetCollector()
    assert collector.collect(time.monotonic()) == []
    time.sleep(0.2)
    samples = collector.collect(time.monotonic())
    assert_declared(collector, samples)
    interfaces = {s.labels["interface"] for s in samples}
    assert "lo" not in interfaces
    assert all(s.value >= 0 for s in samples)
    with_lo = NetCollector(include_loopback=True)
    with_lo.collect(time.monotonic())
    time.sleep(0.1)
    assert "lo" in {s.labels["interface"] for s in with_lo.collect(time.monotonic())}
    assert not NetCollector(include_loopback=True, exclude="^lo$").wanted("lo")
    # Interface names are searched: one ending in `aaaa…ab` must not stall the agent.
    assert NetCollector(exclude="(a+)+$").wanted("a" * 39 + "b")


def test_tcp_connection_states_see_a_listening_socket() -> None:
    collector = ConnectionsCollector()
    start = time.monotonic()
    collector.collect(start)  # the rates' first reading
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            # accepted: the server's end is established too (the client's end is as soon as
            # the connect returns, the server's once the handshake's last ACK is in)
            accepted, _ = server.accept()
            with accepted:
                # a tick whose recount of the rare states is due: established is CurrEstab,
                # a count of the whole machine, less close_wait counted at the same moment
                # (other tests' connections come and go meanwhile)
                samples = collector.collect(start + TABLE_WALK_SECONDS)
    states = {s.labels["state"]: s.value for s in by_name(samples, "net.connections")}
    assert states["listen"] >= 1 and states["established"] >= 2  # both ends of our connection
    assert len(states) == 11
    assert_declared(collector, samples)
    assert all(s.value >= 0 for s in samples)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CurrEstab is Linux's")
def test_close_waits_gone_since_the_last_dump_do_not_take_established_to_zero() -> None:
    """An agent ticking faster than the recount: a burst of half-closed connections counted
    at one tick and gone by the next must not take the next tick's established to 0 (it
    did: 0 established with 2 open, the burst's close_wait subtracted from a CurrEstab that
    no longer held it)."""
    collector = ConnectionsCollector()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(256)
        half_closed = []
        try:
            for _ in range(200):  # more than other tests' connections could make up for
                client = socket.create_connection(server.getsockname())
                half_closed.append(client)
                accepted, _ = server.accept()
                accepted.close()  # the client's end is in CLOSE_WAIT until it closes
            deadline = time.monotonic() + 5
            while collector.states()["close_wait"] < 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            start = time.monotonic()
            assert collector.states(now=start)["close_wait"] >= 200  # counted at this tick
        finally:
            for client in half_closed:
                client.close()
        with socket.create_connection(server.getsockname()):
            accepted, _ = server.accept()
            with accepted:
                states = collector.states(now=start + 0.1)  # no recount due yet
    assert states["established"] >= 2
    assert states["close_wait"] < 200


def listening(count: int) -> list[socket.socket]:
    """``count`` listening sockets, half IPv4, half IPv6 (where the host has IPv6)."""
    sockets = []
    for n in range(count):
        family = socket.AF_INET6 if n % 2 and socket.has_ipv6 else socket.AF_INET
        sock = socket.socket(family)
        sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        sock.listen()
        sockets.append(sock)
    return sockets


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="netlink socket diagnostics are Linux's")
def test_netlink_counts_tcp_states_of_both_families() -> None:
    before = netlink_tcp_states()["listen"]
    sockets = listening(20)
    try:
        during = netlink_tcp_states()
        rare = netlink_tcp_states(connections._RARE_STATES)
    finally:
        for sock in sockets:
            sock.close()
    after = netlink_tcp_states()["listen"]
    # Other processes on the host may open and close listeners meanwhile: a margin.
    assert during["listen"] - max(before, after) >= 15
    assert set(during) == set(TCP_STATES.values())
    assert rare["listen"] >= 20 and rare["established"] == rare["time_wait"] == 0  # not asked for


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="netlink socket diagnostics are Linux's")
def test_rare_tcp_states_are_dumped_at_most_every_walk_period(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = ConnectionsCollector()

    def listen(samples: list[Sample]) -> float:
        return next(s.value for s in samples if s.labels.get("state") == "listen")

    # The dumps the test decides, with no close-wait connection: this machine's own could
    # outnumber its established ones (CurrEstab) and rightly call for a dump at any tick.
    dumped = {"listen": 5}
    monkeypatch.setattr(
        connections, "netlink_tcp_states", lambda states: dict.fromkeys(TCP_STATES.values(), 0) | dumped
    )
    assert listen(collector.collect(100.0)) == 5
    dumped["listen"] = 999
    assert listen(collector.collect(101.0)) == 5  # the last dump's count
    assert listen(collector.collect(100.0 + TABLE_WALK_SECONDS)) == 999
    assert collector.states()["listen"] == 999  # without a tick's time: always a fresh dump


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_tcp_states_without_netlink_come_from_proc_net_tcp() -> None:
    collector = ConnectionsCollector()
    collector._netlink = False  # as where AF_NETLINK is not allowed
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            states = collector.states()
    assert states["listen"] >= 1 and states["established"] >= 2
    assert set(states) == set(TCP_STATES.values())


def test_proc_stat_parser() -> None:
    text = (
        "cpu  100 2 30 400 5 0 6 7 0 0\n"
        "cpu0 50 1 15 200 2 0 3 3 0 0\n"
        "cpu2 50 1 15 200 3 0 3 4 0 0\n"  # CPU 1 is offline
        "intr 12345 0 9 0\n"
        "ctxt 6789\n"
        "procs_running 3\n"
    )
    stat = read_proc_stat(text)
    assert stat.total.user == 100 and stat.total.steal == 7 and stat.total.guest == 0
    assert sorted(stat.cores) == [0, 2] and stat.cores[2].iowait == 3
    assert (stat.context_switches, stat.interrupts) == (6789, 12345)


def test_meminfo_with_more_available_than_total_falls_back_to_free_as_psutil_does() -> None:
    # Some container kernels report MemAvailable above MemTotal; psutil then uses MemFree.
    memory = read_meminfo("MemTotal: 1000 kB\nMemFree: 300 kB\nMemAvailable: 4000 kB\n")
    assert memory is not None
    mem, _ = memory
    assert (mem.total, mem.available, mem.used) == (1_024_000, 307_200, 716_800)
    assert mem.percent == 70.0
    assert read_meminfo("MemTotal: 1000 kB\nMemFree: 300 kB\n") is None  # before Linux 3.14


def test_meminfo_parser_computes_as_psutil_does() -> None:
    text = (
        "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\n"
        "Buffers:          10 kB\nCached:          300 kB\nSReclaimable:     50 kB\n"
        "Shmem:            20 kB\nSlab:             70 kB\nActive:          400 kB\n"
        "Inactive:        200 kB\nSwapTotal:       500 kB\nSwapFree:        400 kB\n"
        "Dirty:             5 kB\nCommitLimit:     900 kB\nCommitted_AS:   1200 kB\n"
    )
    parsed = read_meminfo(text)
    assert parsed is not None
    mem, swap = parsed
    assert (mem.total, mem.available, mem.used) == (1024000, 614400, 409600)
    assert mem.percent == pytest.approx(40.0)
    assert mem.cached == 350 * 1024  # Cached + SReclaimable, like free(1)
    assert (mem.dirty, mem.writeback, mem.committed, mem.commit_limit) == (5120, 0, 1228800, 921600)
    assert (swap.total, swap.used, swap.percent) == (512000, 102400, pytest.approx(20.0))
    assert read_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\n") is None  # before Linux 3.14
    if os.path.exists("/proc/meminfo"):
        real = {s.name: s.value for s in MemoryCollector().collect(time.monotonic())}
        assert real["mem.available_bytes"] == pytest.approx(psutil.virtual_memory().available, rel=0.1)
        assert real["swap.total_bytes"] == psutil.swap_memory().total


def test_mounts_are_chosen_again_only_when_the_table_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = FilesystemCollector(DEFAULT_EXCLUDED_FSTYPES)
    first = collector.mounts()
    calls: list[int] = []

    def choose() -> list[str]:
        calls.append(1)
        return ["/"]

    monkeypatch.setattr(collector, "_choose_mounts", choose)
    assert collector.mounts() == first
    if sys.platform.startswith("linux"):
        assert calls == []  # the same mount table: the same choice
        collector._mount_table = b"another table"
        assert collector.mounts() == ["/"] and calls == [1]


def test_sensors_are_looked_for_again_only_now_and_then(monkeypatch: pytest.MonkeyPatch) -> None:
    readings: dict[str, list[Reading]] = {}
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: readings, raising=False)
    monkeypatch.setattr(psutil, "sensors_fans", dict, raising=False)
    collector = SensorsCollector()
    assert collector.collect(10.0) == []
    readings["acpitz"] = [Reading("", 40.0)]  # a chip appears (a driver was loaded)
    assert collector.collect(11.0) == []  # not looked for on every tick
    found = collector.collect(10.0 + LOOK_AGAIN_SECONDS)
    assert [s.value for s in found] == [40.0]
    assert [s.value for s in collector.collect(11.0 + LOOK_AGAIN_SECONDS)] == [40.0]  # read on every tick


def test_proc_net_parsers() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n"
        "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000\n"
        "   2: 0100007F:1F90 0100007F:D2F2 06 00000000:00000000\n"
    )
    counts = count_tcp_states([table, table.splitlines()[0]])
    assert (counts["listen"], counts["established"], counts["time_wait"], counts["close"]) == (1, 1, 1, 0)
    snmp = parse_snmp("Tcp: ActiveOpens RetransSegs\nTcp: 10 3\nUdp: InDatagrams\nUdp: 7\n")
    assert snmp == {("Tcp", "ActiveOpens"): 10, ("Tcp", "RetransSegs"): 3, ("Udp", "InDatagrams"): 7}
    sockstat = parse_sockstat("sockets: used 13\nTCP: inuse 1 orphan 0 tw 4 alloc 1 mem 185\n")
    assert sockstat[("TCP", "tw")] == 4 and sockstat[("sockets", "used")] == 13


def test_process_counts_see_a_zombie() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while True:  # the child exited and is not reaped yet: a zombie
            samples = {s.name: s.value for s in ProcessesCollector().collect(time.monotonic())}
            if samples["procs.zombie"] >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        child.wait()
    assert samples["procs.zombie"] >= 1
    assert samples["procs.total"] >= samples["procs.sleeping"] + samples["procs.zombie"]
    assert samples["procs.running"] >= 1  # this process, collecting
    assert samples["procs.threads"] >= max(samples["procs.total"], samples["procs.running"])


def test_process_states_are_recounted_at_most_every_scan_period(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = ProcessesCollector()
    first = {s.name: s.value for s in collector.collect(100.0)}
    assert first["procs.total"] > 0
    monkeypatch.setattr(processes, "_state_of", lambda pid, proc: "Z")  # every process a zombie now
    soon = {s.name: s.value for s in collector.collect(101.0)}
    assert soon["procs.zombie"] == first["procs.zombie"]  # the last count, not a new scan
    later = {s.name: s.value for s in collector.collect(100.0 + processes.STATE_SCAN_SECONDS)}
    assert later["procs.zombie"] == later["procs.total"] > 0
    assert [s.name for s in collector.collect(200.0)] == [spec.name for spec in collector.METRICS]


def test_files_and_uptime() -> None:
    files = {s.name: s.value for s in FilesCollector().collect(time.monotonic())}
    assert 0 < files["files.open"] <= files["files.max"]
    assert 0 <= files["files.used_percent"] <= 100
    uptime = {s.name: s.value for s in UptimeCollector().collect(time.monotonic())}
    assert uptime["host.uptime_seconds"] > 0
    assert uptime["host.boot_time"] == pytest.approx(time.time() - uptime["host.uptime_seconds"], abs=5)


class Reading(NamedTuple):
    label: str
    current: float
    high: float | None = None
    critical: float | None = None


def test_sensors_where_present() -> None:
    collector = SensorsCollector()
    assert_declared(collector, collector.collect(time.monotonic()))  # none in most VMs, fine
    samples = sensor_samples(
        {"coretemp": [Reading("Package id 0", 48.0, 80.0, 100.0), Reading("", 45.0)]},
        {"thinkpad": [Reading("", 2100.0)]},
    )
    assert_declared(collector, samples)
    assert [(s.name, s.value, s.labels) for s in samples] == [
        ("sensor.temperature_celsius", 48.0, {"chip": "coretemp", "sensor": "Package id 0"}),
        ("sensor.temperature_critical_celsius", 100.0, {"chip": "coretemp", "sensor": "Package id 0"}),
        ("sensor.temperature_celsius", 45.0, {"chip": "coretemp", "sensor": "1"}),
        ("sensor.fan_rpm", 2100.0, {"chip": "thinkpad", "sensor": "0"}),
    ]


def test_rates_prime_skip_resets_and_forget_gone_counters() -> None:
    rates = Rates()
    rates.begin(10.0)
    assert rates.rate("a", 100) is None
    rates.begin(12.0)
    assert rates.rate("a", 300) == 100.0
    rates.begin(13.0)
    assert rates.rate("a", 50) is None  # reset: never a negative rate
    assert rates.rate("b", 1) is None
    rates.begin(14.0)
    assert rates.rate("a", 60) == 10.0
    rates.begin(15.0)
    rates.begin(16.0)  # "b" was not read at 14: gone, primes again
    assert rates.rate("b", 5) is None


def test_every_collector_emits_only_what_it_declares() -> None:
    collectors = build_collectors(AgentConfig())
    samples = {c.name: prime_and_collect(c, 0.0) for c in collectors}
    time.sleep(0.2)
    for collector in collectors:
        collected = collector.collect(time.monotonic())
        assert_declared(collector, collected)
        assert all(math.isfinite(s.value) for s in collected)
    assert samples


def test_without_proc_the_collectors_report_the_same_metrics_through_psutil() -> None:
    """On macOS or a BSD (no /proc) the agent reads psutil instead: the same names, labels and
    plausible values as the /proc reading on this host, less what only Linux counts."""
    on_proc = {
        c.name: c for c in (CpuCollector(), MemoryCollector(), ProcessesCollector(), ConnectionsCollector())
    }
    portable = {
        c.name: c for c in (CpuCollector(), MemoryCollector(), ProcessesCollector(), ConnectionsCollector())
    }
    for collector in portable.values():
        collector._linux = False  # as on a host without /proc
    connections_there = portable["connections"]
    assert isinstance(connections_there, ConnectionsCollector)
    connections_there._netlink = False  # netlink is Linux's too
    cpu = portable["cpu"]
    assert isinstance(cpu, CpuCollector)
    cpu._last = cpu._read()  # primed from psutil, as its __init__ would have there
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            burn_cpu(0.2)
            now = time.monotonic()
            expected = {name: {s.name: s for s in c.collect(now)} for name, c in on_proc.items()}
            got = {name: c.collect(now) for name, c in portable.items()}
    for name, samples in got.items():
        assert_declared(portable[name], samples)
        assert all(math.isfinite(s.value) and s.value >= 0 for s in samples), name
    values = {name: {s.name: s.value for s in samples if not s.labels} for name, samples in got.items()}

    assert 0 < values["cpu"]["cpu.usage_percent"] <= 100
    assert values["memory"]["mem.total_bytes"] == expected["memory"]["mem.total_bytes"].value
    assert values["memory"]["swap.total_bytes"] == expected["memory"]["swap.total_bytes"].value
    # Processes start and end meanwhile: the counts agree within a margin.
    assert values["processes"]["procs.total"] == pytest.approx(
        expected["processes"]["procs.total"].value, rel=0.2, abs=5
    )
    assert "procs.threads" not in values["processes"]  # Linux's alone
    states = {s.labels["state"]: s.value for s in got["connections"] if s.name == "net.connections"}
    assert set(states) == set(TCP_STATES.values())
    assert states["listen"] >= 1 and states["established"] >= 2  # both ends of our connection

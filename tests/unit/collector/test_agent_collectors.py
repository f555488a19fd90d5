"""The collectors against this host: plausible values, labels, and only declared metrics."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from signalfire.collector.agent import AGENT_METRICS, Agent
from signalfire.collector.collectors import CpuCollector, DiskCollector, MemoryCollector, build_collectors
from signalfire.collector.collectors.base import Collector
from signalfire.collector.config import DEFAULT_EXCLUDED_FSTYPES, AgentConfig, CollectorSwitches
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
    collector = DiskCollector(DEFAULT_EXCLUDED_FSTYPES)
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
    reported = DiskCollector(DEFAULT_EXCLUDED_FSTYPES).mounts()
    assert not pseudo & set(reported) - {"/"}
    assert len(reported) == len(set(reported))


def test_disk_exclude_patterns_match_fstypes() -> None:
    root = next(p for p in psutil.disk_partitions(all=True) if p.mountpoint == "/")
    assert "/" not in DiskCollector([root.fstype[:2] + "*"]).mounts()
    assert DiskCollector(["*"]).collect(time.monotonic()) == []


class WithVanishedMount(DiskCollector):
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
    assert [c.name for c in everything] == ["cpu", "memory", "disk"]
    only_memory = build_collectors(AgentConfig(collectors=CollectorSwitches(cpu=False, disk=False)))
    assert [c.name for c in only_memory] == ["memory"]


def test_every_collector_output_fits_the_contract() -> None:
    collectors = build_collectors(AgentConfig())
    time.sleep(0.1)
    samples = [s for c in collectors for s in c.collect(time.monotonic())]
    batch = MetricBatch(host="h", time=time.time(), samples=samples)
    assert decode(encode(batch), MetricBatch) == batch


def test_docs_list_every_declared_metric_and_config_field() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "agent.md").read_text()
    collectors = build_collectors(AgentConfig())
    for spec in [*AGENT_METRICS, *(spec for c in collectors for spec in c.METRICS)]:
        assert f"| `{spec.name}` |" in docs, f"docs/agent.md does not list {spec.name}"
    for field in AgentConfig.__struct_fields__:
        assert f"`{field}" in docs, f"docs/agent.md does not document {field}"


def test_agent_own_samples_are_declared() -> None:
    agent = Agent(AgentConfig())
    declared = {spec.name: set(spec.labels) for spec in AGENT_METRICS}
    samples = agent.own_samples()
    assert {s.name for s in samples} == set(declared)
    for sample in samples:
        assert set(sample.labels) == declared[sample.name]

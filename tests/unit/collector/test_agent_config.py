"""agent.yaml: defaults, validation errors that name file, line and field, SF_* overrides."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from signalfire.collector.collectors.diskio import DiskIoCollector
from signalfire.collector.config import AgentConfig
from signalfire.config import ConfigError, load_config
from signalfire.events import MAX_LABEL_VALUE_LENGTH, MAX_LABELS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(AgentConfig, path, environ=environ or {})
    return str(info.value)


def test_defaults_without_a_file() -> None:
    config = load_config(AgentConfig, None, environ={})
    assert config.interval == 5.0
    assert config.host == socket.gethostname()
    assert all(getattr(config.collectors, name) for name in config.collectors.__struct_fields__)
    assert {"tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "cgroup*"} <= set(
        config.filesystem_exclude_fstypes
    )
    assert not config.net_include_loopback and not config.net_include_virtual
    assert config.spool_dir is None and config.checks.http == []
    assert config.buffer_size == 1000


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nats:\n  url: nats://10.0.0.1:4222\ninterval: 1s\nhostname: web-1.example.com\n"
        "labels: {env: prod, role: web}\ncollectors: {filesystem: false}\nbuffer_size: 50\n"
        "filesystem_exclude_fstypes: [tmpfs, nfs*]\nspool_dir: /var/lib/sf\nnet_include_virtual: true\n"
        "checks:\n  http:\n    - url: https://example.com/health\n      interval: 30s\n      body_match: ok\n"
        "  tcp:\n    - {address: 'db:5432', timeout: 2s}\n  process:\n    - {name: nginx}\n",
    )
    config = load_config(AgentConfig, path, environ={})
    assert config.interval == 1.0
    assert config.host == "web-1.example.com"
    assert config.labels == {"env": "prod", "role": "web"}
    assert not config.collectors.filesystem and config.collectors.cpu
    assert config.buffer_size == 50
    assert config.filesystem_exclude_fstypes == ["tmpfs", "nfs*"]
    assert config.spool_dir == "/var/lib/sf" and config.net_include_virtual
    assert config.checks.http[0].interval == 30.0 and config.checks.http[0].timeout == 5.0
    assert config.checks.tcp[0].address == "db:5432" and config.checks.tcp[0].timeout == 2.0
    assert config.checks.process[0].name == "nginx"


def test_interval_below_minimum_names_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: info\ninterval: 100ms\n")
    assert error_of(path) == f"{path}:2: interval: must be at least 0.2s, got 0.1s"


def test_interval_that_is_not_a_duration(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: soon\n")
    message = error_of(path)
    assert message.startswith(f"{path}:1: interval: ")
    assert "duration" in message


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 5s\nintervall: 10s\n")
    assert error_of(path) == f"{path}:2: intervall: unknown field (a typo, or a setting of another version?)"


def test_unknown_collector_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 5s\ncollectors:\n  cpu: true\n  gpu: true\n")
    assert (
        error_of(path)
        == f"{path}:4: collectors.gpu: unknown field (a typo, or a setting of another version?)"
    )


def test_label_name_outside_the_contract(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 5s\nlabels:\n  'bad label': x\n")
    message = error_of(path)
    assert message == f"{path}:2: labels: name 'bad label' must be up to 100 letters, digits, '_', '.' or '-'"


def test_negative_buffer_and_empty_hostname(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, "buffer_size: -1\n")).endswith(
        ":1: buffer_size: must be 0 or more, got -1"
    )
    assert ":1: hostname: must not be empty" in error_of(write(tmp_path, "hostname: ''\n"))


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 5s\n")
    config = load_config(
        AgentConfig,
        path,
        environ={"SF_INTERVAL": "2s", "SF_HOSTNAME": "db-1", "SF_NATS_URL": "nats://n:4222"},
    )
    assert (config.interval, config.host, config.nats.url) == (2.0, "db-1", "nats://n:4222")
    assert "SF_INTERVAL" in error_of(path, {"SF_INTERVAL": "0.01"})


def test_bad_checks_name_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "checks:\n  http:\n    - url: ftp://x\n")
    assert (
        error_of(path)
        == f"{path}:3: checks.http[0].url: must be http://host[:port]/... or https://..., got 'ftp://x'"
    )
    path = write(tmp_path, "checks:\n  tcp:\n    - address: db\n")
    assert ":3: checks.tcp[0].address: must be host:port, got 'db'" in error_of(path)
    path = write(tmp_path, "checks:\n  http:\n    - url: http://x\n      body_match: '('\n")
    assert "checks.http[0].body_match: not a valid regular expression" in error_of(path)
    path = write(tmp_path, "checks:\n  process:\n    - {name: x, colour: red}\n")
    assert "checks.process[0].colour: unknown field" in error_of(path)


def test_bad_filter_regex_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 1s\nnet_exclude_interfaces: '[veth'\n")
    assert error_of(path).startswith(f"{path}:2: net_exclude_interfaces: not a valid regular expression")


def test_a_regex_re2_cannot_run_is_refused_with_the_field_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "checks:\n  http:\n    - url: http://x\n      body_match: '(a)\\1'\n")
    assert "checks.http[0].body_match: not a valid regular expression: " in error_of(path)
    assert "backreferences are not supported (RE2 syntax, see docs/rules.md)" in error_of(path)
    path = write(tmp_path, "checks:\n  process:\n    - {name: x, cmdline: 'x(?=y)'}\n")
    assert "checks.process[0].cmdline: not a valid regular expression: 'x(?=y)': lookahead" in error_of(path)
    for field in ("net_exclude_interfaces", "diskio_exclude_devices"):
        path = write(tmp_path, f"interval: 1s\n{field}: '(?<!veth)x'\n")
        assert error_of(path).startswith(f"{path}:2: {field}: not a valid regular expression: ")
        assert "lookbehind" in error_of(path)


def test_the_default_disk_exclude_pattern_runs_on_re2() -> None:
    exclude = DiskIoCollector(load_config(AgentConfig, None, environ={}).diskio_exclude_devices).exclude
    assert exclude is not None
    assert [exclude.search(d) for d in ("nvme0n1p2", "sda1", "loop3", "nvme0n1", "sda")] == [
        True,
        True,
        True,
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spool_dir: '  '\n", ":1: spool_dir: must not be empty (leave it out to buffer in memory only)"),
        (
            "labels: {" + ", ".join(f"l{i}: x" for i in range(MAX_LABELS + 1)) + "}\n",
            f":1: labels: at most {MAX_LABELS} labels, got {MAX_LABELS + 1}",
        ),
        (
            "labels:\n  role: " + "x" * (MAX_LABEL_VALUE_LENGTH + 1) + "\n",
            f":1: labels: value of 'role' is longer than {MAX_LABEL_VALUE_LENGTH} characters",
        ),
        ("checks:\n  process:\n    - name: '  '\n", ":3: checks.process[0].name: must not be empty"),
        (
            "checks:\n  process:\n    - {name: nginx, min_count: 0}\n",
            ":3: checks.process[0].min_count: must be 1 or more, got 0",
        ),
        (
            "checks:\n  tcp:\n    - {address: 'db:5432', interval: 100ms}\n",
            ":3: checks.tcp[0].interval: must be at least 0.2s, got 0.1s",
        ),
        (
            "checks:\n  tcp:\n    - {address: 'db:5432', timeout: 0s}\n",
            ":3: checks.tcp[0].timeout: must be more than 0s, got 0.0s",
        ),
    ],
)
def test_more_mistakes_name_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}{expected}"

"""The agent refuses, at start, a host name the contract refuses: its every batch would be
dropped, and a host whose name holds '/' has a dashboard page that can never open."""

from __future__ import annotations

from pathlib import Path

import pytest

from signalfire.collector.config import AgentConfig
from signalfire.config import ConfigError, load_config


def error_of(tmp_path: Path, hostname: str) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(f"interval: 5s\nhostname: {hostname}\n")
    with pytest.raises(ConfigError) as info:
        load_config(AgentConfig, path, environ={})
    return str(info.value)


@pytest.mark.parametrize("hostname", ["web/1", "'/'", "'..'", "'.'", '"web\\t1"', '"web-1\\n"', '"db\\x1b"'])
def test_a_hostname_with_a_slash_or_control_characters_is_refused(tmp_path: Path, hostname: str) -> None:
    message = error_of(tmp_path, hostname)
    assert ":2: hostname: " in message
    assert "must not contain '/' or control characters, nor be '.' or '..'" in message


def test_a_hostname_longer_than_the_contract_allows_is_refused(tmp_path: Path) -> None:
    assert "hostname: " in error_of(tmp_path, "h" * 254) and "1 to 253 characters" in error_of(
        tmp_path, "h" * 254
    )


@pytest.mark.parametrize("hostname", ["web-1.example.com", "Büro PC", "a..b", "db_2"])
def test_real_host_names_are_taken_as_written(tmp_path: Path, hostname: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"hostname: {hostname}\n")
    assert load_config(AgentConfig, path, environ={}).host == hostname


def test_the_environment_is_checked_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hostname: 'a/b' must not contain '/'"):
        load_config(AgentConfig, None, environ={"SF_HOSTNAME": "a/b"})

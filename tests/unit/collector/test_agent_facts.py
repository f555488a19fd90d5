"""The host facts the agent reports when it comes online, on hosts unlike this one."""

from __future__ import annotations

import platform

import pytest

from signalfire.collector import facts


def test_the_os_is_the_kernel_name_where_no_os_release_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    # macOS, BSDs, minimal containers: freedesktop_os_release raises OSError there.
    def no_os_release() -> dict[str, str]:
        raise FileNotFoundError("/etc/os-release")

    monkeypatch.setattr(platform, "freedesktop_os_release", no_os_release)
    assert facts.os_name() == platform.system()
    assert facts.host_facts().os == platform.system()


def test_an_os_release_without_a_pretty_name_falls_back_to_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "freedesktop_os_release", lambda: {"NAME": "Alpine Linux"})
    assert facts.os_name() == "Alpine Linux"
    monkeypatch.setattr(platform, "freedesktop_os_release", lambda: {})
    assert facts.os_name() == platform.system()


def test_an_agent_run_from_a_source_tree_reports_version_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facts, "DISTRIBUTION", "signalfire-collector-not-installed")
    assert facts.agent_version() == "unknown"
    assert facts.host_facts().agent_version == "unknown"

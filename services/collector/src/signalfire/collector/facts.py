"""What the agent tells about its host when it comes online."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import psutil

from signalfire.events import HostFacts

DISTRIBUTION = "signalfire-collector"


def agent_version() -> str:
    """The installed version of the agent's distribution (``unknown`` when run from a tree)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def os_name() -> str:
    """``Debian GNU/Linux 13 (trixie)`` where os-release exists, else ``Linux``/``Darwin``/..."""
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return platform.system()
    return release.get("PRETTY_NAME") or release.get("NAME") or platform.system()


def host_facts() -> HostFacts:
    """Facts read now: operating system, kernel, logical CPUs, memory, boot time, agent version."""
    return HostFacts(
        os=os_name(),
        kernel=platform.release(),
        cpu_count=psutil.cpu_count(logical=True) or 0,
        memory_total_bytes=int(psutil.virtual_memory().total),
        boot_time=psutil.boot_time(),
        agent_version=agent_version(),
    )

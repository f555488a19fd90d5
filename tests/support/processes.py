"""``signalfire`` service processes that a test starts, kills and starts again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from devstack import ServiceProcess


def notifier_process(name: str, config: Path, log_dir: Path) -> ServiceProcess:
    """``signalfire notifier --config <config>``, not started yet, its log ``<log_dir>/<name>.log``.
    Configured by the file alone: the test's own ``SF_*`` variables are not passed on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SF_")}
    return ServiceProcess(name, ["notifier", "--config", str(config)], env, log_dir)


def kill9(process: ServiceProcess) -> None:
    """SIGKILL the running ``process`` (its whole process group: it runs in a session of its
    own) and reap it; fails when it had already died."""
    assert process.proc is not None and process.alive(), f"{process.name} died early"
    os.killpg(process.proc.pid, signal.SIGKILL)
    process.proc.wait(timeout=10)

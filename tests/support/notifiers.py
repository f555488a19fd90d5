"""Notifiers a test runs: ``NotifierService`` in the test's process, or ``signalfire notifier``
processes it starts, kills and starts again."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from devstack import ServiceProcess

from signalfire.notifier.config import NotifyConfig
from signalfire.notifier.service import NotifierService


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


@contextlib.asynccontextmanager
async def notifier_services(
    nc: Any, **options: Any
) -> AsyncIterator[Callable[[NotifyConfig], Awaitable[NotifierService]]]:
    """A function that starts a ``NotifierService`` on ``nc`` for a config (``options`` such as
    ``environ`` and ``clock`` go to each one) and returns it; all it started are stopped when
    the block ends."""
    services: list[NotifierService] = []

    async def start(config: NotifyConfig) -> NotifierService:
        service = NotifierService(config, nc, **options)
        await service.start()
        services.append(service)
        return service

    try:
        yield start
    finally:  # a failing test's services too: left running, they hold the test's event loop
        for service in services:
            await service.stop()

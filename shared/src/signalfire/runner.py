"""Runs a service until SIGTERM/SIGINT, with SIGHUP for reload; one way for every service."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from signalfire.config import ConfigError

log = logging.getLogger("signalfire.runner")


class Service(Protocol):
    """What :func:`run_service` drives: explicit start and stop, resources owned inside."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(service: Service, on_reload: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
    """Start ``service``, wait for SIGTERM or SIGINT, then stop it cleanly."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if on_reload is not None:
        reload = on_reload

        reloads: set[asyncio.Task[None]] = set()

        def hup() -> None:
            task = loop.create_task(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, hup)
    await service.start()
    try:
        await stopping.wait()
        log.info("stopping")
    finally:
        await service.stop()


def run_service(main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """``asyncio.run(main())`` with the errors users can meet turned into one-line messages."""
    try:
        asyncio.run(main())
    except ConfigError as exc:
        print(f"signalfire: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"signalfire: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

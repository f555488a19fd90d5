"""Runs a service until SIGTERM/SIGINT, with SIGHUP for reload; one way for every service."""

from __future__ import annotations

import asyncio
import contextlib
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
    """Start ``service``, wait for SIGTERM or SIGINT, then stop it cleanly.

    A signal that arrives while the service is still starting (waiting for NATS or the
    database) abandons the start and stops what was started.
    """
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
    starting = asyncio.ensure_future(service.start())
    stop_requested = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start raises here
            await stop_requested
        else:
            log.info("stop requested while starting")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        log.info("stopping")
    finally:
        stop_requested.cancel()
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

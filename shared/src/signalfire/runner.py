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


class ServiceFailed(Exception):
    """A task the service cannot run without ended while it was not stopping."""


class Essentials:
    """The tasks a service cannot run without: the loops that judge, deliver, store, publish.

    One that ends while the service is not stopping, by raising (a bug, data nobody foresaw)
    or by returning, is logged with its traceback and makes :func:`serve` stop the service and
    the process exit with status 1, so that what supervises it (``make up``, systemd, compose,
    Kubernetes) starts it again. Before, the process lived on without that loop: an evaluator
    kept renewing its partition leases and judged nothing, a notifier answered JetStream and
    delivered nothing, and nothing outside could see it. Restarted, it reads its state back
    (KV, the durable consumers) and other replicas cover it meanwhile.

    A service calls :meth:`stop` first thing in its own ``stop()``; from then on its tasks
    may end."""

    def __init__(self) -> None:
        self._stopping = False
        self._failed: asyncio.Future[str] | None = None

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """``asyncio.create_task(work)``, watched."""
        task = asyncio.create_task(work, name=name)
        self.watch(task)
        return task

    def watch(self, *tasks: asyncio.Task[Any]) -> None:
        """Watch tasks made elsewhere (a component's own loops)."""
        for task in tasks:
            task.add_done_callback(self._ended)

    def stop(self) -> None:
        """The service is stopping: its tasks may end now."""
        self._stopping = True

    def _future(self) -> asyncio.Future[str]:
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        reason = f"{task.get_name()} ended" + (f": {type(exc).__name__}: {exc}" if exc is not None else "")
        log.error(
            "an essential task ended; stopping so that the process is started again",
            extra={"task": task.get_name(), "reason": reason},
            exc_info=exc,
        )
        failed = self._future()
        if not failed.done():
            failed.set_result(reason)

    async def failed(self) -> str:
        """Wait until an essential task ends unexpectedly; what ended, and how."""
        return await asyncio.shield(self._future())


class Service(Protocol):
    """What :func:`serve` drives: explicit start and stop, resources owned inside, and the
    tasks it cannot run without."""

    essentials: Essentials

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
    failure = asyncio.ensure_future(service.essentials.failed())
    failed: str | None = None
    try:
        await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start raises here
            await asyncio.wait({stop_requested, failure}, return_when=asyncio.FIRST_COMPLETED)
            if failure.done() and not stop_requested.done():
                failed = failure.result()
        else:
            log.info("stop requested while starting")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        log.info("stopping")
    finally:
        stop_requested.cancel()
        failure.cancel()
        await service.stop()
    if failed is not None:
        raise ServiceFailed(failed)


def run_service(main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """``asyncio.run(main())`` with the errors users can meet turned into one-line messages."""
    try:
        asyncio.run(main())
    except ConfigError as exc:
        print(f"signalfire: {exc}", file=sys.stderr)
        return 2
    except ServiceFailed as exc:
        print(f"signalfire: stopped: {exc}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"signalfire: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

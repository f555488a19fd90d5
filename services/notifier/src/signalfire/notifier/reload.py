"""Config reload: which settings a running notifier takes from a new config, and the config
file, read again on ``SIGHUP`` and whenever it changes.

A reload takes routes, inhibit rules, ``tick``, channels, ``watch_interval``, the watches and
the heartbeat; the settings of the process itself (:data:`RESTART_SETTINGS`) take effect at
the next restart.
The service builds the new channels and hands the result to its parts
(:meth:`~signalfire.notifier.service.NotifierService.reload`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping

import msgspec

from signalfire.config import ConfigError, Duration
from signalfire.notifier.config import NotifyConfig, load_notify_config
from signalfire.telemetry import Registry

log = logging.getLogger("signalfire.notifier")

#: Settings a reload cannot change in a running notifier.
RESTART_SETTINGS = (
    "nats",
    "ack_wait",
    "claim_lease",
    "max_deliver",
    "max_in_flight",
    "first_start_backlog",
    "metrics_listen",
    "log_level",
    "log_format",
)


def check(config: NotifyConfig) -> None:
    """Raise :class:`ConfigError` naming the field of the first cross-field mistake in
    ``config`` (a route naming an unknown channel, …)."""
    problems = config.problems()
    if problems:
        field, reason = problems[0]
        raise ConfigError(reason, field=field)


def adopt(running: NotifyConfig, new: NotifyConfig) -> NotifyConfig:
    """``running`` with the settings a reload changes taken from ``new``; a warning names the
    settings of ``new`` that differ but wait for a restart."""
    kept = [name for name in RESTART_SETTINGS if getattr(new, name) != getattr(running, name)]
    if kept:
        log.warning("these settings take effect at the next restart", extra={"settings": ",".join(kept)})
    return msgspec.structs.replace(
        running,
        routes=new.routes,
        inhibit=new.inhibit,
        tick=new.tick,
        channels=new.channels,
        watch_interval=new.watch_interval,
        evaluation_watch=new.evaluation_watch,
        storage_watch=new.storage_watch,
        heartbeat=new.heartbeat,
    )


class ConfigFile:
    """The file the running config came from. :meth:`reload` reads it again and passes it to
    ``apply``; :meth:`watch` does so whenever the file changes, looking every
    ``watch_interval()`` (``0``: only on :meth:`reload`, i.e. ``SIGHUP``)."""

    def __init__(
        self,
        path: str | None,
        environ: Mapping[str, str],
        apply: Callable[[NotifyConfig], Awaitable[None]],
        watch_interval: Callable[[], Duration],
        registry: Registry,
    ) -> None:
        self.path = path
        self._environ = environ
        self._apply = apply
        self._watch_interval = watch_interval
        self._seen = self._signature()
        self._lock = asyncio.Lock()
        self.reloads = registry.counter(
            "reloads", "Config reloads (SIGHUP or a changed file), by result", ["result"]
        )

    async def reload(self) -> bool:
        """Read :attr:`path` again and apply it. A file with a mistake, or a channel that
        cannot be built, is logged (``file:line: field: reason``) and counted, and the running
        config kept. Returns whether the new config is in use."""
        if self.path is None:
            return False
        async with self._lock:
            self._seen = self._signature()
            try:
                await self._apply(load_notify_config(self.path, environ=self._environ))
            except ConfigError as exc:
                self.reloads.labels(result="failed").inc()
                log.error(
                    "config not reloaded; the running config is kept",
                    extra={"file": self.path, "reason": str(exc)},
                )
                return False
            self.reloads.labels(result="ok").inc()
            return True

    async def watch(self) -> None:
        """Reload whenever the file's modification time or size changes; runs until cancelled."""
        # runs with watch_interval 0 too (looking once a second whether a reload turned it on)
        while True:
            await asyncio.sleep(float(self._watch_interval()) or 1.0)
            if self._watch_interval() > 0 and self._signature() != self._seen:
                await self.reload()

    def _signature(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return (-1, -1)
        return (stat.st_mtime_ns, stat.st_size)

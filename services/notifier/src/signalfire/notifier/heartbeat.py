"""The heartbeat: a dead man's switch for what no alert of Signalfire's can report.

The notifier pages when no evaluator judges some hosts and when nothing is stored
(:mod:`watch`), but a page needs NATS and a notifier: with NATS down or cut off, the alerts
stream without a leader, or every notifier down, nothing can say so. An outside service
can, by noticing a silence (healthchecks.io, Dead Man's Snitch, Better Stack, Cronitor): every
``heartbeat.every``, each replica asks JetStream for its alerts consumer (the stream it
takes pages from) and, when the answer comes within ``heartbeat.timeout`` and its intake
is not stuck (progress within ``heartbeat.stalled_after``: a fetch answered or an event
finished), requests the service's URL (a GET). When the requests stop, the service pages
through a path of its own.

Every replica requests on its own, so the service hears from the fleet while one notifier
lives. The URL holds the check's secret: it is never logged, and a request that fails is
logged with the status or the kind of error only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from signalfire.config import ConfigError
from signalfire.control import HeartbeatResult
from signalfire.notifier.channels.base import DeliveryError, read_secret
from signalfire.notifier.channels.http import get
from signalfire.notifier.config import HeartbeatConfig
from signalfire.telemetry import Registry

log = logging.getLogger(__name__)

USER_AGENT = "signalfire-notifier/1 (heartbeat)"


@dataclass(frozen=True)
class Target:
    """The heartbeat as configured, its URL read from where ``heartbeat`` names it."""

    url: str
    every: float
    timeout: float
    stalled_after: float

    def __repr__(self) -> str:  # the URL is a secret
        return f"Target(every={self.every:g}, timeout={self.timeout:g}, stalled_after={self.stalled_after:g})"


def target(settings: HeartbeatConfig | None, environ: Mapping[str, str]) -> Target | None:
    """The heartbeat of ``settings`` (None: off). Raises :class:`ConfigError` naming the
    setting when the URL cannot be read or is not an ``http(s)`` URL (the value is not
    repeated: it is a secret)."""
    if settings is None:
        return None
    url = read_secret(environ, "heartbeat", "url", settings.url_env, settings.url_file)
    assert url is not None  # HeartbeatConfig requires one of the two
    field = "heartbeat.url_env" if settings.url_env is not None else "heartbeat.url_file"
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError("the heartbeat URL must be an http:// or https:// URL with a host", field=field)
    return Target(url, float(settings.every), float(settings.timeout), float(settings.stalled_after))


async def ping(http: aiohttp.ClientSession, target: Target) -> int:
    """Request ``target``'s URL once and return its (2xx) status; raise
    :class:`~signalfire.notifier.channels.base.DeliveryError` (a text without the URL) else."""
    reply = await get(http, target.url, timeout=target.timeout, headers={"User-Agent": USER_AGENT})
    return reply.status


class Heartbeat:
    """Requests :attr:`target`'s URL every ``every`` while ``alive()`` returns within
    ``timeout`` and ``idle_seconds()`` (since the intake's last progress) is within
    ``stalled_after`` (see the module's docstring); :attr:`target` may be replaced (a reload)
    or None (off)."""

    #: How often a heartbeat that is off looks whether it was turned on.
    IDLE = 1.0

    def __init__(
        self,
        target: Target | None,
        alive: Callable[[], Awaitable[object]],
        idle_seconds: Callable[[], float],
        *,
        http: aiohttp.ClientSession,
        registry: Registry,
        monotonic: Callable[[], float],
    ) -> None:
        self.target = target
        self._alive = alive
        self._idle_seconds = idle_seconds
        self._http = http
        self._monotonic = monotonic
        self._results = registry.counter(
            "heartbeats",
            "Heartbeat requests to the outside dead man's switch, by result: sent (answered 2xx),"
            " failed (no 2xx answer), skipped (JetStream did not answer, or the intake is stuck,"
            " so none was sent)",
            ["result"],
        )
        #: What stops the heartbeat now (logged once when it changes), None when it is sent.
        self.trouble: str | None = None
        self._stopped = False
        #: The last heartbeat's result (None: none yet).
        self.last: HeartbeatResult | None = None

    def stop(self) -> None:
        """End :meth:`run` after the heartbeat under way."""
        self._stopped = True

    async def run(self) -> None:
        while not self._stopped:
            target = self.target
            if target is None:
                await asyncio.sleep(self.IDLE)
                continue
            started = self._monotonic()
            await self.beat(target)
            await asyncio.sleep(max(0.0, target.every - (self._monotonic() - started)))

    async def beat(self, target: Target) -> HeartbeatResult:
        """One heartbeat: ``sent``, ``failed`` or ``skipped`` (counted, and a change of trouble
        logged)."""
        if self._idle_seconds() > target.stalled_after:
            return self._counted(
                "skipped",
                f"the intake is stuck (no alert event taken or finished for over"
                f" {target.stalled_after:g}s): no heartbeat sent",
            )
        try:
            async with asyncio.timeout(target.timeout):
                await self._alive()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = "no answer within the timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return self._counted("skipped", f"JetStream did not answer ({reason}): no heartbeat sent")
        try:
            await ping(self._http, target)
        except DeliveryError as exc:
            return self._counted("failed", f"the heartbeat was not taken: {exc}")
        return self._counted("sent", None)

    def _counted(self, result: HeartbeatResult, trouble: str | None) -> HeartbeatResult:
        self.last = result
        self._results.labels(result=result).inc()
        if trouble is not None and trouble != self.trouble:
            log.warning(trouble)
        elif trouble is None and self.trouble is not None:
            log.info("heartbeat sent again")
        self.trouble = trouble
        return result

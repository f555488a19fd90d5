"""Durable pull consumers: create or converge one, fetch from it, back off on errors.

Every service that reads a JetStream stream with a durable pull consumer goes through
:func:`ensure_durable` (at start) and a :class:`Fetcher` (per round). The retry policy is one
:class:`Backoff`, also used by the dev stack's restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError

from signalfire.log import Throttle

log = logging.getLogger("signalfire.consumers")

#: The settings of a durable consumer that converge to the service's config at each start.
#: Where a consumer starts (deliver policy, start time) is fixed when it is created.
CONVERGED: tuple[str, ...] = ("ack_wait", "max_deliver", "max_ack_pending", "filter_subject", "description")


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays between retries: ``first`` seconds, doubled after each failure up to ``cap``, and
    ``first`` again after a success (or after a run that lasted ``stable`` seconds)."""

    first: float = 0.5
    cap: float = 30.0
    stable: float = math.inf

    def delay(self, previous: float | None, uptime: float = 0.0) -> float:
        """The delay before the next attempt, after one that followed a delay of ``previous``
        seconds (``None``: the last attempt succeeded) and lasted ``uptime`` seconds."""
        if previous is None or uptime >= self.stable:
            return self.first
        return min(previous * 2, self.cap)


async def ensure_durable(
    js: JetStreamContext,
    stream: str,
    wanted: ConsumerConfig,
    converge: Sequence[str] = CONVERGED,
) -> JetStreamContext.PullSubscription:
    """Create the durable pull consumer ``wanted.durable_name`` on ``stream``, or converge the
    ``converge`` settings of the one that exists; returns a pull subscription bound to it.

    Safe to call from every replica at once: a replica that loses the race to create the
    consumer uses the one the winner created.
    """
    durable = wanted.durable_name
    assert durable is not None, "a durable consumer needs a durable_name"
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        try:
            await js.add_consumer(stream, wanted)
        except Exception:
            # another replica created it first; use theirs
            await js.consumer_info(stream, durable)
    else:
        current = info.config
        changes = {
            name: getattr(wanted, name)
            for name in converge
            if getattr(wanted, name) is not None and getattr(current, name) != getattr(wanted, name)
        }
        if changes:
            await js.add_consumer(stream, dataclasses.replace(current, **changes))
            log.info("updated consumer %s", durable, extra={"stream": stream, "changed": ",".join(changes)})
    return await js.pull_subscribe_bind(durable=durable, stream=stream)


@dataclasses.dataclass
class Fetcher:
    """Fetches rounds from one pull subscription: an idle stream (nothing within ``timeout``)
    is an empty round, not an error; a real error is counted by ``on_error``, logged once per
    30 s while it repeats (by ``warnings``), and followed by a pause that grows by ``backoff``
    until a fetch succeeds again. ``pause`` waits (a service passes one that returns early
    when it stops).
    """

    sub: Any
    name: str
    _: dataclasses.KW_ONLY
    timeout: float = 1.0
    backoff: Backoff = Backoff()
    on_error: Callable[[Exception], None] | None = None
    pause: Callable[[float], Awaitable[Any]] = asyncio.sleep
    warnings: Throttle = dataclasses.field(default_factory=Throttle)
    _delay: float | None = dataclasses.field(default=None, init=False)

    async def fetch(self, batch: int) -> list[Msg]:
        """Up to ``batch`` messages; ``[]`` when none came in time or the fetch failed."""
        try:
            messages: list[Msg] = await self.sub.fetch(batch, timeout=self.timeout)
        except TimeoutError:
            # nats-py raises its own TimeoutError or the builtin one; both are TimeoutErrors.
            return []
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.on_error is not None:
                self.on_error(exc)
            if self.warnings.due((self.name, repr(exc))):
                log.warning("fetch failed; retrying", extra={"consumer": self.name, "reason": repr(exc)})
            self._delay = self.backoff.delay(self._delay)
            await self.pause(self._delay)
            return []
        self._delay = None
        return messages

"""Per-channel rate limit: a token bucket, plus the pause a provider asks for with 429.

The clock and the sleep are injected, so tests drive time themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """``rate`` messages per second on average, ``burst`` back to back; ``rate`` 0 means
    no limit (``hold`` still applies)."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()
        self._held_until = 0.0
        self._lock = asyncio.Lock()

    def hold(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (the provider answered 429 with ``Retry-After``)."""
        self._held_until = max(self._held_until, self._clock() + seconds)

    def wait_time(self) -> float:
        """Seconds until a message may go (0: now). Takes the token when it is 0."""
        now = self._clock()
        if now < self._held_until:
            return self._held_until - now
        if self.rate <= 0:
            return 0.0
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def acquire(self) -> None:
        """Wait until a message may go, then take its token. Waiters go in turn."""
        async with self._lock:
            while (wait := self.wait_time()) > 0:
                await self._sleep(wait)

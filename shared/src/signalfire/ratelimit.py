"""The one token bucket: ``rate`` events per second on average, ``burst`` back to back.

:class:`TokenBucket` limits one stream of events (a notifier channel's messages) and can be
held for a while (a provider answered 429 with ``Retry-After``); :class:`RateLimiter` keeps a
bucket per key (the gateway's API requests per token, failed logins per address). The clock
and the sleep are injected, so tests drive time themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable


class TokenBucket:
    """``rate`` events per second on average, ``burst`` back to back; ``rate`` 0 means no
    limit (:meth:`hold` still applies)."""

    __slots__ = ("_clock", "_held_until", "_lock", "_sleep", "_stamp", "_tokens", "burst", "rate")

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
        # made on first use: a RateLimiter holds many buckets and awaits none of them
        self._lock: asyncio.Lock | None = None

    def hold(self, seconds: float) -> None:
        """Let nothing go for ``seconds``."""
        self._held_until = max(self._held_until, self._clock() + seconds)

    def _refill(self, now: float) -> float:
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._tokens

    def peek(self) -> float:
        """Seconds until an event may go (0: now), without taking a token."""
        now = self._clock()
        if now < self._held_until:
            return self._held_until - now
        if self.rate <= 0:
            return 0.0
        tokens = self._refill(now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def wait_time(self) -> float:
        """Seconds until an event may go (0: now). Takes the token when it is 0."""
        wait = self.peek()
        if wait == 0.0 and self.rate > 0:
            self._tokens -= 1.0
        return wait

    def full(self) -> bool:
        """Whether the bucket has refilled to ``burst`` (nothing to remember about it)."""
        return self.rate <= 0 or self._refill(self._clock()) >= self.burst

    async def acquire(self) -> None:
        """Wait until an event may go, then take its token. Waiters go in turn."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while (wait := self.wait_time()) > 0:
                await self._sleep(wait)


class RateLimiter:
    """A :class:`TokenBucket` per key: ``rate`` events per second per key, bursts up to
    ``burst``. ``rate`` 0 means no limit."""

    #: Buckets kept at most before full ones (keys idle long enough to be back at ``burst``)
    #: are dropped; bounds the memory an attacker with many addresses can make it hold.
    MAX_KEYS = 100_000

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[Hashable, TokenBucket] = {}

    def _bucket(self, key: Hashable) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.MAX_KEYS:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full()}
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, clock=self.clock)
        return bucket

    def wait_time(self, key: Hashable) -> float:
        """0 when an event for ``key`` may go ahead now (and it is counted), else seconds until one may."""
        if self.rate <= 0:
            return 0.0
        return self._bucket(key).wait_time()

    def peek(self, key: Hashable) -> float:
        """Like :meth:`wait_time`, without counting an event."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:  # a key not seen yet has a full bucket
            return 0.0 if self.burst >= 1 else 1.0 / self.rate
        return bucket.peek()

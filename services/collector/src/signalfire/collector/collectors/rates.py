"""Cumulative counters turned into per-second rates between two ticks."""

from __future__ import annotations

from collections.abc import Hashable


class Rates:
    """Remembers the last reading of each counter and answers its per-second rate.

    Call :meth:`begin` with the tick's monotonic time, then :meth:`rate` once per counter.
    The first reading of a counter only primes it (``None``); so does a reading lower than
    the previous one (the counter was reset: a reboot of a device, a wrapped 32-bit value),
    so no rate is ever negative. Counters not read since the previous ``begin`` (an
    interface that went away) are forgotten, so churning devices do not leak memory.
    """

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[float, float]] = {}
        self._seen: dict[Hashable, tuple[float, float]] = {}
        self._now = 0.0

    def begin(self, now: float) -> None:
        self._last, self._seen = self._seen or self._last, {}
        self._now = now

    def rate(self, key: Hashable, value: float) -> float | None:
        self._seen[key] = (self._now, value)
        last = self._last.get(key)
        if last is None:
            return None
        elapsed = self._now - last[0]
        if elapsed <= 0 or value < last[1]:
            return None
        return (value - last[1]) / elapsed

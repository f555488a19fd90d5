"""A local, always current copy of part of a KV bucket (a JetStream watch).

Every replica mirrors the tracks, batches and silences, so its timers and its silence and
inhibition checks see what every other replica wrote, without a KV read per decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from signalfire.bus import Watch, watch_listed

log = logging.getLogger("signalfire.notifier.mirror")

T = TypeVar("T")


class Mirror(Generic[T]):
    """``entries`` maps key → (decoded value, revision) for keys matching ``pattern``.
    Values that do not decode (whatever their bytes) are skipped and reported to ``on_bad``
    with the key and the reason; ``decode`` raises ``ValueError`` for them (as msgspec and
    :func:`signalfire.events.decode` do)."""

    def __init__(
        self,
        kv: KeyValue,
        pattern: str,
        decode: Callable[[bytes], T],
        on_bad: Callable[[str, str], None] | None = None,
    ) -> None:
        self.entries: dict[str, tuple[T, int]] = {}
        self._kv = kv
        self._pattern = pattern
        self._decode = decode
        self._on_bad = on_bad
        self._task: asyncio.Task[None] | None = None
        self._watcher: Watch | None = None

    async def start(self) -> None:
        """Load what is there now, then follow changes in the background."""
        # Listed whole (signalfire.bus.watch_listed): a listing cut short after a JetStream
        # leader election would leave silences and tracks out until they are written again.
        self._watcher, listed = await watch_listed(self._kv, self._pattern, timeout=30.0)
        for entry in listed:
            self._apply(entry)
        self._task = asyncio.create_task(self._follow(self._watcher))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None

    def values(self) -> list[T]:
        return [value for value, _ in self.entries.values()]

    def forget(self, key: str) -> None:
        """Drop ``key`` now (we deleted it; the watch will confirm)."""
        self.entries.pop(key, None)

    def remember(self, key: str, value: T, revision: int) -> None:
        """Record our own write now, so the next decision sees it before the watch does."""
        current = self.entries.get(key)
        if current is None or current[1] < revision:
            self.entries[key] = (value, revision)

    async def _follow(self, watcher: Watch) -> None:
        async for entry in watcher:
            self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> None:
        key = entry.key
        revision = entry.revision or 0
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self.entries.pop(key, None)
            return
        current = self.entries.get(key)
        if current is not None and current[1] >= revision:
            return
        try:
            value = self._decode(entry.value)
        except (ValueError, TypeError, RecursionError) as exc:
            # ValueError covers msgspec.DecodeError, UnicodeDecodeError (bytes that are not
            # UTF-8) and PayloadError; RecursionError is JSON nested too deeply. A value that
            # escaped here would end the watch, and the mirror would go stale for good.
            if self._on_bad is not None:
                self._on_bad(key, str(exc))
            self.entries.pop(key, None)
            return
        self.entries[key] = (value, revision)

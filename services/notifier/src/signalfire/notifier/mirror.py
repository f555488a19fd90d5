"""A local copy of part of a KV bucket, kept by a JetStream watch.

Every replica mirrors the tracks, batches and silences, so its timers and its silence and
inhibition checks see what every other replica wrote, without a KV read per decision. A watch
is milliseconds behind its bucket, and seconds behind after the node serving it died
(:data:`signalfire.bus.WATCH_HEARTBEAT`); :meth:`Mirror.current` is for a decision that must
not be taken on a copy older than itself (a silence created a moment before a page).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from signalfire.bus import Watch, bucket_latest, last_revision, watch_listed

log = logging.getLogger("signalfire.notifier.mirror")

#: How long (seconds) :meth:`Mirror.current` waits for the watch to give what the bucket holds
#: before it reads the bucket whole instead (a healthy watch is milliseconds behind).
CATCH_UP = 0.2
#: A check of :meth:`Mirror.current` that began at most this long (seconds) before a call
#: answers it: at 1,000 alerts/s one check in 50 ms instead of one per alert (each is a
#: request to the bucket's stream, ~0.1 ms of CPU), and a write that recent is still given
#: by a watch that is not behind, within milliseconds.
FRESH_FOR = 0.05

T = TypeVar("T")


class Mirror(Generic[T]):
    """``entries`` maps key → (decoded value, revision) for keys matching ``pattern``.
    Values that do not decode (whatever their bytes) are skipped and reported to ``on_bad``
    with the key and the reason; ``decode`` raises ``ValueError`` for them (as msgspec and
    :func:`signalfire.events.decode` do). ``on_check`` hears how each check of
    :meth:`current` ended: ``current``, ``caught_up`` (the watch got there) or ``read`` (the
    bucket was read whole)."""

    def __init__(
        self,
        kv: KeyValue,
        pattern: str,
        decode: Callable[[bytes], T],
        on_bad: Callable[[str, str], None] | None = None,
        on_check: Callable[[str], None] | None = None,
    ) -> None:
        self.entries: dict[str, tuple[T, int]] = {}
        self._kv = kv
        self._pattern = pattern
        self._decode = decode
        self._on_bad = on_bad
        self._on_check = on_check
        self._task: asyncio.Task[None] | None = None
        self._watcher: Watch | None = None
        #: The newest revision applied or passed over (a deletion, an entry that did not
        #: decode), and the newest the watch gave: a whole read gets ahead of the watch.
        self._seen = 0
        self._watched = 0
        #: Keys a whole read found deleted, with the deletion's revision, until the watch has
        #: passed it: an older entry the watch still gives must not bring the key back.
        self._gone: dict[str, int] = {}
        self._moved = asyncio.Event()  # the watch gave an entry
        #: :meth:`current`'s checks: the one running, and when (event-loop time) the last one
        #: that finished had begun.
        self._check: asyncio.Task[None] | None = None
        self._checked_from = float("-inf")

    async def start(self) -> None:
        """Load what is there now, then follow changes in the background."""
        # Listed whole (signalfire.bus.watch_listed): a listing cut short after a JetStream
        # leader election would leave silences and tracks out until they are written again.
        self._watcher, listed = await watch_listed(self._kv, self._pattern, timeout=30.0)
        for entry in listed:
            self._apply(entry)
        self._watched = self._seen
        self._task = asyncio.create_task(self._follow(self._watcher))

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Its loop following the bucket, once started."""
        return [self._task] if self._task is not None else []

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

    async def current(self, timeout: float | None = None) -> None:
        """Return once the mirror holds every entry the bucket held :data:`FRESH_FOR` before
        this was called.

        Asks the bucket's stream for the newest revision of the mirrored keys
        (:func:`signalfire.bus.last_revision`): one request, shared by the callers arriving
        while it runs (they share the next one, or this one when it began at most
        :data:`FRESH_FOR` before them). When the watch has not reached it, it is given
        :data:`CATCH_UP` seconds, then every mirrored key's current entry is read
        (:func:`signalfire.bus.bucket_latest`) and applied. Raises what the request or the read
        raised (NATS away), ``TimeoutError`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        asked = loop.time() - FRESH_FOR
        if self._checked_from >= asked:
            return  # most decisions under load: no task, no timer
        async with asyncio.timeout(timeout):
            while self._checked_from < asked:
                check = self._check
                if check is None:
                    check = self._check = asyncio.create_task(self._catch_up(loop.time()))
                    # its callers may all have given up waiting: nobody else reads its error
                    check.add_done_callback(lambda t: t.cancelled() or t.exception())
                # One that began earlier than that may miss a write made since: wait for it
                # to end, then begin (or join) the next one.
                await asyncio.shield(check)

    async def _catch_up(self, began: float) -> None:
        try:
            last = await last_revision(self._kv, self._pattern)
            outcome = "current"
            if self._seen < last:
                await self._reached(last, CATCH_UP)
                outcome = "caught_up"
            if self._seen < last:
                await self._read_whole(last)
                outcome = "read"
            self._checked_from = began
            if self._on_check is not None:
                self._on_check(outcome)
        finally:
            self._check = None

    async def _reached(self, revision: int, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the watch to give ``revision``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._seen < revision:
                    self._moved.clear()
                    await self._moved.wait()

    async def _read_whole(self, last: int) -> None:
        """Read every key's current entry and apply them: the watch is behind (its node died,
        or it is slow); it goes on, and what it gives later that is older is passed over.
        Read without a consumer (:func:`signalfire.bus.bucket_latest`): the watch's node dying
        may have been the cluster's meta leader, without which no consumer can be made."""
        log.info(
            "mirror behind its bucket: read whole",
            extra={"bucket": self._kv._name, "keys": self._pattern, "seen": self._seen, "last": last},
        )
        read_at, entries = await bucket_latest(self._kv, self._pattern)
        for entry in entries:
            self._apply(entry, read=True)
        listed = {entry.key for entry in entries}
        # gone from the bucket without a marker left (purged, aged out)
        unlisted = [k for k, (_, rev) in self.entries.items() if k not in listed and rev <= read_at]
        for key in unlisted:
            del self.entries[key]
        self._seen = max(self._seen, read_at)

    async def _follow(self, watcher: Watch) -> None:
        async for entry in watcher:
            self._watched = max(self._watched, entry.revision or 0)
            self._apply(entry)
            self._moved.set()
            if self._gone and self._watched >= max(self._gone.values()):
                self._gone.clear()  # the watch has passed every deletion a read found

    def _apply(self, entry: KeyValue.Entry, *, read: bool = False) -> None:
        key = entry.key
        revision = entry.revision or 0
        self._seen = max(self._seen, revision)
        current = self.entries.get(key)
        if current is not None and current[1] >= revision:
            return  # we wrote it (remember), or a whole read got ahead of the watch
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self.entries.pop(key, None)
            if read:
                self._gone[key] = revision
            return
        if self._gone.get(key, 0) >= revision:
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

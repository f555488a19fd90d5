"""The notifier's state in the ``sf_notify_state`` KV bucket: tracks and batches, mirrored
locally (every replica sees every replica's writes) and changed only by revision-checked
read-modify-write, so two replicas never overwrite each other's changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from signalfire.bus import delete_if
from signalfire.events import AlertEvent
from signalfire.notifier.group import Batch
from signalfire.notifier.mirror import Mirror
from signalfire.notifier.tracking import Track, alert_key

T = TypeVar("T", Track, Batch)

#: Attempts of a read-modify-write that keeps losing to other writers before giving up.
MAX_CONFLICTS = 20


class Conflict(Exception):
    """A read-modify-write lost to other writers too many times in a row."""


class NotifyState:
    def __init__(
        self,
        kv: KeyValue,
        on_bad: Callable[[str, str], None],
        on_check: Callable[[str], None] | None = None,
    ) -> None:
        self.kv = kv
        self.tracks: Mirror[Track] = Mirror(
            kv, "track.>", lambda b: msgspec.json.decode(b, type=Track), on_bad, on_check
        )
        self.batches: Mirror[Batch] = Mirror(
            kv, "batch.>", lambda b: msgspec.json.decode(b, type=Batch), on_bad, on_check
        )

    async def start(self) -> None:
        await self.tracks.start()
        await self.batches.start()

    async def stop(self) -> None:
        await self.tracks.stop()
        await self.batches.stop()

    def tracks_of(self, alert_id: str) -> list[str]:
        """Keys of the tracks of alert ``alert_id`` (one per route it took)."""
        prefix = f"track.{alert_key(alert_id)}."
        return [key for key in self.tracks.entries if key.startswith(prefix)]

    def firing(self) -> list[AlertEvent]:
        """Every alert firing now, as far as notifications go (tracked or waiting in a batch)."""
        alerts = {t.alert.id: t.alert for t in self.tracks.values() if t.alert.status == "firing"}
        for batch in self.batches.values():
            alerts.update((a.id, a) for a in batch.alerts)
        return list(alerts.values())

    async def read_track(self, key: str) -> Track | None:
        """The stored track (not the mirror's copy, which may lag another replica's write)."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return msgspec.json.decode(entry.value, type=Track) if entry.value else None

    async def update_track(self, key: str, change: Callable[[Track | None], Track | None]) -> Track | None:
        return await self._update(key, Track, self.tracks, change)

    async def update_batch(self, key: str, change: Callable[[Batch | None], Batch | None]) -> Batch | None:
        return await self._update(key, Batch, self.batches, change)

    async def _update(
        self, key: str, kind: type[T], mirror: Mirror[T], change: Callable[[T | None], T | None]
    ) -> T | None:
        """Apply ``change`` to the stored value (None: absent) and store its answer (None:
        delete), retrying from a fresh read when another writer got there first."""
        if key not in mirror.entries:
            # most changes create a key nobody has: try that without reading first
            new = change(None)
            if new is None:
                return None
            try:
                written = await self.kv.create(key, msgspec.json.encode(new))
            except KeyWrongLastSequenceError:
                pass
            else:
                mirror.remember(key, new, written)
                return new
        for _ in range(MAX_CONFLICTS):
            try:
                entry = await self.kv.get(key)
                old = msgspec.json.decode(entry.value, type=kind) if entry.value else None
                revision = entry.revision or 0
            except KeyNotFoundError:
                old, revision = None, 0
            new = change(old)
            try:
                if new is None:
                    if old is not None:
                        await delete_if(self.kv, key, revision)
                    mirror.forget(key)
                    return None
                if new == old:
                    return new
                data = msgspec.json.encode(new)
                if revision == 0:
                    written = await self.kv.create(key, data)
                else:
                    # also after a delete: the tombstone's revision is what we read
                    written = await self.kv.update(key, data, last=revision)
                mirror.remember(key, new, written)
                return new
            except KeyWrongLastSequenceError:
                continue
        raise Conflict(f"{key}: too many concurrent changes")

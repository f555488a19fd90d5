"""The ``silences`` table as a copy of the ``sf_silences`` KV bucket.

The bucket is the silences' source of truth (the notifier mutes from it, as Alertmanager mutes
from its silence store); the API writes only there. Every gateway watches the bucket and
upserts what it sees into PostgreSQL, which the list endpoint reads. At start the watch
replays every entry, so after a restart, or for a silence put by ``nats kv put`` or by another
gateway, the table ends up showing the bucket. Each row keeps the revision of the entry it
shows; an older entry (a slower replica's copy) never overwrites a newer one.

A deleted or purged entry ends the silence at the time of the delete (the notifier stops
muting it then) and keeps its record. An entry that is not a :class:`~signalfire.events.Silence`
is counted (``bad_state_entries_total{bucket="silences"}``), logged with its key and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

import asyncpg
import msgspec
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from signalfire.bus import Watch, watch_listed
from signalfire.consumers import Backoff
from signalfire.events import PayloadError, Silence, decode
from signalfire.gateway.commits import Commits
from signalfire.gateway.ingest import is_data_error
from signalfire.telemetry import Counter, Registry

log = logging.getLogger("signalfire.gateway.silences")

_UPSERT = """
INSERT INTO silences AS s (id, matchers, starts_at, ends_at, author, comment, created_at, revision,
                           expired_at)
VALUES ($1, $2::jsonb, to_timestamp($3), to_timestamp($4), $5, $6, to_timestamp($7), $8,
        CASE WHEN $4 <= $9 THEN to_timestamp($9) END)
ON CONFLICT (id) DO UPDATE SET
    matchers = EXCLUDED.matchers, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
    author = EXCLUDED.author, comment = EXCLUDED.comment,
    created_at = CASE WHEN $10 THEN EXCLUDED.created_at ELSE s.created_at END,
    revision = EXCLUDED.revision,
    expired_at = CASE WHEN $4 <= $9 THEN coalesce(s.expired_at, to_timestamp($9)) END
WHERE s.revision < EXCLUDED.revision
"""

# Expired by hand at the time of the delete, unless it had ended already.
_DELETED = """
UPDATE silences SET ends_at = greatest(starts_at, least(ends_at, to_timestamp($2))),
                    expired_at = CASE WHEN ends_at > to_timestamp($2)
                                      THEN coalesce(expired_at, to_timestamp($2)) ELSE expired_at END,
                    revision = $3
WHERE id = $1 AND revision < $3
"""


def _upsert_args(silence: Silence, revision: int, written: float) -> tuple[object, ...]:
    return (
        silence.id,
        msgspec.json.encode(silence.matchers).decode(),
        silence.starts_at,
        silence.ends_at,
        silence.author,
        silence.comment,
        silence.created_at if silence.created_at is not None else written,
        revision,
        written,
        silence.created_at is not None,
    )


async def store_written(pool: asyncpg.Pool, silence: Silence, revision: int, written: float) -> None:
    """Copy a silence this process has just written to the bucket (at ``revision``, at about
    ``written``) into the table, as the watch will: the API's list shows it at once, however
    far behind the watch is (after a NATS node's death its consumer is made again, seconds).
    The watch's copy of the same revision then changes nothing, and a newer one replaces it:
    each row keeps the revision it shows. Raises what the database raises."""
    await pool.execute(_UPSERT, *_upsert_args(silence, revision, written))


class SilenceMirror:
    """Watches ``kv`` and keeps the ``silences`` table in ``pool`` a copy of it, until :meth:`stop`."""

    def __init__(
        self,
        kv: KeyValue,
        pool: asyncpg.Pool,
        registry: Registry,
        *,
        db_errors: Counter,
        commits: Commits | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float],
    ) -> None:
        self._kv = kv
        self._pool = pool
        self._commits = commits
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._watcher: Watch | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.bad_entries = registry.counter(
            "bad_state_entries", "KV entries that could not be read and were skipped", ["bucket"]
        )
        #: The ingest's counter, labelled ``consumer="silences"``.
        self.db_errors = db_errors

    async def start(self) -> None:
        """Copy every entry the bucket holds now into the table, then follow changes in the
        background."""
        # Listed whole (signalfire.bus.watch_listed), deletions included: a listing cut short
        # after a JetStream leader election would leave silences out of the table, or keep
        # some that were deleted meanwhile.
        self._watcher, listed = await watch_listed(self._kv, timeout=30.0)
        for entry in listed:
            await self._apply(entry)
        self._task = asyncio.create_task(self._follow(self._watcher), name="gateway-silences")
        log.info("mirroring silences")

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Its loop following the bucket, once started."""
        return [self._task] if self._task is not None else []

    async def stop(self) -> None:
        """Stop following; an entry being written is finished first."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None

    async def _follow(self, watcher: Watch) -> None:
        async for entry in watcher:
            await self._apply(entry)

    async def _apply(self, entry: KeyValue.Entry) -> None:
        revision = entry.revision or 0
        # When the entry was written (nats-py declares an int but gives the message's datetime).
        created: object = entry.created
        written = created.timestamp() if isinstance(created, datetime) else self._clock()
        if entry.operation in (KV_DEL, KV_PURGE):
            await self._write(_DELETED, entry.key, written, revision)
            return
        try:
            silence = decode(entry.value or b"", Silence)
            if silence.id != entry.key:
                raise PayloadError(f"id: {silence.id!r} is not the entry's key")
        except PayloadError as exc:
            self._bad(entry.key, str(exc))
            return
        await self._write(_UPSERT, *_upsert_args(silence, revision, written))

    def _bad(self, key: str, why: str) -> None:
        self.bad_entries.labels(bucket="silences").inc()
        log.warning("ignored an unreadable KV entry", extra={"bucket": "silences", "key": key, "reason": why})

    async def _write(self, sql: str, *args: object) -> None:
        """Run ``sql``; while the database is away, retry (the watch waits meanwhile, so
        nothing is skipped) until it answers or the mirror stops."""
        delay: float | None = None
        while True:
            try:
                await self._pool.execute(sql, *args)
            except Exception as exc:
                if is_data_error(exc):  # retrying the same entry cannot help
                    self._bad(str(args[0]), f"the database refused it: {exc}")
                    return
                if self._stopping.is_set():
                    return
                self.db_errors.labels(consumer="silences").inc()
                delay = self._backoff.delay(delay)
                log.warning("cannot store a silence; will retry", extra={"key": args[0], "reason": repr(exc)})
                await asyncio.sleep(delay)
                continue
            if self._commits is not None:
                self._commits.committed()
            return

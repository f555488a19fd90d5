"""The bounded buffer of batches waiting to be published, optionally spooled to disk."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("signalfire.collector.outbox")

_SUFFIX = ".msg"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One encoded message, published with ``msg_id`` as its ``Nats-Msg-Id`` so a batch that
    was stored although its acknowledgement got lost is not stored twice on replay."""

    subject: str
    data: bytes
    msg_id: str
    #: Position in the outbox since it was created (names the spool file).
    seq: int = 0


class Outbox:
    """A FIFO of at most ``capacity`` messages; when full, the oldest is dropped and counted.

    The publisher takes the oldest messages, publishes them, and :meth:`done` forgets the
    acknowledged ones; what failed goes back to the front with :meth:`put_back`, so
    messages leave in the order they were made.

    With ``spool`` (a directory), every message is also written there as one file when it
    is queued and removed when it is acknowledged or dropped, so an agent that stops or
    crashes with a backlog replays it, in order and with the batches' own times, when it
    starts again. The files are written to a temporary name and renamed, so a crash never
    leaves half a message behind.
    """

    def __init__(self, capacity: int, spool: Path | None = None) -> None:
        if capacity < 0:
            raise ValueError("capacity must be 0 or more")
        self.capacity = capacity
        self.spool = spool
        #: Messages dropped because the outbox was full, since the agent started.
        self.dropped = 0
        self._items: deque[Outgoing] = deque()
        self._next_seq = 1
        if spool is not None:
            self._load(spool)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing) -> None:
        """Queue ``item`` last, dropping the oldest message if the outbox is full."""
        if self.capacity == 0:
            self.dropped += 1
            return
        item = Outgoing(item.subject, item.data, item.msg_id, self._next_seq)
        self._next_seq += 1
        if len(self._items) >= self.capacity:
            self._drop(self._items.popleft())
        if self.spool is not None:
            self._write(item)
        self._items.append(item)

    def take(self, limit: int = 1) -> list[Outgoing]:
        """Up to ``limit`` of the oldest messages, removed from the outbox (not from the spool)."""
        taken: list[Outgoing] = []
        while self._items and len(taken) < limit:
            taken.append(self._items.popleft())
        return taken

    def put_back(self, items: Iterable[Outgoing]) -> None:
        """Return messages that could not be published to the front, in their order. If
        newer messages filled the outbox meanwhile, these are the oldest, so they are the
        ones dropped."""
        for item in reversed(list(items)):
            if len(self._items) >= self.capacity:
                self._drop(item)
            else:
                self._items.appendleft(item)

    def done(self, item: Outgoing) -> None:
        """``item`` was acknowledged: forget it."""
        self._unlink(item)

    def discard(self, item: Outgoing) -> None:
        """Count a taken message that can never be published (too large) as dropped."""
        self._drop(item)

    # The spool ---------------------------------------------------------------------------
    def _drop(self, item: Outgoing) -> None:
        self.dropped += 1
        self._unlink(item)

    def _path(self, item: Outgoing) -> Path:
        assert self.spool is not None
        return self.spool / f"{item.seq:016d}{_SUFFIX}"

    def _write(self, item: Outgoing) -> None:
        path = self._path(item)
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_bytes(f"{item.subject}\n{item.msg_id}\n".encode() + item.data)
            os.replace(temporary, path)
        except OSError as exc:
            # The batch is still in memory; only a restart would lose it.
            log.warning("cannot write to the spool", extra={"path": str(path), "reason": str(exc)})

    def _unlink(self, item: Outgoing) -> None:
        if self.spool is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(item).unlink()

    def _load(self, spool: Path) -> None:
        spool.mkdir(parents=True, exist_ok=True)
        for stale in spool.glob("*.tmp"):
            stale.unlink()
        files = sorted(spool.glob(f"*{_SUFFIX}"))
        for path in files:
            try:
                seq = int(path.stem)
                subject, msg_id, data = path.read_bytes().split(b"\n", 2)
                item = Outgoing(subject.decode(), data, msg_id.decode(), seq)
            except (OSError, ValueError) as exc:  # ValueError: also a head that is not UTF-8
                log.warning("unreadable spool file skipped", extra={"path": str(path), "reason": str(exc)})
                continue
            self._next_seq = max(self._next_seq, seq + 1)
            if self.capacity == 0:
                self._drop(item)
                continue
            if len(self._items) >= self.capacity:
                self._drop(self._items.popleft())
            self._items.append(item)
        if self._items:
            log.info("replaying spooled batches", extra={"path": str(spool), "batches": len(self._items)})

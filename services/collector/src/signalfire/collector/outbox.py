"""The bounded in-memory buffer of batches waiting to be published."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One encoded message, published with ``msg_id`` as its ``Nats-Msg-Id`` so a batch that
    was stored although its acknowledgement got lost is not stored twice on replay."""

    subject: str
    data: bytes
    msg_id: str


class Outbox:
    """A FIFO of at most ``capacity`` messages; when full, the oldest is dropped and counted.

    The publisher takes the oldest message, publishes it, and puts it back at the front if
    publishing failed, so messages leave in the order they were made.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be 0 or more")
        self.capacity = capacity
        #: Messages dropped because the outbox was full, since the agent started.
        self.dropped = 0
        self._items: deque[Outgoing] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing) -> None:
        """Queue ``item`` last, dropping the oldest message if the outbox is full."""
        if self.capacity == 0:
            self.dropped += 1
            return
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)

    def take(self) -> Outgoing | None:
        """The oldest message, removed from the outbox; ``None`` when empty."""
        return self._items.popleft() if self._items else None

    def put_back(self, item: Outgoing) -> None:
        """Return a message that could not be published to the front. If newer messages
        filled the outbox meanwhile, it is the oldest, so it is the one dropped."""
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return
        self._items.appendleft(item)

    def discard(self, item: Outgoing) -> None:
        """Count a taken message that can never be published (too large) as dropped."""
        self.dropped += 1

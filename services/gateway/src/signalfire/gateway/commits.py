"""Waiting for the one writer: the API publishes a fact (an alert action on the bus, a silence
in the KV bucket) and the gateway's consumers write it to the database. An endpoint that
answers with the stored result waits here, bounded, until the row is there.

The consumers of this process wake the waiters after each commit; another gateway's commit is
seen by re-reading the database every ``poll`` seconds, so a wait works whichever replica
stores the fact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Commits:
    """A signal from the consumers that write (:meth:`committed`) to the endpoints that wait
    for what they wrote (:meth:`wait_for`)."""

    def __init__(self, poll: float = 0.25) -> None:
        self.poll = poll
        self._event = asyncio.Event()

    def committed(self) -> None:
        """Wake every waiter (something was committed; each re-reads what it waits for)."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, check: Callable[[], Awaitable[T | None]], timeout: float) -> T | None:
        """The first result of ``check`` that is not ``None``, called now, after each commit
        of this process and at least every ``poll`` seconds; ``None`` when ``timeout``
        seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Taken before the check, so a commit between the check and the wait still wakes us.
            event = self._event
            found = await check()
            if found is not None:
                return found
            left = deadline - loop.time()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(self.poll, left))

"""The wait of an endpoint for the consumer that stores what it published."""

from __future__ import annotations

import asyncio
import time

from signalfire.gateway.commits import Commits


async def test_a_commit_of_this_process_ends_the_wait_before_the_next_poll() -> None:
    commits = Commits(poll=30.0)
    stored: list[str] = []

    async def check() -> str | None:
        return stored[0] if stored else None

    async def consumer() -> None:
        await asyncio.sleep(0.05)
        stored.append("row")
        commits.committed()

    started = time.monotonic()
    task = asyncio.create_task(consumer())
    assert await commits.wait_for(check, timeout=10.0) == "row"
    assert time.monotonic() - started < 5.0  # woken, not polled 30 s later
    await task


async def test_a_commit_elsewhere_is_found_by_polling_and_a_missing_one_times_out() -> None:
    commits = Commits(poll=0.02)
    calls = 0

    async def stored_by_another_replica() -> int | None:
        nonlocal calls
        calls += 1
        return calls if calls >= 3 else None  # no commit signal: only a re-read finds it

    assert await commits.wait_for(stored_by_another_replica, timeout=10.0) == 3

    async def never() -> str | None:
        return None

    started = time.monotonic()
    assert await commits.wait_for(never, timeout=0.1) is None
    assert time.monotonic() - started >= 0.1

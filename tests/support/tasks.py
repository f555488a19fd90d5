"""Ending a test's background task for sure."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancelled(task: asyncio.Task[Any], timeout: float = 10.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again as long as it runs.

    On Python 3.11 ``asyncio.wait_for`` (which nats-py's ``publish(..., timeout=)`` uses) can
    swallow a cancellation that arrives as its inner future completes; a publishing loop then
    goes on, and a plain ``task.cancel(); await task`` waits for it forever (a fault test hung
    until its timeout that way). An exception the task raised, other than its cancellation,
    is raised here."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        if loop.time() > deadline:
            raise AssertionError(f"the task {task.get_name()} would not end when cancelled")
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    error = None if task.cancelled() else task.exception()
    if error is not None:
        raise error

"""Waiting for something a test cannot be told about: poll it, and fail with its name."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    check: Callable[[], object | Awaitable[object]], what: str, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``check`` (plain or async) every ``interval`` seconds until it is true (truthy); after
    ``timeout`` seconds fail with ``timed out waiting for <what>``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
